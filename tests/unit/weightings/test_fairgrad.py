"""FairGrad against TorchJD's FairGradWeighting and its defining equation G w = w^(-1/alpha)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mograd.weightings import FairGrad, NashMTL

from ._asserts import assert_aggregates_close, assert_permutation_equivariant
from ._inputs import KS_WIDE, gram, jacobian, jacobians

ALPHAS = (0.5, 1.0, 2.0, 5.0)


@pytest.mark.parametrize("k", KS_WIDE)
@pytest.mark.parametrize("alpha", ALPHAS)
def test_matches_torchjd(k: int, alpha: float) -> None:
    """TorchJD solves the same equation by scipy's least_squares (default tolerances 1e-8):
    where its residual is below 1e-9 the aggregates agree to 1e-8 (observed < 1e-10)."""
    aggregation = pytest.importorskip("torchjd.aggregation")
    pytest.importorskip("scipy")
    j = jacobian(k, 3, conflict=False)
    g = j @ j.T
    ref = aggregation.FairGradWeighting(alpha=alpha)(g)
    assert float((g @ ref * ref ** (1 / alpha) - 1).abs().max()) < 1e-9
    assert_aggregates_close(j, FairGrad(alpha=alpha, reg_eps=0.0)(g), ref, 1e-8)


@settings(max_examples=60, deadline=None)
@given(jacobians(full_rank=True, exp=1), st.sampled_from(ALPHAS))
def test_defining_equation(j: torch.Tensor, alpha: float) -> None:
    """w > 0 and (G w)_i = w_i^(-1/alpha) for linearly independent gradients."""
    g = j @ j.T
    evals = torch.linalg.eigvalsh(g)
    assume(j.shape[0] <= j.shape[1] and float(evals.min()) > 1e-4 * float(evals.max()))
    w = FairGrad(alpha=alpha, reg_eps=0.0)(g)
    assert (w > 0).all()
    torch.testing.assert_close(g @ w * w ** (1 / alpha), torch.ones_like(w), rtol=0, atol=1e-9)


def test_alpha_one_is_the_nash_equation_and_alpha_zero_the_mean() -> None:
    g = gram(4, 2)
    torch.testing.assert_close(
        FairGrad(alpha=1.0, reg_eps=0.0)(g), NashMTL(max_norm=0.0, reg_eps=0.0)(g)
    )
    torch.testing.assert_close(FairGrad(alpha=0.0)(g), torch.full((4,), 0.25, dtype=g.dtype))


@pytest.mark.parametrize("alpha", ALPHAS)
def test_scale_law_and_permutation(alpha: float) -> None:
    """G -> s G scales w by s^(-alpha / (alpha + 1)), exactly."""
    g = gram(5, 1)
    w = FairGrad(alpha=alpha)(g)
    for s in (1e-20, 1e-6, 1e10, 1e30):
        torch.testing.assert_close(FairGrad(alpha=alpha)(g * s), w * s ** (-alpha / (alpha + 1)))
    assert_permutation_equivariant(lambda: FairGrad(alpha=alpha), g)


def test_opposed_gradients_stay_finite() -> None:
    """No exact solution (G is singular with a positive null vector): the ridge keeps the
    weights finite and positive; the opposed pair cancels (to 1e-3 of the third loss's
    improvement), the independent loss improves."""
    j = torch.tensor([[1.0, 0.0], [-2.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    g = j @ j.T
    w = FairGrad()(g)
    assert torch.isfinite(w).all() and (w > 0).all()
    gw = g @ w
    assert float(gw[2]) > 0 and float(gw[:2].abs().max()) <= 1e-3 * float(gw[2])

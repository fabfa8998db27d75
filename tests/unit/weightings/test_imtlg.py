"""IMTL-G against TorchJD's IMTLGWeighting, and its defining property."""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given, settings

from mograd.weightings import IMTLG

from ._asserts import (
    assert_aggregates_close,
    assert_permutation_equivariant,
    assert_scale_behaviour,
)
from ._inputs import KS, gram, jacobian, jacobians

aggregation = pytest.importorskip("torchjd.aggregation")


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("seed", range(3))
def test_matches_torchjd(k: int, seed: int) -> None:
    j = jacobian(k, seed)
    g = j @ j.T
    assert_aggregates_close(j, IMTLG()(g), aggregation.IMTLGWeighting()(g), 1e-10)


def test_matches_torchjd_on_a_rank_deficient_gram() -> None:
    """Both use the pseudo-inverse: linearly dependent gradients (rank 2 of 4)."""
    j = jacobian(2, 5, n=6)
    j = torch.cat([j, 2.0 * j[:1], j[:1] + j[1:]])
    g = j @ j.T
    assert_aggregates_close(j, IMTLG()(g), aggregation.IMTLGWeighting()(g), 1e-8)


@settings(max_examples=60, deadline=None)
@given(jacobians(full_rank=True, exp=1))
def test_equal_projections_on_every_unit_gradient(j: torch.Tensor) -> None:
    """For linearly independent gradients: d . g_i / |g_i| is the same for every i, sum w = 1."""
    g = j @ j.T
    k = g.shape[0]
    assume(k <= j.shape[1])
    evals = torch.linalg.eigvalsh(g)
    assume(float(evals.min()) > 1e-6 * float(evals.max()))
    w = IMTLG()(g)
    assume(bool(w.abs().sum() > 0))
    proj = (g @ w) / g.diagonal().sqrt()
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-9)
    torch.testing.assert_close(
        proj, proj.mean().expand(k), rtol=1e-5, atol=1e-9 * float(proj.abs().max())
    )


def test_opposed_gradients_give_zero_weights() -> None:
    g = torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=torch.float64)
    assert torch.equal(IMTLG()(g), torch.zeros(2, dtype=torch.float64))


def test_permutation_and_scale() -> None:
    g = gram(5, 1)
    assert_permutation_equivariant(IMTLG, g)
    assert_scale_behaviour(IMTLG, g, power=0.0)

"""UPGrad against TorchJD's UPGradWeighting, and its defining property."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings

from mograd.weightings import UPGrad

from ._asserts import (
    assert_aggregates_close,
    assert_permutation_equivariant,
    assert_scale_behaviour,
)
from ._inputs import KS, gram, jacobian, jacobians

aggregation = pytest.importorskip("torchjd.aggregation")
pytest.importorskip("qpsolvers")
pytest.importorskip("quadprog")
from torchjd.linalg import QuadprogProjector  # noqa: E402


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("seed", range(3))
def test_matches_torchjd_without_regularization(k: int, seed: int) -> None:
    """Exact solve vs TorchJD with reg_eps=0 (well-conditioned G: quadprog can solve it)."""
    j = jacobian(k, seed)
    g = j @ j.T
    ref = aggregation.UPGradWeighting(projector=QuadprogProjector(norm_eps=0.0, reg_eps=0.0))(g)
    assert_aggregates_close(j, UPGrad()(g), ref, 1e-8)


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("seed", range(3))
def test_matches_torchjd_default_with_matching_regularization(k: int, seed: int) -> None:
    j = jacobian(k, seed)
    g = j @ j.T
    assert_aggregates_close(j, UPGrad(reg_eps=1e-4)(g), aggregation.UPGradWeighting()(g), 1e-8)
    # and the exact solve stays within the tolerance of the issue against TorchJD's default
    assert_aggregates_close(j, UPGrad()(g), aggregation.UPGradWeighting()(g), 1e-2)


def test_matches_torchjd_with_a_preference_vector() -> None:
    j = jacobian(4, 7)
    g = j @ j.T
    pref = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    ref = aggregation.UPGradWeighting(pref, QuadprogProjector(norm_eps=0.0, reg_eps=0.0))(g)
    assert_aggregates_close(j, UPGrad(pref_vector=pref)(g), ref, 1e-8)


@settings(max_examples=60, deadline=None)
@given(jacobians())
def test_never_conflicts_with_any_gradient(j: torch.Tensor) -> None:
    """(G w)_i = g_i . (J^T w) >= 0 for all i; w >= pref / ... >= 0."""
    g = j @ j.T
    w = UPGrad()(g)
    assert torch.isfinite(w).all() and (w >= 0).all()
    tol = 1e-9 * float(g.diagonal().sum()) * float(w.abs().sum() + 1)
    assert float((g @ w).min()) >= -tol


@settings(max_examples=30, deadline=None)
@given(jacobians())
def test_no_conflict_means_the_mean(j: torch.Tensor) -> None:
    j = j.abs()  # non-negative gradients never conflict
    g = j @ j.T
    k = g.shape[0]
    if float(g.diagonal().min()) == 0.0:
        return
    torch.testing.assert_close(UPGrad()(g), torch.full((k,), 1.0 / k, dtype=g.dtype))


def test_permutation_and_scale() -> None:
    g = gram(5, 2)
    assert_permutation_equivariant(UPGrad, g)
    assert_scale_behaviour(UPGrad, g, power=0.0)

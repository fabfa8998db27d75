"""PCGrad against TorchJD's PCGradWeighting (same seed, same projection orders)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings

from mograd.weightings import PCGrad

from ._asserts import (
    assert_aggregates_close,
    assert_permutation_equivariant,
    assert_scale_behaviour,
)
from ._inputs import KS, gram, jacobian, jacobians

aggregation = pytest.importorskip("torchjd.aggregation")


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("seed", range(3))
def test_matches_torchjd_with_the_same_seed(k: int, seed: int) -> None:
    """TorchJD draws torch.randperm(k) from the global generator, one per loss, as we do from
    ours: seeding both alike gives the same orders, hence the same weights (to rounding)."""
    j = jacobian(k, seed)
    g = j @ j.T
    ours = PCGrad(seed=seed)
    state = torch.random.get_rng_state()
    try:
        for _ in range(3):  # three steps: the generators advance alike
            torch.manual_seed(seed) if _ == 0 else None
            ref = aggregation.PCGradWeighting()(g)
            w = ours(g)
            torch.testing.assert_close(w, ref, rtol=1e-12, atol=1e-12)
            assert_aggregates_close(j, w, ref, 1e-10)
    finally:
        torch.random.set_rng_state(state)


@settings(max_examples=40, deadline=None)
@given(jacobians())
def test_two_losses_projected_gradients_do_not_conflict(j: torch.Tensor) -> None:
    """For k = 2 (order irrelevant) each projected gradient is orthogonal to or agrees with
    the other gradient; the update is their sum."""
    g = j @ j.T
    if g.shape[0] != 2:
        g = g[:1, :1]
    w = PCGrad()(g)
    assert torch.isfinite(w).all()
    if g.shape[0] == 2 and float(g[0, 1]) < 0 and float(g.diagonal().min()) > 0:
        c0 = torch.tensor([1.0, float(w[1] - 1.0)], dtype=g.dtype)  # g_0^PC
        c1 = torch.tensor([float(w[0] - 1.0), 1.0], dtype=g.dtype)  # g_1^PC
        scale = float(g.diagonal().max())
        assert abs(float((g @ c0)[1])) <= 1e-9 * scale
        assert abs(float((g @ c1)[0])) <= 1e-9 * scale


def test_no_conflict_means_the_sum() -> None:
    j = jacobian(4, 0, conflict=False).abs()
    assert torch.equal(PCGrad()(j @ j.T), torch.ones(4, dtype=torch.float64))


def test_permutation_for_two_losses_and_scale() -> None:
    assert_permutation_equivariant(PCGrad, gram(2, 3))
    assert_scale_behaviour(PCGrad, gram(5, 3), power=0.0)  # same seed: same orders

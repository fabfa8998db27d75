"""Random loss weighting against TorchJD's RandomWeighting (same seed, same draws)."""

from __future__ import annotations

import pytest
import torch

from mograd.weightings import Random

from ._inputs import KS, jacobian

aggregation = pytest.importorskip("torchjd.aggregation")


@pytest.mark.parametrize("k", KS)
def test_matches_torchjd_with_the_same_seed(k: int) -> None:
    """TorchJD draws torch.randn(k) from the global generator in the matrix's dtype; seeded
    alike and in float64, the draws and hence the weights are the same."""
    j = jacobian(k, 0)
    ours = Random(seed=11)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(11)
        for _ in range(3):
            ref = aggregation.RandomWeighting()(j)
            torch.testing.assert_close(ours(j @ j.T), ref, rtol=1e-15, atol=1e-15)
    finally:
        torch.random.set_rng_state(state)


def test_softmax_of_normal_draws() -> None:
    w = torch.stack([Random(seed=s)(torch.eye(3, dtype=torch.float64)) for s in range(400)])
    assert (w > 0).all()
    torch.testing.assert_close(w.sum(1), torch.ones(400, dtype=torch.float64))
    z = w.log() - w.log().mean(1, keepdim=True)  # the draws, up to their mean
    # var of z_i - mean(z) for N(0, 1) draws: 1 - 1/k = 2/3
    assert float(z.var()) == pytest.approx(2.0 / 3.0, rel=0.15)


def test_does_not_touch_the_global_generator() -> None:
    state = torch.random.get_rng_state()
    Random(seed=1)(torch.eye(2))
    assert torch.equal(torch.random.get_rng_state(), state)

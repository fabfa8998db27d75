"""PCD against TorchJD's PCD weighting, and the KKT conditions of its QP."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mograd.weightings import PCD

from ._inputs import KS_WIDE, jacobian

aggregation = pytest.importorskip("torchjd.aggregation")


@pytest.mark.parametrize("k", KS_WIDE)
@pytest.mark.parametrize("tau", [0.02, 0.3, 1.0])
def test_matches_torchjd_over_steps(k: int, tau: float) -> None:
    """Same moving average, same QP solved by the same kind of method (TorchJD on G, ours on
    a factor of G): aggregates within 1e-10 over four steps (observed 1e-15)."""
    ours, ref = PCD(tau=tau), aggregation.PCDWeighting(tau=tau)
    for s in range(4):
        j = jacobian(k, 10 * k + s)
        g = j @ j.T
        a, b = j.T @ ours(g), j.T @ ref(g)
        assert float((a - b).norm()) <= 1e-10 * max(float(b.norm()), 1e-300), (s, a, b)


def test_matches_torchjd_with_a_tau_per_loss_and_infeasible_constraints() -> None:
    j = jacobian(4, 2)
    taus = [0.1, 0.5, 0.0]
    torch.testing.assert_close(
        PCD(tau=taus)(j @ j.T), aggregation.PCDWeighting(tau=torch.tensor(taus))(j @ j.T)
    )
    opposed = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, -1.0, 0.0]])
    g = opposed @ opposed.T
    assert torch.equal(PCD(tau=0.1)(g), torch.tensor([1.0, 0.0, 0.0]))
    assert torch.equal(PCD(tau=0.1)(g), aggregation.PCDWeighting(tau=0.1)(g))


@pytest.mark.parametrize("seed", range(6))
def test_kkt_of_the_normalized_qp(seed: int) -> None:
    """First step, eps = 0 (so s_i = 1 / |g_i|): with w = s (1, mu) |g_0| / |d~|, the
    constraints hold, mu >= 0, and mu_j > 0 only on active constraints."""
    tau = 0.2
    j = jacobian(5, seed)
    g = j @ j.T
    w = PCD(tau=tau, eps=0.0)(g).numpy()
    norms = j.norm(dim=1).numpy()
    unit = (j / j.norm(dim=1, keepdim=True)).numpy()
    coef = w * norms  # (1, mu) times |g_0| / |d~|
    mu = coef[1:] / coef[0]
    d = unit.T @ np.concatenate([[1.0], mu])  # d~
    slack = unit[1:] @ d - tau
    assert (mu >= 0).all() and slack.min() >= -1e-10
    assert np.abs(mu * slack).max() <= 1e-10
    assert np.linalg.norm(j.numpy().T @ w) == pytest.approx(float(norms[0]))

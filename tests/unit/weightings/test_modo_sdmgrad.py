"""MoDo and SDMGrad against TorchJD on the cross-batch matrix A = J_1 J_2^T, over steps."""

from __future__ import annotations

import pytest
import torch

from mograd.weightings import MinNorm, MoDo, SDMGrad
from mograd.weightings._util import project_simplex

from ._inputs import KS_WIDE, gram, jacobian

aggregation = pytest.importorskip("torchjd.aggregation")


def cross(k: int, seed: int) -> torch.Tensor:
    j1 = jacobian(k, seed)
    j2 = j1 + 0.3 * jacobian(k, seed + 100)
    return j1 @ j2.T  # not symmetric


@pytest.mark.parametrize("k", KS_WIDE)
def test_modo_matches_torchjd(k: int) -> None:
    """One projected step per call, same projection (computed on y - max y here): 1e-14."""
    ours, ref = MoDo(gamma=0.05, rho=0.1), aggregation.MoDoWeighting(gamma=0.05, rho=0.1)
    for s in range(5):
        a = cross(k, s)
        torch.testing.assert_close(ours(a), ref(a), rtol=0, atol=1e-14)


@pytest.mark.parametrize("k", KS_WIDE)
def test_sdmgrad_matches_torchjd(k: int) -> None:
    """Twenty inner steps per call, same normalization (eps=1e-8): 1e-9 over five calls (the
    projections differ at rounding level, y - max y here, and lr = 10 amplifies it: observed
    up to 1.2e-12)."""
    ours, ref = SDMGrad(), aggregation.SDMGradWeighting()
    for s in range(5):
        a = cross(k, s)
        torch.testing.assert_close(ours(a), ref(a), rtol=0, atol=1e-9)


def test_simplex_projection() -> None:
    """Against the KKT form: x = max(y - theta, 0) with sum x = 1, on far and near points."""
    gen = torch.Generator().manual_seed(0)
    for scale in (1e-3, 1.0, 1e6, 1e17):
        y = torch.randn(9, generator=gen, dtype=torch.float64) * scale
        x = project_simplex(y)
        assert (x >= 0).all() and float(x.sum()) == pytest.approx(1.0, abs=1e-12)
        free = x > 0
        theta = y[free] - x[free]
        torch.testing.assert_close(theta, theta.mean().expand_as(theta), rtol=0, atol=1e-9)
        assert (y[~free] <= theta.mean() + 1e-9 * max(scale, 1.0)).all()


def test_modo_with_a_small_step_tends_to_mgda() -> None:
    g = gram(4, 3)
    modo = MoDo(gamma=0.3, rho=0.0)
    for _ in range(2000):
        w = modo(g / g.diagonal().sum())
    torch.testing.assert_close(w, MinNorm()(g), rtol=0, atol=1e-6)

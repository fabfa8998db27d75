"""ExcessMTL against TorchJD's ExcessMTLWeighting where the two coincide, and its update."""

from __future__ import annotations

import pytest
import torch

from mograd.weightings import ExcessMTL

aggregation = pytest.importorskip("torchjd.aggregation")


def axis_jacobians(steps: int, k: int, seed: int) -> list[torch.Tensor]:
    """Each gradient along one fixed coordinate (two losses may share one): there TorchJD's
    diagonal AdaGrad curvature and our isotropic one are the same number."""
    gen = torch.Generator().manual_seed(seed)
    axes = torch.randint(0, 3, (k,), generator=gen)
    out = []
    for _ in range(steps):
        j = torch.zeros(k, 5, dtype=torch.float64)
        j[torch.arange(k), axes] = torch.randn(k, generator=gen, dtype=torch.float64) * 3.0
        out.append(j)
    return out


@pytest.mark.parametrize("k", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("warmup", [0, 3])
def test_matches_torchjd_on_axis_gradients(k: int, warmup: int) -> None:
    """Six steps, equal to 1e-12 (observed: bit-identical)."""
    ours = ExcessMTL(robust_step_size=0.5, n_warmup_steps=warmup)
    ref = aggregation.ExcessMTLWeighting(robust_step_size=0.5, n_warmup_steps=warmup)
    for j in axis_jacobians(6, k, seed=k):
        torch.testing.assert_close(ours(j @ j.T), ref(j), rtol=1e-12, atol=1e-12)


def test_exponentiated_gradient_step() -> None:
    """w_t = softmax(log w_{t-1} + eta E_t / E_1), E_i = G_ii / sqrt(S_i + 1e-7)."""
    grams = [torch.diag(torch.tensor(d, dtype=torch.float64)) for d in ([1.0, 4.0], [2.0, 1.0])]
    w = ExcessMTL(robust_step_size=0.3)
    s = torch.zeros(2, dtype=torch.float64)
    logw = torch.log(torch.full((2,), 0.5, dtype=torch.float64))
    base = None
    for g in grams:
        s = s + g.diagonal()
        e = g.diagonal() / torch.sqrt(s + 1e-7)
        scaled = e if base is None else e / (base + 1e-7)
        base = e if base is None else base
        expect = torch.softmax(logw + 0.3 * scaled, dim=0)
        logw = torch.log(expect)
        torch.testing.assert_close(w(g), expect)

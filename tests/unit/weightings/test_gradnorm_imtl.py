"""GradNorm against its update written in plain PyTorch (autograd + torch.optim.Adam), and
the hybrid IMTL against IMTL-G and IMTL-L."""

from __future__ import annotations

import torch

from mograd.weightings import IMTL, IMTLG, IMTLL, GradNorm

from ._inputs import gram


def losses_at(step: int, k: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(step)
    return (1.0 + torch.rand(k, generator=gen, dtype=torch.float64)) / (1 + 0.3 * step)


def test_gradnorm_matches_plain_pytorch() -> None:
    """L_grad = sum_i |w_i |g_i| - Gbar r_i^alpha| with the target held constant, its
    gradient by autograd, torch.optim.Adam(lr=0.05), then w <- k w / sum w: six steps."""
    k, alpha = 4, 1.5
    w = torch.ones(k, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([w], lr=0.05, foreach=False)
    ours = GradNorm(alpha=alpha, lr=0.05)
    initial = losses_at(0, k)
    for step in range(6):
        g, losses = gram(k, step), losses_at(step, k)
        c = ours(g, losses)
        torch.testing.assert_close(c, w.detach())
        norms = g.diagonal().sqrt()
        gw = w * norms
        rel = losses / initial
        target = (gw.mean() * (rel / rel.mean()) ** alpha).detach()
        opt.zero_grad()
        (gw - target).abs().sum().backward()
        opt.step()
        with torch.no_grad():
            w.copy_(k * w.clamp_min(0) / w.clamp_min(0).sum())
    torch.testing.assert_close(ours.state_dict()["adam"]["param"], w.detach())


def test_gradnorm_balances_the_weighted_gradient_norms() -> None:
    """With constant losses (r_i = 1) the fixed point is w_i |g_i| equal for all i."""
    g = torch.diag(torch.tensor([9.0, 1.0, 4.0], dtype=torch.float64))
    losses = torch.ones(3, dtype=torch.float64)
    gn = GradNorm(lr=0.01)
    for _ in range(3000):
        w = gn(g, losses)
    gw = w * g.diagonal().sqrt()
    torch.testing.assert_close(gw, gw.mean().expand(3), rtol=2e-2, atol=0)
    assert float(w.sum()) == 3.0 or abs(float(w.sum()) - 3.0) < 1e-12


def test_imtl_is_imtlg_on_the_scaled_gradients_with_imtll_scales() -> None:
    """c = IMTLG(D G D) * exp(s), with s following exactly IMTL-L's updates."""
    k = 4
    imtl, imtll = IMTL(lr=0.1), IMTLL(lr=0.1)
    for step in range(5):
        g, losses = gram(k, step), losses_at(step, k)
        s = imtll.state_dict()["adam"]
        scale = torch.ones(k, dtype=torch.float64) if s is None else torch.exp(s["param"])
        expect = IMTLG()(g * torch.outer(scale, scale)) * scale
        torch.testing.assert_close(imtl(g, losses), expect)
        imtll(None, losses)
    torch.testing.assert_close(
        imtl.state_dict()["adam"]["param"], imtll.state_dict()["adam"]["param"]
    )


def test_imtl_at_zero_scales_is_imtlg() -> None:
    g = gram(5, 2)
    torch.testing.assert_close(IMTL()(g, losses_at(0, 5)), IMTLG()(g))

"""The tensor Adam of the learned weightings against torch.optim.Adam, and its mask."""

from __future__ import annotations

import torch

from mograd.weightings._adam import adam_init, adam_step


def test_matches_torch_optim_adam() -> None:
    """Twenty steps with weight decay: the same parameters to 1e-14 (torch.optim.Adam's
    single-tensor path; the bias corrections are computed as tensors here)."""
    gen = torch.Generator().manual_seed(0)
    p = torch.randn(5, generator=gen, dtype=torch.float64)
    ref = p.clone().requires_grad_(True)
    opt = torch.optim.Adam([ref], lr=0.03, weight_decay=0.01, foreach=False)
    state = adam_init(p)
    ok = torch.tensor(True)
    for _ in range(20):
        grad = torch.randn(5, generator=gen, dtype=torch.float64)
        ref.grad = grad.clone()
        opt.step()
        state = adam_step(state, grad, ok, lr=0.03, weight_decay=0.01)
    torch.testing.assert_close(state["param"], ref.detach(), rtol=1e-14, atol=1e-14)
    assert float(state["step"]) == 20.0


def test_a_masked_step_changes_nothing() -> None:
    state = adam_init(torch.ones(3, dtype=torch.float64))
    state = adam_step(state, torch.ones(3, dtype=torch.float64), torch.tensor(True), lr=0.1)
    bad = torch.tensor([1.0, float("nan"), 2.0], dtype=torch.float64)
    after = adam_step(state, bad, torch.tensor(False), lr=0.1)
    for key in state:
        assert torch.equal(after[key], state[key])

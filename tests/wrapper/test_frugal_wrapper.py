"""``MOWrapper(opt, jacobian="gramian", modules=model)``: the rows path's step without J."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mograd import MOWrapper, NonFiniteError


def cnn(dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 16),
        nn.Tanh(), nn.Linear(16, 3),
    ).to(dtype)


def losses_of(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    out = model(x)
    hidden = model[:6](x)
    return [out[:, 0].pow(2).mean(), (out[:, 1] - 1).pow(2).mean(), hidden.pow(2).mean()]


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("weights", ["min_norm", "upgrad"])
def test_gramian_steps_like_rows(dtype, tol, weights) -> None:
    rows_model = cnn(dtype)
    frugal_model = copy.deepcopy(rows_model)
    rows = MOWrapper(torch.optim.SGD(rows_model.parameters(), lr=0.1), weights=weights)
    frugal = MOWrapper(
        torch.optim.SGD(frugal_model.parameters(), lr=0.1), weights=weights,
        jacobian="gramian", modules=frugal_model,
    )
    gen = torch.Generator().manual_seed(1)
    for _ in range(4):
        x = torch.randn(8, 1, 8, 8, generator=gen, dtype=dtype)
        a = rows.step(losses_of(rows_model, x))
        b = frugal.step(losses_of(frugal_model, x))
        torch.testing.assert_close(b.weights, a.weights, rtol=tol, atol=tol)
        rows.zero_grad()
        frugal.zero_grad()
    for p, q in zip(rows_model.parameters(), frugal_model.parameters()):
        torch.testing.assert_close(q, p, rtol=tol * 10, atol=tol * 10)


@pytest.mark.parametrize("retain", [False, True])
def test_task_heads_and_a_leaf_outside_the_optimizer_like_rows(retain) -> None:
    """``shared_params`` (heads outside G), a leaf the optimizer does not hold, and a
    parameter used outside its module: the same weights, ``.grad`` and step as rows."""
    torch.manual_seed(0)
    models, opts, shifts = [], [], []
    for jacobian in ("rows", "gramian"):
        body = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 8), nn.Tanh())
        heads = nn.ModuleList([nn.Linear(8, 1), nn.Linear(8, 2)])
        gate = nn.ParameterList([nn.Parameter(torch.tensor([0.9]))])
        model = nn.ModuleList([body, heads, gate])
        if models:
            model.load_state_dict(models[0].state_dict())
        extra = {"jacobian": "gramian", "modules": model} if jacobian == "gramian" else {}
        opts.append(MOWrapper(torch.optim.SGD(model.parameters(), lr=0.1),
                              shared_params=list(body.parameters()), **extra))
        models.append(model)
        shifts.append(torch.zeros(8, dtype=torch.float32, requires_grad=True))
    gen = torch.Generator().manual_seed(2)
    for _ in range(3):
        x = torch.randn(12, 6, generator=gen)
        infos = []
        for model, opt, shift in zip(models, opts, shifts):
            body, heads, gate = model
            z = body(x) * gate[0] + shift
            losses = [heads[0](z).pow(2).mean(), heads[1](z).logsumexp(-1).mean(), z.pow(2).mean()]
            opt.zero_grad()
            infos.append(opt.backward(losses, retain_graph=retain))
            if retain:
                torch.autograd.grad(sum(losses), [shift])  # the graph is still there
            opt.step()
        torch.testing.assert_close(infos[1].weights, infos[0].weights, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(shifts[1].grad, shifts[0].grad, rtol=1e-5, atol=1e-6)
    for p, q in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("policy", ["raise", "skip"])
def test_gramian_nonfinite_policy_leaves_everything_untouched(policy) -> None:
    model = cnn(torch.float64)
    opt = MOWrapper(torch.optim.Adam(model.parameters(), lr=1e-2), jacobian="gramian",
                    modules=model, nonfinite=policy)
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    out = model(x)
    bad = [out[:, 0].mean(), (out[:, 1] * 0).abs().sqrt().mean()]  # inf gradient
    if policy == "raise":
        with pytest.raises(NonFiniteError):
            opt.step(bad)
    else:
        assert opt.step(bad).skipped
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert all(p.grad is None for p in model.parameters()) and len(opt.state) == 0


BAD = [
    ("no modules", lambda m: MOWrapper(torch.optim.SGD(m.parameters(), lr=0.1), jacobian="gramian"), "needs modules="),
    ("modules without gramian", lambda m: MOWrapper(torch.optim.SGD(m.parameters(), lr=0.1), modules=m), "only used with jacobian='gramian'"),
    ("unknown jacobian", lambda m: MOWrapper(torch.optim.SGD(m.parameters(), lr=0.1), jacobian="frugal"), "jacobian must be 'rows' or 'gramian', got 'frugal'"),
    ("module missing a parameter", lambda m: MOWrapper(torch.optim.SGD(m.parameters(), lr=0.1), jacobian="gramian", modules=m[0]), "belong to none of the modules"),
]


@pytest.mark.parametrize(("name", "build", "match"), BAD, ids=[b[0] for b in BAD])
def test_gramian_bad_options(name, build, match) -> None:
    with pytest.raises(ValueError, match=match):
        build(cnn(torch.float32))


def test_gramian_cannot_accumulate() -> None:
    model = cnn(torch.float32)
    opt = MOWrapper(torch.optim.SGD(model.parameters(), lr=0.1), jacobian="gramian", modules=model)
    with pytest.raises(ValueError, match="accumulate.. needs jacobian='rows'"):
        opt.accumulate(losses_of(model, torch.randn(2, 1, 8, 8)))

"""MultiObjectiveOptimizer: the combined gradient, the torch.optim contract, checkpoints."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mograd import MOWrapper, MultiObjectiveOptimizer, min_norm_weights
from mograd.weighting import reweight, smooth_coefficients


class TwoHead(nn.Module):
    """A shared trunk, two heads, and a parameter that no loss reaches."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Linear(5, 6)
        self.head_a = nn.Linear(6, 1)
        self.head_b = nn.Linear(6, 1)
        self.unused = nn.Parameter(torch.zeros(3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = torch.tanh(self.trunk(x))
        return h, self.head_a(h).squeeze(-1), self.head_b(h).squeeze(-1)


def make(seed: int = 0, dtype: torch.dtype = torch.float32) -> tuple[TwoHead, torch.Tensor]:
    torch.manual_seed(seed)
    model = TwoHead().to(dtype)
    x = torch.randn(16, 5, dtype=dtype)
    return model, x


def losses_of(model: TwoHead, x: torch.Tensor, k: int = 2) -> list[torch.Tensor]:
    h, a, b = model(x)
    out = [(a - 1).pow(2).mean(), (b + 1).pow(2).mean(), h.pow(2).mean()]
    return out[:k]


def hand_combined(model: TwoHead, x: torch.Tensor, k: int, power=2.0, mu=0.2, shared=None):
    """The step (paper eqs. 8-14) computed by hand, loss by loss."""
    params = [p for p in model.parameters()]
    losses = losses_of(model, x, k)
    grads = []
    for loss in losses:
        gs = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        grads.append([torch.zeros_like(p) if g is None else g for p, g in zip(params, gs)])
    shared = params if shared is None else shared
    ids = [i for i, p in enumerate(params) if any(p is s for s in shared)]
    flat = torch.stack([torch.cat([g[i].reshape(-1) for i in ids]) for g in grads])
    gram = flat @ flat.T
    w = min_norm_weights(gram)
    c = smooth_coefficients(reweight(w, power), torch.stack([v.detach() for v in losses]), mu)
    combined = [sum(c[j] * grads[j][i] for j in range(k)) for i in range(len(params))]
    return combined, w, c


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize(("power", "mu"), [(2.0, 0.2), (1.0, None), (2.0, None), (1.5, 1.0)])
def test_combined_gradient_equals_hand_computation(k: int, power: float, mu) -> None:
    model, x = make(dtype=torch.float64)
    expected, w, c = hand_combined(model, x, k, power, mu)
    opt = MOWrapper(torch.optim.SGD(model.parameters(), lr=0.1), power=power, mu=mu)
    info = opt.backward(losses_of(model, x, k))
    torch.testing.assert_close(info.weights, w)
    torch.testing.assert_close(info.coefficients, c)
    for (name, p), g in zip(model.named_parameters(), expected):
        if name == "unused":
            assert p.grad is None  # no loss reaches it
        else:
            torch.testing.assert_close(p.grad, g, rtol=1e-12, atol=1e-12)


def test_shared_params_restrict_the_gram_matrix() -> None:
    model, x = make(dtype=torch.float64)
    shared = list(model.trunk.parameters())
    expected, w, _ = hand_combined(model, x, 2, shared=shared)
    opt = MOWrapper(torch.optim.SGD(model.parameters(), lr=0.1), shared_params=shared)
    info = opt.backward(losses_of(model, x, 2))
    torch.testing.assert_close(info.weights, w)
    for (name, p), g in zip(model.named_parameters(), expected):
        if name != "unused":
            torch.testing.assert_close(p.grad, g)
    # the heads still get sum_i c_i grad L_i although they are not shared
    assert model.head_a.weight.grad is not None and model.head_b.weight.grad is not None


def test_diagnostics() -> None:
    model, x = make(dtype=torch.float64)
    opt = MOWrapper(torch.optim.SGD(model.parameters(), lr=0.1))
    losses = losses_of(model, x, 3)
    gs = [
        torch.cat(
            [
                torch.zeros(p.numel(), dtype=p.dtype) if g is None else g.reshape(-1)
                for p, g in zip(
                    model.parameters(),
                    torch.autograd.grad(
                        loss, list(model.parameters()), retain_graph=True, allow_unused=True
                    ),
                )
            ]
        )
        for loss in losses
    ]
    info = opt.backward(losses)
    torch.testing.assert_close(info.losses, torch.stack([v.detach() for v in losses]))
    torch.testing.assert_close(info.grad_norms, torch.stack([g.norm() for g in gs]))
    cos01 = gs[0] @ gs[1] / (gs[0].norm() * gs[1].norm())
    torch.testing.assert_close(info.cosines[0, 1], cos01)
    assert info.iterations >= 1 and not info.skipped
    d = info.as_dict()
    assert set(d) >= {"weights", "coefficients", "cosines", "iterations"}
    assert opt.last_info is info and opt.steps == 0  # counts optimizer steps, not backward passes


def test_two_objective_toy_reaches_pareto_stationary_point() -> None:
    a = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    b = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    x = torch.tensor([2.0, 2.0, 1.5], dtype=torch.float64, requires_grad=True)
    opt = MOWrapper(torch.optim.SGD([x], lr=0.05))
    for _ in range(1500):
        opt.zero_grad()
        opt.step([(x - a).pow(2).sum(), (x - b).pow(2).sum()])
    xd = x.detach()
    # The Pareto set is the segment [a, b]: x is on it, and the min-norm element is 0.
    t = torch.clamp((xd - a) @ (b - a) / ((b - a) @ (b - a)), 0, 1)
    assert float((xd - (a + t * (b - a))).norm()) < 1e-8
    g = torch.stack([2 * (xd - a), 2 * (xd - b)])
    w = min_norm_weights(g @ g.T)
    assert float(w @ (g @ g.T) @ w) < 1e-12


def test_single_loss_is_exactly_the_wrapped_optimizer() -> None:
    m1, x = make()
    m2 = copy.deepcopy(m1)
    plain = torch.optim.Adam(m1.parameters(), lr=1e-2)
    wrapped = MOWrapper(torch.optim.Adam(m2.parameters(), lr=1e-2))
    for _ in range(5):
        plain.zero_grad()
        losses_of(m1, x, 1)[0].backward()
        plain.step()
        wrapped.zero_grad()
        info = wrapped.step(losses_of(m2, x, 1))
        assert info.weights.tolist() == [1.0] and info.coefficients.tolist() == [1.0]
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p1, p2)


def test_shares_state_with_the_wrapped_optimizer_and_scheduler_works() -> None:
    model, x = make()
    inner = torch.optim.Adam(model.parameters(), lr=1e-2)
    opt = MOWrapper(inner)
    assert isinstance(opt, torch.optim.Optimizer)
    assert opt.param_groups is inner.param_groups
    assert opt.state is inner.state and opt.defaults is inner.defaults
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    calls = []
    opt.register_step_pre_hook(lambda o, a, kw: calls.append("pre"))
    opt.register_step_post_hook(lambda o, a, kw: calls.append("post"))
    for _ in range(3):
        opt.zero_grad()
        opt.step(losses_of(model, x))
        sched.step()
    assert inner.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.5**3)
    assert calls == ["pre", "post"] * 3
    assert len(inner.state) == sum(1 for p in model.parameters() if p is not model.unused)
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_backward_then_clip_then_step() -> None:
    m1, x = make()
    m2 = copy.deepcopy(m1)
    o1 = MOWrapper(torch.optim.SGD(m1.parameters(), lr=0.1))
    o2 = MOWrapper(torch.optim.SGD(m2.parameters(), lr=0.1))
    o1.backward(losses_of(m1, x))
    norm = torch.nn.utils.clip_grad_norm_(m1.parameters(), 1e-3)
    assert norm > 1e-3
    before = [p.detach().clone() for p in m1.parameters()]
    assert o1.step() is None
    moved = torch.cat([(p - q).reshape(-1) for p, q in zip(m1.parameters(), before)])
    torch.testing.assert_close(moved.norm(), torch.tensor(0.1 * 1e-3), rtol=1e-3, atol=0)
    o2.step(losses_of(m2, x))  # unclipped moves much further
    moved2 = torch.cat([(p - q).reshape(-1) for p, q in zip(m2.parameters(), before)])
    assert moved2.norm() > 10 * moved.norm()


def test_grad_scaler_on_cpu_uses_unscaled_values() -> None:
    m1, x = make()
    m2 = copy.deepcopy(m1)
    o1 = MOWrapper(torch.optim.Adam(m1.parameters(), lr=1e-2))
    o2 = MOWrapper(torch.optim.Adam(m2.parameters(), lr=1e-2))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    for _ in range(4):
        o1.zero_grad()
        ref = o1.step(losses_of(m1, x))
        o2.zero_grad()
        info = o2.backward(losses_of(m2, x), grad_scaler=scaler)
        # .grad holds the scaled gradient until the scaler unscales it
        assert m2.trunk.weight.grad.abs().max() > 100 * m1.trunk.weight.grad.abs().max()
        scaler.step(o2)
        scaler.update()
        torch.testing.assert_close(info.weights, ref.weights)
        torch.testing.assert_close(info.coefficients, ref.coefficients)
        torch.testing.assert_close(info.grad_norms, ref.grad_norms)
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p1, p2, rtol=1e-4, atol=1e-6)


def test_grad_scaler_skips_inf_steps() -> None:
    model, x = make()
    opt = MOWrapper(torch.optim.Adam(model.parameters(), lr=1e-2))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    before = copy.deepcopy(model.state_dict())
    l1, l2 = losses_of(model, x)
    opt.backward([l1 * float("inf"), l2], grad_scaler=scaler)
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() < 2.0**12
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_bf16_autocast_step() -> None:
    model, x = make()
    opt = MOWrapper(torch.optim.Adam(model.parameters(), lr=1e-2))
    start = [p.detach().clone() for p in model.parameters()]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = losses_of(model, x)
    info = opt.step(losses)
    assert torch.isfinite(info.weights).all()
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), start))


def test_float64_pass() -> None:
    model, x = make(dtype=torch.float64)
    opt = MOWrapper(torch.optim.Adam(model.parameters(), lr=1e-2))
    for _ in range(3):
        opt.zero_grad()
        info = opt.step(losses_of(model, x, 3))
    for t in (info.weights, info.reweighted, info.coefficients, info.losses, info.cosines):
        assert t.dtype == torch.float64
    assert model.trunk.weight.grad.dtype == torch.float64
    assert abs(float(info.weights.sum()) - 1.0) < 1e-12


def run_steps(model: TwoHead, opt: MultiObjectiveOptimizer, n: int, seed: int) -> list:
    gen = torch.Generator().manual_seed(seed)
    trace = []
    for _ in range(n):
        x = torch.randn(16, 5, generator=gen)
        opt.zero_grad()
        info = opt.step(losses_of(model, x, 3))
        trace.append(info.weights.clone())
    return trace


@pytest.mark.parametrize("weights", ["min_norm", (0.2, 0.3, 0.5)])
def test_checkpoint_resume_is_bit_identical(weights, tmp_path) -> None:
    model, _ = make()
    opt = MOWrapper(torch.optim.Adam(model.parameters(), lr=1e-2), weights=weights)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.9)
    run_steps(model, opt, 5, seed=1)
    sched.step()
    path = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, path)
    trace_a = run_steps(model, opt, 10, seed=2)
    params_a = [p.detach().clone() for p in model.parameters()]

    model_b, _ = make(seed=123)  # different init: everything must come from the checkpoint
    opt_b = MOWrapper(torch.optim.Adam(model_b.parameters(), lr=1.0), weights=weights)
    sched_b = torch.optim.lr_scheduler.ExponentialLR(opt_b, gamma=0.9)
    ckpt = torch.load(path, weights_only=True)
    model_b.load_state_dict(ckpt["model"])
    opt_b.load_state_dict(ckpt["opt"])
    sched_b.load_state_dict(ckpt["sched"])
    assert opt_b.steps == 5 and opt_b.state is opt_b.optimizer.state
    trace_b = run_steps(model_b, opt_b, 10, seed=2)
    for wa, wb in zip(trace_a, trace_b):
        assert torch.equal(wa, wb)
    for pa, pb in zip(params_a, model_b.parameters()):
        assert torch.equal(pa, pb)
    assert opt_b.steps == 15


def test_representation_mode_uses_feature_gradients() -> None:
    model, x = make(dtype=torch.float64)
    h, a, b = model(x)
    la, lb = (a - 1).pow(2).mean(), (b + 1).pow(2).mean()
    ga = torch.autograd.grad(la, h, retain_graph=True)[0].reshape(-1)
    gb = torch.autograd.grad(lb, h, retain_graph=True)[0].reshape(-1)
    jz = torch.stack([ga, gb])
    w = min_norm_weights(jz @ jz.T)
    c = smooth_coefficients(reweight(w, 2.0), torch.stack([la.detach(), lb.detach()]), 0.2)
    expected = torch.autograd.grad(c[0] * la + c[1] * lb, model.trunk.weight, retain_graph=True)[0]
    opt = MOWrapper(torch.optim.SGD(model.parameters(), lr=0.1))
    info = opt.backward([la, lb], features=h)
    torch.testing.assert_close(info.weights, w)
    torch.testing.assert_close(model.trunk.weight.grad, expected)
    assert model.unused.grad is None


def test_fixed_and_equal_weights() -> None:
    model, x = make(dtype=torch.float64)
    opt = MOWrapper(torch.optim.SGD(model.parameters(), lr=0.1), weights="equal", mu=None)
    info = opt.backward(losses_of(model, x, 2))
    torch.testing.assert_close(info.weights, torch.tensor([0.5, 0.5], dtype=torch.float64))
    torch.testing.assert_close(info.coefficients, torch.tensor([0.25, 0.25], dtype=torch.float64))
    assert info.iterations == 0
    opt2 = MOWrapper(torch.optim.SGD(model.parameters(), lr=0.1), weights=[1.0, 3.0], power=1.0)
    info2 = opt2.backward(losses_of(model, x, 2))
    torch.testing.assert_close(info2.reweighted, torch.tensor([1.0, 3.0], dtype=torch.float64))


def test_closure_step() -> None:
    model, x = make()
    opt = MOWrapper(torch.optim.SGD(model.parameters(), lr=0.1))
    before = model.trunk.weight.detach().clone()

    def closure() -> list[torch.Tensor]:
        opt.zero_grad()
        return losses_of(model, x)

    info = opt.step(closure=closure)
    assert info is not None and not torch.equal(model.trunk.weight, before)


class CountBackward(torch.autograd.Function):
    """Identity whose backward counts its calls."""

    calls = 0

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        CountBackward.calls += 1
        return grad


def test_a_loss_back_propagates_only_through_what_it_reaches() -> None:
    """The IB KL term reaches only the encoder: the decoder's backward runs once per step."""
    torch.manual_seed(0)
    enc, dec = nn.Linear(4, 6), nn.Linear(6, 3)
    opt = MOWrapper(torch.optim.SGD([*enc.parameters(), *dec.parameters()], lr=0.1))
    z = enc(torch.randn(8, 4))
    logits = CountBackward.apply(dec(z))
    enc_marker = CountBackward.apply(z)
    CountBackward.calls = 0
    opt.backward([nn.functional.cross_entropy(logits, torch.zeros(8, dtype=torch.long)),
                  enc_marker.pow(2).mean()])
    # decoder marker: once (CE only); encoder marker: once (KL only) -> 2, not 3 or 4
    assert CountBackward.calls == 2


def test_state_dict_hooks_run_on_the_wrapper() -> None:
    model, x = make()
    opt = MOWrapper(torch.optim.Adam(model.parameters(), lr=1e-2))
    opt.step(losses_of(model, x))
    seen = []
    opt.register_state_dict_post_hook(lambda o, sd: seen.append(("post", sorted(sd))))
    opt.register_load_state_dict_post_hook(lambda o: seen.append(("load",)))
    sd = opt.state_dict()
    opt.load_state_dict(sd)
    assert seen == [("post", ["mograd", "param_groups", "state"]), ("load",)]

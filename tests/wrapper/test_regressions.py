"""Regression tests of issue 17 (one step, one pipeline): one test per reproduced bug.

Items 1, 3, 4, 6, 7, 9, 10, 11, 12 and 13 are here; the distributed items 2 and 5 are in
``tests/integration/test_distributed_paths.py``; item 8 (weightings on a non-finite Gram
matrix) is in the weightings' contract tests. Each docstring cites its item.
"""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
from torch import nn
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

from mograd import MOWrapper, NonFiniteError

SCALE = 1024.0  # GradScaler's init scale in the reproduction


class Net(nn.Module):
    """A 2-layer MLP whose hidden layer ``z`` is the shared representation."""

    def __init__(self, embed: bool = False, sparse: bool = True) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4, sparse=sparse) if embed else None
        self.body = nn.Sequential(nn.Linear(4, 6), nn.Tanh())
        self.head = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.embed(x).mean(1) if self.embed is not None else x
        z = self.body(h)
        return z, self.head(z)


def losses_of(out: torch.Tensor) -> list[torch.Tensor]:
    return [(out[:, 0] - 1).pow(2).mean(), (out[:, 1] + 1).pow(2).mean() + 0.1 * out[:, 0].mean()]


def net(dtype: torch.dtype = torch.float64, **kw: bool) -> Net:
    torch.manual_seed(0)
    return Net(**kw).to(dtype)


def batch(dtype: torch.dtype = torch.float64, n: int = 8) -> torch.Tensor:
    return torch.randn(n, 4, generator=torch.Generator().manual_seed(1)).to(dtype)


def grads(model: nn.Module) -> list[torch.Tensor | None]:
    return [None if p.grad is None else p.grad.clone() for p in model.parameters()]


def assert_bitwise(a: list[torch.Tensor | None], b: list[torch.Tensor | None]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert (x is None) == (y is None)
        if x is not None:
            assert x.dtype == y.dtype and x.layout == y.layout and torch.equal(x, y), (x, y)


def assert_state_equal(a: object, b: object) -> None:
    """Nested dicts/lists of tensors and numbers, bit for bit."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), (a, b)
        for key in a:
            assert_state_equal(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), (a, b)
        for x, y in zip(a, b):
            assert_state_equal(x, y)
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b), (a, b)
    else:
        assert a == b, (a, b)


# ------------------------------------------------------------------ item 1
@pytest.mark.parametrize(
    "options", [{"normalize": "l2"}, {"weights": "nash_mtl"}], ids=["normalize-l2", "nash_mtl"]
)
def test_representation_mode_unscales_grad_scaler(options: dict) -> None:
    """Item 1: representation mode with ``grad_scaler=`` computes the weights from the
    unscaled gradients (docs/api.md): the scaled ``.grad`` is ``scale`` times the unscaled
    step's, and ``StepInfo.grad_norms`` are the unscaled norms."""
    plain_model, scaled_model = net(), net()
    x = batch()
    opt = MOWrapper(torch.optim.SGD(plain_model.parameters(), lr=0.1), **options)
    z, out = plain_model(x)
    ref = opt.backward(losses_of(out), features=z)
    scaler = torch.amp.GradScaler("cpu", init_scale=SCALE)
    opt_s = MOWrapper(torch.optim.SGD(scaled_model.parameters(), lr=0.1), **options)
    z, out = scaled_model(x)
    info = opt_s.backward(losses_of(out), features=z, grad_scaler=scaler)
    torch.testing.assert_close(info.grad_norms, ref.grad_norms, rtol=1e-12, atol=0)
    torch.testing.assert_close(info.coefficients, ref.coefficients, rtol=1e-12, atol=1e-15)
    for g_scaled, g in zip(grads(scaled_model), grads(plain_model)):
        torch.testing.assert_close(g_scaled / SCALE, g, rtol=1e-12, atol=1e-15)
    scaler.step(opt_s)
    scaler.update()
    opt.step()
    for p, q in zip(scaled_model.parameters(), plain_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-15)


# ------------------------------------------------------------------ item 3
def test_gramian_recovers_from_float32_gram_overflow() -> None:
    """Item 3: ``jacobian="gramian"`` with finite float32 gradients near 1e20 (their Gram
    matrix overflows float32) gives the rows path's weights and update, as the option
    promises, instead of ``NonFiniteError``."""
    models = [net(torch.float32) for _ in range(2)]
    x = batch(torch.float32)
    infos = []
    for model, extra in zip(models, ({}, {"jacobian": "gramian", "modules": models[1]})):
        opt = MOWrapper(torch.optim.SGD(model.parameters(), lr=1e-21), **extra)
        infos.append(opt.step([1e20 * loss for loss in losses_of(model(x)[1])]))
    rows, gramian = infos
    assert bool(torch.isfinite(rows.grad_norms).all()) and float(rows.grad_norms.min()) > 1e18
    torch.testing.assert_close(gramian.weights, rows.weights, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(gramian.grad_norms, rows.grad_norms, rtol=1e-5, atol=0)
    for p, q in zip(*(m.parameters() for m in models)):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ item 4
def test_accumulate_with_one_loss_is_plain_accumulation() -> None:
    """Item 4: ``accumulate()`` with k = 1 is plain PyTorch accumulation (coefficient 1, not
    Smooth-IB's 2): ``.grad`` and the SGD step bit for bit."""
    model, ref = net(), net()
    x = batch()
    opt = MOWrapper(torch.optim.SGD(model.parameters(), lr=0.1))
    plain = torch.optim.SGD(ref.parameters(), lr=0.1)
    for xm in x.chunk(2):
        opt.accumulate([sum(losses_of(model(xm)[1])) / 2])
        (sum(losses_of(ref(xm)[1])) / 2).backward()
    info = opt.backward()
    assert info.coefficients.tolist() == [1.0]
    assert_bitwise(grads(model), grads(ref))
    opt.step()
    plain.step()
    assert_bitwise(list(model.parameters()), list(ref.parameters()))


# ------------------------------------------------------------------ item 6
def test_representation_mode_with_one_loss_is_loss_backward() -> None:
    """Item 6: ``opt.backward([loss], features=z)`` is exact for k = 1
    (docs/performance.md): ``.grad`` equals ``loss.backward()``'s, coefficient 1."""
    model, ref = net(), net()
    x = batch()
    opt = MOWrapper(torch.optim.SGD(model.parameters(), lr=0.1))
    z, out = model(x)
    info = opt.backward([sum(losses_of(out))], features=z)
    sum(losses_of(ref(x)[1])).backward()
    assert info.coefficients.tolist() == [1.0]
    assert_bitwise(grads(model), grads(ref))


# ------------------------------------------------------------------ item 7
@pytest.mark.parametrize("path", ["rows", "gramian", "features"])
def test_sparse_embedding_gradient_is_densified_on_every_path(path: str) -> None:
    """Item 7: with ``nn.Embedding(sparse=True)``, k = 2 and Adam, every path writes a dense
    ``.grad`` (docs/api.md, k >= 2) equal to the same path on a dense embedding."""
    ids = torch.randint(0, 10, (8, 3), generator=torch.Generator().manual_seed(2))
    results = []
    for sparse in (True, False):
        model = net(embed=True, sparse=sparse)
        extra = {"jacobian": "gramian", "modules": model} if path == "gramian" else {}
        opt = MOWrapper(torch.optim.Adam(model.parameters(), lr=1e-2), **extra)
        z, out = model(ids)
        opt.backward(losses_of(out), features=z if path == "features" else None)
        layout = model.embed.weight.grad.layout
        assert layout == torch.strided, f"{path}: .grad of the embedding is {layout}"
        written = grads(model)
        opt.step()
        results.append((written, [p.detach().clone() for p in model.parameters()]))
    for a, b in zip(results[0][0] + results[0][1], results[1][0] + results[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------------ item 9
K, MODULES, COLUMNS = 4, 64, 1 << 14  # P = 2^20 float32 parameters in 64 blocks
BOUND = 1e-6


class Probe(nn.Module):
    """``L_i = <a_i, w>``: the per-loss gradients are the fixed rows ``a_i`` (float32)."""

    def __init__(self, rows: torch.Tensor) -> None:
        super().__init__()
        self.rows = rows
        self.w = nn.Parameter(torch.zeros(rows.shape[1]))

    def forward(self) -> torch.Tensor:
        return self.rows @ self.w


def mixed_rows() -> torch.Tensor:
    """k x P float32 rows of mixed magnitudes (1/64 of the columns 30x larger), two of them
    correlated, so that the Gram matrix has a nontrivial off-diagonal."""
    gen = torch.Generator().manual_seed(0)
    rows = torch.randn(K, MODULES * COLUMNS, generator=gen)
    rows[:, : MODULES * COLUMNS // 64] *= 30.0
    rows[1] += 0.5 * rows[0]
    return rows.float()


def norm_and_cosine_errors(gram: torch.Tensor, exact: torch.Tensor) -> tuple[float, float]:
    """Largest relative error of the norms and absolute error of the cosines."""
    n64 = exact.diagonal().sqrt()
    n = gram.double().diagonal().clamp_min(0).sqrt()
    cos = gram.double() / (n[:, None] * n[None, :])
    cos64 = exact / (n64[:, None] * n64[None, :])
    return float(((n - n64).abs() / n64).max()), float((cos - cos64).abs().max())


@pytest.mark.parametrize("jacobian", ["rows", "gramian"])
def test_gram_matrix_error_does_not_grow_with_parameter_count(jacobian: str) -> None:
    """Item 9: one precision rule for every source, the Gram matrix accumulated so that its
    error does not grow with P (float32 blocks summed in float64, the gramian path's rule).

    P = 2^20 float32 parameters in 64 modules of 2^14: float32 blocks of 2^14 columns summed
    in float64 stay near 1e-7 (the error of one block), while one plain float32 ``J @ J.T``
    over all P columns is ~5e-5 off a float64 recomputation. ``StepInfo.grad_norms`` (the
    diagonal of G) and ``cosines`` must meet the 1e-6 bound."""
    torch.set_num_threads(1)
    rows = mixed_rows()
    exact = rows.double() @ rows.double().T
    # the construction is meaningful: a plain float32 product misses the bound here
    plain_norms, plain_cos = norm_and_cosine_errors(rows @ rows.T, exact)
    assert plain_norms > 10 * BOUND and plain_cos > 10 * BOUND, (plain_norms, plain_cos)
    blocks = sum((b @ b.T).double() for b in rows.split(COLUMNS, dim=1))
    assert max(norm_and_cosine_errors(blocks, exact)) < BOUND / 4
    model = nn.ModuleList(Probe(r) for r in rows.split(COLUMNS, dim=1))
    extra = {"jacobian": "gramian", "modules": model} if jacobian == "gramian" else {}
    opt = MOWrapper(torch.optim.SGD(model.parameters(), lr=0.0), weights="mgda", **extra)
    losses = torch.stack([m() for m in model]).sum(0)
    info = opt.backward(list(losses.unbind()))
    n64 = exact.diagonal().sqrt()
    norm_err = float(((info.grad_norms.double() - n64).abs() / n64).max())
    cos64 = exact / (n64[:, None] * n64[None, :])
    cos_err = float((info.cosines.double() - cos64).abs().max())
    assert norm_err < BOUND and cos_err < BOUND, (norm_err, cos_err)


# ------------------------------------------------------------------ item 10
def test_global_step_hooks_fire_once_per_step() -> None:
    """Item 10: hooks registered with ``torch.optim.optimizer.register_optimizer_step_pre_hook``
    / ``..._post_hook`` run once per step, as for any optimizer: ``[0, 1, 2, 5]``, not
    ``[0, 1, 0, 5, 2, 5]``; the optimizer they see is the one whose ``step`` was called."""
    model = net()
    opt = MOWrapper(torch.optim.Adam(model.parameters(), lr=1e-2))
    order: list[int] = []
    seen: list[object] = []
    opt.register_step_pre_hook(lambda o, a, k: order.append(1))
    opt.register_step_post_hook(lambda o, a, k: order.append(2))

    def global_pre(o: object, args: object, kwargs: object) -> None:
        order.append(0)
        seen.append(o)

    pre = register_optimizer_step_pre_hook(global_pre)
    post = register_optimizer_step_post_hook(lambda o, a, k: order.append(5))
    try:
        opt.step(losses_of(model(batch())[1]))
        assert order == [0, 1, 2, 5]
        opt.zero_grad()
        opt.step(losses_of(model(batch())[1]))
        assert order == [0, 1, 2, 5] * 2
    finally:
        pre.remove()
        post.remove()
    assert seen == [opt, opt]


# ------------------------------------------------------------------ item 11
def nothing_to_do(how: str) -> tuple[Net, Net, torch.Tensor]:
    """A model whose optimizer has nothing to train, and what the losses reach instead:
    ``frozen``: every parameter has ``requires_grad=False``, the input requires grad;
    ``elsewhere``: the losses come from another model that the optimizer does not hold."""
    held, other = net(), net()
    x = batch()
    if how == "frozen":
        held.requires_grad_(False)
        other = held
        x.requires_grad_(True)
    return held, other, x


@pytest.mark.parametrize("how", ["frozen", "elsewhere"])
def test_step_with_nothing_to_do_is_plain_torch_with_one_loss(how: str) -> None:
    """Item 11, k = 1: a step with nothing to do behaves as in plain PyTorch
    (``loss.backward(); opt.step()``): no error, the optimizer's parameters and state do not
    change, every leaf that the loss reaches gets ``loss.backward()``'s gradient."""
    held, other, x = nothing_to_do(how)
    held_ref, other_ref, x_ref = nothing_to_do(how)
    opt = MOWrapper(torch.optim.Adam(held.parameters(), lr=1e-2))
    plain = torch.optim.Adam(held_ref.parameters(), lr=1e-2)
    before = copy.deepcopy(held.state_dict())
    opt.step([sum(losses_of(other(x)[1]))])
    sum(losses_of(other_ref(x_ref)[1])).backward()
    plain.step()
    assert_state_equal(held.state_dict(), before)
    assert_bitwise(grads(held), grads(held_ref))
    assert_bitwise(grads(other), grads(other_ref))
    if how == "frozen":
        assert_bitwise([x.grad], [x_ref.grad])
    assert_state_equal(opt.optimizer.state_dict()["state"], plain.state_dict()["state"])


@pytest.mark.parametrize("how", ["frozen", "elsewhere"])
def test_step_with_nothing_to_do_is_a_no_op_for_every_k(how: str) -> None:
    """Item 11, k >= 2 (the rule proposed for issue 17, one rule for every k): when *no* loss
    reaches a trainable parameter of the optimizer, there is nothing to weight and the step
    is PyTorch's no-op on the optimizer: no error, its parameters keep ``grad is None`` and
    do not move, its state does not change. The Gram matrix of the optimizer's parameters
    is then zero, so the weights are the weighting's answer for identical gradients (1/k
    for min-norm), and the leaves outside the optimizer that the losses reach get
    ``sum_i c_i grad L_i`` with those coefficients, as every reached leaf does."""
    held, other, x = nothing_to_do(how)
    opt = MOWrapper(torch.optim.Adam(held.parameters(), lr=1e-2))
    before = copy.deepcopy(held.state_dict())
    losses = losses_of(other(x)[1])
    leaves = [x] if how == "frozen" else list(other.parameters())
    per_loss = [torch.autograd.grad(loss, leaves, retain_graph=True) for loss in losses]
    info = opt.step(losses)
    assert_state_equal(held.state_dict(), before)
    if how == "frozen":
        assert all(p.grad is None for p in held.parameters())
    assert opt.optimizer.state_dict()["state"] == {}
    torch.testing.assert_close(info.weights, torch.full((2,), 0.5, dtype=torch.float64))
    c = info.coefficients
    for j, leaf in enumerate(leaves):
        expected = c[0] * per_loss[0][j] + c[1] * per_loss[1][j]
        torch.testing.assert_close(leaf.grad, expected, rtol=1e-12, atol=1e-15)


def test_loss_reaching_no_parameter_beside_others_raises_up_front() -> None:
    """Item 11, the error that stays (the same rule): with k >= 2, a loss that reaches none
    of the optimizer's trainable parameters while another loss does is a mistake (a
    detached representation, the wrong model): ``ValueError`` naming the loss, nothing
    changed."""
    held, other = net(), net()
    x = batch()
    opt = MOWrapper(torch.optim.Adam(held.parameters(), lr=1e-2))
    before = copy.deepcopy(held.state_dict())
    good = losses_of(held(x)[1])[0]
    stray = losses_of(other(x)[1])[1]
    with pytest.raises(ValueError, match=r"losses\[1\]"):
        opt.step([good, stray])
    assert_state_equal(held.state_dict(), before)
    assert all(p.grad is None for p in [*held.parameters(), *other.parameters()])
    assert opt.optimizer.state_dict()["state"] == {}


# ------------------------------------------------------------------ item 12
def test_sparse_gradient_with_one_loss_is_loss_backward() -> None:
    """Item 12: k = 1 sparse gradients are ``loss.backward()``'s exactly (uncoalesced, the
    same indices and values), and SGD's parameters are bit-identical to plain SGD's."""
    model, ref = net(embed=True), net(embed=True)
    ids = torch.tensor([[0, 2, 0], [4, 2, 7], [0, 7, 7]])
    opt = MOWrapper(torch.optim.SGD(model.parameters(), lr=0.3))
    plain = torch.optim.SGD(ref.parameters(), lr=0.3)
    opt.backward([sum(losses_of(model(ids)[1]))])
    sum(losses_of(ref(ids)[1])).backward()
    g, g_ref = model.embed.weight.grad, ref.embed.weight.grad
    assert g.is_sparse and g_ref.is_sparse
    assert g.is_coalesced() == g_ref.is_coalesced() is False
    assert g._nnz() == g_ref._nnz() == ids.numel()
    assert torch.equal(g._indices(), g_ref._indices())
    assert torch.equal(g._values(), g_ref._values())
    opt.step()
    plain.step()
    assert_bitwise(list(model.parameters()), list(ref.parameters()))


# ------------------------------------------------------------------ item 13
def blow_up(w: torch.Tensor) -> torch.Tensor:
    """Maximized by LBFGS, this grows until it is infinite within one step."""
    return w.pow(2).sum().exp()


def concave(w: torch.Tensor) -> torch.Tensor:
    """Maximized at w = (3, 3): a finite LBFGS step that fills LBFGS's state."""
    return -(w - 3).pow(2).sum()


_LBFGS_MAXIMIZES = "maximize" in inspect.signature(torch.optim.LBFGS).parameters


@pytest.mark.skipif(not _LBFGS_MAXIMIZES, reason="LBFGS(maximize=...) needs torch >= 2.14")
@pytest.mark.parametrize("history", [False, True], ids=["first-step", "after-a-step"])
def test_lbfgs_nonfinite_step_restores_parameters_and_state(history: bool) -> None:
    """Item 13: ``NonFiniteError`` promises "parameters, gradients and optimizer state were
    left untouched"; with LBFGS (``maximize=True``), whose step re-evaluates the closure and
    moves the parameters before the value turns infinite, the parameters and LBFGS's state
    are restored to what they were before the step."""
    w = nn.Parameter(torch.tensor([1.0, -0.5], dtype=torch.float64))
    opt = MOWrapper(torch.optim.LBFGS([w], maximize=True))

    def closure_of(f):
        def closure() -> list[torch.Tensor]:
            opt.zero_grad()
            return [f(w)]

        return closure

    if history:
        opt.step(closure_of(concave))
        assert opt.optimizer.state_dict()["state"][0]["n_iter"] > 0
    w_before = w.detach().clone()
    state_before = copy.deepcopy(opt.optimizer.state_dict())
    steps = opt.steps
    with pytest.raises(NonFiniteError):
        opt.step(closure_of(blow_up))
    assert torch.equal(w.detach(), w_before), (w, w_before)
    assert_state_equal(opt.optimizer.state_dict(), state_before)
    assert opt.steps == steps

"""PyTorch's own optimizer test configurations, replayed through the wrapper with one loss.

With k = 1, ``MOWrapper(inner).step([loss])`` must be indistinguishable from
``loss.backward(); inner.step()`` (docs/api.md, the drop-in contract). Every configuration
of ``torch.testing._internal.common_optimizers.optim_db`` that runs on the CPU (each
``optim_inputs_func(device="cpu")`` entry, with the ``foreach`` and ``fused``
implementations where the optimizer has them on the CPU) runs 3 steps through the wrapper
and through the bare optimizer on an identical model copy; parameters and the optimizer's
``state_dict()`` (``state`` and ``param_groups``; the wrapper's own ``"mograd"`` entry
aside) must be equal bit for bit. LBFGS steps with a closure; the optimizers that accept
sparse gradients (``supports_sparse``) also run on ``nn.Embedding(sparse=True)``;
``SparseAdam`` is rejected by the wrapper on purpose. The global step hooks
(``register_optimizer_step_pre_hook``/``..._post_hook``) fire once per step for every
optimizer.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)
from torch.testing._internal.common_optimizers import OptimizerInfo, optim_db

from mograd import MOWrapper, NonFiniteError

STEPS = 3
TWO_D_ONLY = {"Muon"}  # optimizers that only take 2-d parameters


def _name(info: OptimizerInfo) -> str:
    return info.optim_cls.__name__


DENSE = [info for info in optim_db if not info.only_supports_sparse_grads]
SPARSE_ONLY = [info for info in optim_db if info.only_supports_sparse_grads]


def build(info: OptimizerInfo, sparse: bool = False) -> nn.Module:
    torch.manual_seed(0)
    bias = _name(info) not in TWO_D_ONLY
    if sparse:
        return nn.Sequential(nn.Embedding(10, 3, sparse=True), nn.Linear(3, 2, bias=bias))
    return nn.Sequential(nn.Linear(3, 4, bias=bias), nn.Tanh(), nn.Linear(4, 2, bias=bias))


def batches(sparse: bool = False) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    out = []
    for _ in range(STEPS):
        x = (
            torch.randint(0, 10, (6,), generator=gen)
            if sparse
            else torch.randn(6, 3, generator=gen)
        )
        out.append((x, torch.randn(6, 2, generator=gen)))
    return out


def loss_of(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (model(x) - y).pow(2).mean()


def kwargs_of(info: OptimizerInfo, index: int, impl: str) -> dict[str, Any]:
    kwargs = dict(info.optim_inputs_func(device="cpu")[index].kwargs)
    if impl != "default":
        kwargs[impl] = True
    return kwargs


def constructible(info: OptimizerInfo, kwargs: dict[str, Any]) -> bool:
    """Whether plain PyTorch accepts the configuration on the CPU (fused and foreach
    variants that an optimizer refuses there are not configurations to replay)."""
    try:
        info.optim_cls(build(info).parameters(), **copy.deepcopy(kwargs))
    except (ValueError, RuntimeError, TypeError):
        return False
    return True


def _configs() -> list[Any]:
    out = []
    for info in DENSE:
        impls = ["default"]
        impls += ["foreach"] if "foreach" in info.supported_impls else []
        impls += ["fused"] if "cpu" in info.supports_fused_on else []
        for index in range(len(info.optim_inputs_func(device="cpu"))):
            for impl in impls:
                if constructible(info, kwargs_of(info, index, impl)):
                    out.append(pytest.param(info, index, impl, id=f"{_name(info)}-{index}-{impl}"))
    return out


def closures(
    model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, bare: bool
):
    """A ``step(closure)`` closure: the bare optimizer's does its own backward pass."""

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = loss_of(model, x, y)
        if bare:
            loss.backward()
        return loss

    return closure


def bare_run(info: OptimizerInfo, kwargs: dict[str, Any], sparse: bool = False):
    """The bare optimizer's run: the model, the optimizer, and the first step whose loss
    (any closure evaluation, for LBFGS) is not finite (``None`` when all are finite), with
    the parameters and state dict from before that step."""
    ref = build(info, sparse)
    bare = info.optim_cls(ref.parameters(), **copy.deepcopy(kwargs))
    bad: tuple[int, list[torch.Tensor], dict[str, Any]] | None = None
    for t, (x, y) in enumerate(batches(sparse)):
        before = ([p.detach().clone() for p in ref.parameters()], copy.deepcopy(bare.state_dict()))
        values: list[torch.Tensor] = []
        if info.step_requires_closure:
            closure = closures(ref, bare, x, y, bare=True)

            def recorded(closure=closure, values=values) -> torch.Tensor:
                values.append(closure())
                return values[-1]

            bare.step(recorded)
        else:
            bare.zero_grad()
            values.append(loss_of(ref, x, y))
            values[-1].backward()
            bare.step()
        if bad is None and not all(bool(torch.isfinite(v)) for v in values):
            bad = (t, *before)
    return ref, bare, bad


def wrapped_run(
    info: OptimizerInfo, kwargs: dict[str, Any], sparse: bool = False, **options: Any
) -> tuple[nn.Module, MOWrapper]:
    """``STEPS`` steps of the wrapper with one loss: ``opt.step([loss])``, or
    ``opt.step(closure)`` for the optimizers that need a closure."""
    model = build(info, sparse)
    opt = MOWrapper(info.optim_cls(model.parameters(), **copy.deepcopy(kwargs)), **options)
    for x, y in batches(sparse):
        if info.step_requires_closure:
            opt.step(closures(model, opt, x, y, bare=False))
        else:
            opt.zero_grad()
            opt.step([loss_of(model, x, y)])
    return model, opt


def _equal_nan(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal values, NaN where the other is NaN (a diverged run is still the same run)."""
    if torch.equal(a, b):
        return True
    return a.is_floating_point() and bool(((a == b) | (a.isnan() & b.isnan())).all())


def assert_equal(a: Any, b: Any, what: str) -> None:
    """Nested dicts/lists of tensors and plain values, bit for bit."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{what}: {a.keys()} != {b}"
        for key in a:
            assert_equal(a[key], b[key], f"{what}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{what}: {a} != {b}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_equal(x, y, f"{what}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), f"{what}: {a} != {b}"
        if a.is_sparse:
            a, b = a.to_dense(), b.to_dense()
        if not (a.dtype == b.dtype and a.shape == b.shape and _equal_nan(a, b)):
            diff = (a.double() - b.double()).abs().max().item() if a.shape == b.shape else "shape"
            raise AssertionError(f"{what}: not bit-identical (max |difference| {diff})")
    else:
        both_nan = isinstance(a, float) and isinstance(b, float) and a != a and b != b
        assert a == b or both_nan, f"{what}: {a!r} != {b!r}"


def assert_indistinguishable(
    model: nn.Module, opt: MOWrapper, ref: nn.Module, bare: torch.optim.Optimizer
) -> None:
    for i, (p, q) in enumerate(zip(model.parameters(), ref.parameters())):
        assert_equal(p.detach(), q.detach(), f"parameter {i}")
    sd, bare_sd = opt.state_dict(), bare.state_dict()
    assert "mograd" in sd
    sd.pop("mograd")
    assert_equal(sd, bare_sd, "state_dict")


@pytest.mark.parametrize(("info", "index", "impl"), _configs())
def test_one_loss_replays_optim_db_bit_for_bit(info: OptimizerInfo, index: int, impl: str) -> None:
    """k = 1 through the wrapper == the bare optimizer, for one optim_db configuration.

    Where the bare optimizer's loss turns non-finite (LBFGS maximizing a square), the
    wrapper with ``nonfinite="ignore"`` is still the bare optimizer bit for bit, and with
    the default ``nonfinite="raise"`` the step raises ``NonFiniteError`` and leaves the
    parameters and the optimizer state as they were before that step (item 13 of
    issue 17)."""
    kwargs = kwargs_of(info, index, impl)
    ref, bare, bad = bare_run(info, kwargs)
    if bad is None:
        assert_indistinguishable(*wrapped_run(info, kwargs), ref, bare)
        return
    assert_indistinguishable(*wrapped_run(info, kwargs, nonfinite="ignore"), ref, bare)
    t, params, state = bad
    model = build(info)
    opt = MOWrapper(info.optim_cls(model.parameters(), **copy.deepcopy(kwargs)))
    for step, (x, y) in enumerate(batches()):
        if step == t:
            with pytest.raises(NonFiniteError):
                opt.step(closures(model, opt, x, y, bare=False))
            break
        opt.step(closures(model, opt, x, y, bare=False))
    for i, (p, q) in enumerate(zip(model.parameters(), params)):
        assert_equal(p.detach(), q, f"parameter {i} after NonFiniteError")
    sd = opt.state_dict()
    sd.pop("mograd")
    assert_equal(sd, state, "state_dict after NonFiniteError")


SPARSE = [info for info in DENSE if info.supports_sparse]


@pytest.mark.filterwarnings("ignore:Sparse invariant checks:UserWarning")  # Adagrad's own
@pytest.mark.parametrize("info", SPARSE, ids=_name)
def test_one_loss_sparse_gradients_replay_bit_for_bit(info: OptimizerInfo) -> None:
    """The optimizers that take sparse gradients, on ``nn.Embedding(sparse=True)`` with
    optim_db's sparse configuration: k = 1 keeps ``loss.backward()``'s sparse gradient,
    so parameters and state equal the bare optimizer's bit for bit."""
    kwargs = dict(info.metadata_for_sparse[0])
    ref, bare, bad = bare_run(info, kwargs, sparse=True)
    assert bad is None
    model, opt = wrapped_run(info, kwargs, sparse=True)
    assert model[0].weight.grad.is_sparse
    assert_indistinguishable(model, opt, ref, bare)


@pytest.mark.parametrize("info", SPARSE_ONLY, ids=_name)
def test_sparse_only_optimizers_are_rejected_when_wrapping(info: OptimizerInfo) -> None:
    """SparseAdam needs sparse gradients, which mograd cannot give for k >= 2: wrapping it
    raises ``ValueError`` naming it, for every optim_db configuration, and leaves the
    optimizer usable on its own."""
    for inp in info.optim_inputs_func(device="cpu"):
        model = build(info, sparse=True)
        inner = info.optim_cls(model[0].parameters(), **copy.deepcopy(inp.kwargs))
        with pytest.raises(ValueError, match=_name(info)):
            MOWrapper(inner)
        model[0](torch.tensor([1, 2, 2])).sum().backward()
        before = model[0].weight.detach().clone()
        inner.step()
        assert not torch.equal(model[0].weight.detach(), before)


@pytest.mark.parametrize("info", DENSE, ids=_name)
def test_global_step_hooks_fire_once_per_step(info: OptimizerInfo) -> None:
    """Item 10 of issue 17, for every optimizer: global pre/post step hooks and the
    wrapper's own hooks run once per step in PyTorch's order ``[0, 1, 2, 5]``."""
    model = build(info)
    opt = MOWrapper(info.optim_cls(model.parameters()))
    order: list[int] = []
    opt.register_step_pre_hook(lambda o, a, k: order.append(1))
    opt.register_step_post_hook(lambda o, a, k: order.append(2))
    pre = register_optimizer_step_pre_hook(lambda o, a, k: order.append(0))
    post = register_optimizer_step_post_hook(lambda o, a, k: order.append(5))
    try:
        x, y = batches()[0]
        if info.step_requires_closure:

            def closure() -> torch.Tensor:
                opt.zero_grad()
                return loss_of(model, x, y)

            opt.step(closure)
        else:
            opt.step([loss_of(model, x, y)])
    finally:
        pre.remove()
        post.remove()
    assert order == [0, 1, 2, 5]

"""The conformance matrix: every condition on every path (``path`` fixture, tests/paths.py).

``MATRIX`` below says, for each (path, condition), what the step must give:

* ``"same as hand-written"``: the rows path against an exact step written by hand (per-loss
  gradients by ``autograd.grad``, ``G = J J^T`` in float64, ``combine``, ``c @ J``, the inner
  step); the features path against a representation step written by hand (``G`` from the
  gradients dL_i/dz, ``combine``, one backward pass of ``sum_i c_i L_i``);
* ``"same as rows"``: the rows path under the same condition, on the same model and batch;
* ``"same as plain torch"``: ``loss.backward(); inner.step()`` (k = 1), bit for bit
  (``torch.equal`` on parameters, ``.grad`` and the optimizer state);
* ``"raises <Error>"``: that error, and parameters, ``.grad``, optimizer state and
  ``opt.steps`` unchanged;
* ``"skipped"``: ``StepInfo.skipped`` and everything unchanged (``nonfinite="skip"``).

Conditions: ``float64`` (the plain case), ``grad_scaler`` (``torch.amp.GradScaler("cpu")``,
``opt.backward(losses, grad_scaler=s); s.step(opt); s.update()``), ``overflow`` (float32,
finite gradients near 1e20 whose float32 Gram matrix overflows), ``unreached`` (a parameter
of the optimizer that no loss reaches), ``nonfinite_raise`` / ``nonfinite_skip`` (a NaN
input sample), ``bfloat16`` parameters, ``closure`` (``opt.step(closure)``) and ``sparse``
(``nn.Embedding(sparse=True)``; k >= 2 densifies ``.grad`` for Adam, k = 1 keeps
``loss.backward()``'s sparse gradient, with SGD).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch import nn

from mograd import MOWrapper, NonFiniteError
from mograd.weightings import MinNorm, combine
from tests.paths import Forward, StepPath, single_loss

CONDITIONS = (
    "float64",
    "grad_scaler",
    "overflow",
    "unreached",
    "nonfinite_raise",
    "nonfinite_skip",
    "bfloat16",
    "closure",
    "sparse",
)

_EXPECT = {
    "rows": "same as hand-written",
    "gramian": "same as rows",
    "features": "same as hand-written",
    "single": "same as plain torch",
    "accumulate": "same as rows",
}
_SPECIAL = {
    ("features", "closure"): "raises ValueError",  # features= cannot be combined with a closure
    ("accumulate", "closure"): "raises RuntimeError",  # micro-batches pending, closure step
}

MATRIX: dict[tuple[str, str], str] = {
    (path, cond): _SPECIAL.get(
        (path, cond),
        "raises NonFiniteError"
        if cond == "nonfinite_raise"
        else "skipped"
        if cond == "nonfinite_skip"
        else expect,
    )
    for path, expect in _EXPECT.items()
    for cond in CONDITIONS
}
"""(path, condition) -> expectation; docs/api.md renders it as a table."""

# Other combinations of two paths, each a documented up-front error:
CROSS = {("accumulate", "gramian"): "raises ValueError"}

STEPS = 2
BATCH = 8
OVERFLOW = 1e20


# ---------------------------------------------------------------------- the model
class Net(nn.Module):
    """A 2-layer MLP; ``z`` is the shared representation. Optionally an embedding in front
    (``sparse``) and a layer that the forward pass never uses (``unused``)."""

    def __init__(self, *, sparse: bool = False, unused: bool = False) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 5, sparse=True) if sparse else None
        self.body = nn.Sequential(nn.Linear(5, 8), nn.Tanh())
        self.head = nn.Linear(8, 2)
        self.unused = nn.Linear(8, 2) if unused else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.embed(x).mean(1) if self.embed is not None else x
        z = self.body(h)
        return z, self.head(z)


def two_losses(out: torch.Tensor) -> list[torch.Tensor]:
    return [(out[:, 0] - 1).pow(2).mean(), (out[:, 1] + 1).pow(2).mean() + 0.1 * out[:, 0].mean()]


@dataclass
class Case:
    """What a condition changes: the model, the batches, the inner optimizer, tolerances."""

    cond: str
    k: int
    model: nn.Module
    batches: list[torch.Tensor]
    inner: Callable[[list[nn.Parameter]], torch.optim.Optimizer]
    scale: float = 1.0
    rtol: float = 1e-12
    atol: float = 1e-12
    options: dict[str, Any] = field(default_factory=dict)

    def forward(self, model: nn.Module) -> Forward:
        def fwd(x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
            z, out = model(x)
            return z, [loss * self.scale for loss in two_losses(out)]

        return fwd


def make_case(cond: str, k: int) -> Case:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    dtype = {"overflow": torch.float32, "bfloat16": torch.bfloat16}.get(cond, torch.float64)
    model = Net(sparse=cond == "sparse", unused=cond == "unreached").to(dtype)
    if cond == "sparse":
        batches = [torch.randint(0, 10, (BATCH, 3), generator=gen) for _ in range(STEPS)]
    else:
        batches = [torch.randn(BATCH, 5, generator=gen).to(dtype) for _ in range(STEPS)]
    case = Case(cond, k, model, batches, lambda ps: torch.optim.Adam(ps, lr=1e-2))
    if cond.startswith("nonfinite"):
        bad = batches[-1].clone()
        bad[0, 0] = float("nan")  # one bad sample: every loss is NaN
        case.batches[-1] = bad
        case.options = {"nonfinite": cond.removeprefix("nonfinite_")}
    elif cond == "overflow":
        case.scale, case.rtol, case.atol = OVERFLOW, 1e-5, 1e-6
        case.inner = lambda ps: torch.optim.SGD(ps, lr=0.1 / OVERFLOW)
    elif cond == "bfloat16":
        case.rtol = case.atol = 2e-2
        case.inner = lambda ps: torch.optim.SGD(ps, lr=0.1)
    elif cond == "sparse" and k == 1:
        case.inner = lambda ps: torch.optim.SGD(ps, lr=0.1)  # plain Adam rejects sparse grads
    return case


# ---------------------------------------------------------------------- outcomes
@dataclass
class Outcome:
    params: list[torch.Tensor]
    grads: list[torch.Tensor | None]
    state: dict[Any, Any]
    infos: list[dict[str, torch.Tensor]] = field(default_factory=list)
    returned: list[torch.Tensor] = field(default_factory=list)


def snapshot(model: nn.Module, inner: torch.optim.Optimizer, infos=(), returned=()) -> Outcome:
    grads = [None if p.grad is None else p.grad.detach().clone() for p in model.parameters()]
    return Outcome(
        [p.detach().clone() for p in model.parameters()],
        grads,
        copy.deepcopy(inner.state_dict()["state"]),
        list(infos),
        [r.detach().clone() for r in returned],
    )


def info_of(info) -> dict[str, torch.Tensor]:
    return {
        "weights": info.weights.detach().double(),
        "coefficients": info.coefficients.detach().double(),
        "grad_norms": info.grad_norms.detach().double(),
        "losses": info.losses.detach().double(),
    }


def _difference(a: torch.Tensor, b: torch.Tensor) -> str:
    if a.dtype != b.dtype or a.shape != b.shape:
        return f"{a.dtype} {tuple(a.shape)} vs {b.dtype} {tuple(b.shape)}"
    return f"max |difference| {(a.double() - b.double()).abs().max().item():.3g}"


def assert_same(a: Any, b: Any, *, exact: bool, rtol: float, atol: float, what: str) -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{what}: keys {a.keys()} != {b}"
        for key in a:
            assert_same(a[key], b[key], exact=exact, rtol=rtol, atol=atol, what=f"{what}[{key}]")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{what}: {a} != {b}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, exact=exact, rtol=rtol, atol=atol, what=f"{what}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), f"{what}: {a} != {b}"
        assert a.layout == b.layout, f"{what}: layout {a.layout} != {b.layout}"
        if a.is_sparse:
            assert a.is_coalesced() == b.is_coalesced(), f"{what}: coalesced differs"
            a, b = (a._indices(), a._values()), (b._indices(), b._values())
            assert_same(a, b, exact=exact, rtol=rtol, atol=atol, what=what)
        elif exact:
            same = a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
            assert same, f"{what}: not bit-identical ({_difference(a, b)})"
        else:
            torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")
    else:
        assert a == b, f"{what}: {a} != {b}"


def assert_outcome(got: Outcome, ref: Outcome, case: Case, exact: bool = False) -> None:
    kw = {"exact": exact, "rtol": case.rtol, "atol": case.atol}
    assert_same(got.params, ref.params, what="parameters", **kw)
    assert_same(got.grads, ref.grads, what=".grad", **kw)
    assert_same(got.state, ref.state, what="optimizer state", **kw)
    if got.infos and ref.infos:
        assert_same(got.infos, ref.infos, what="StepInfo", **kw)
    assert_same(got.returned, ref.returned, what="closure result", **kw)


# ---------------------------------------------------------------------- runners
def run_mograd(path: StepPath, case: Case) -> Outcome:
    """``STEPS`` steps of mograd on ``path`` under the case's condition."""
    model = copy.deepcopy(case.model)
    inner = case.inner(list(model.parameters()))
    opt = path.wrap(model, inner, **case.options)
    fwd = case.forward(model)
    infos, returned = [], []
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0) if case.cond == "grad_scaler" else None
    for x in case.batches:
        opt.zero_grad()
        if case.cond == "closure":
            returned.append(opt.step(path.closure(opt, fwd, x)))
            info = opt.last_info
        elif scaler is not None:
            info = path.backward(opt, fwd, x, grad_scaler=scaler)
            scaler.step(opt)
            scaler.update()
        else:
            info = path.backward(opt, fwd, x)
            opt.step()
        if path.k > 1:
            infos.append(info_of(info))
    return snapshot(model, inner, infos, returned)


def hand_exact(case: Case) -> Outcome:
    """The exact step by hand: J by autograd.grad, G in float64, combine, c @ J, the step."""
    model = copy.deepcopy(case.model)
    params = list(model.parameters())
    inner = case.inner(params)
    fwd = case.forward(model)
    infos, returned = [], []
    for x in case.batches:
        inner.zero_grad()
        _, losses = fwd(x)
        rows, reached = [], [False] * len(params)
        for loss in losses:
            gs = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
            row = []
            for j, (p, g) in enumerate(zip(params, gs)):
                reached[j] = reached[j] or g is not None
                flat = torch.zeros(p.numel()) if g is None else g.to_dense().reshape(-1)
                row.append(flat.double())
            rows.append(torch.cat(row))
        jac = torch.stack(rows)
        gram = jac @ jac.T
        values = torch.stack([loss.detach() for loss in losses]).double()
        comb = combine(gram, values, MinNorm(), power=2.0, mu=0.2)
        update = comb.coefficients @ jac
        offset = 0
        for p, hit in zip(params, reached):
            if hit:
                p.grad = update[offset : offset + p.numel()].view_as(p).to(p.dtype).clone()
            offset += p.numel()
        inner.step()
        infos.append(_info(comb, values, gram))
        returned.append((comb.coefficients * values).sum())
    return snapshot(model, inner, infos, returned if case.cond == "closure" else [])


def hand_features(case: Case) -> Outcome:
    """The representation step by hand: G from dL_i/dz (float64), combine, one backward
    pass of ``sum_i c_i L_i``, ``.grad`` densified for the inner step."""
    model = copy.deepcopy(case.model)
    inner = case.inner(list(model.parameters()))
    fwd = case.forward(model)
    infos = []
    for x in case.batches:
        inner.zero_grad()
        z, losses = fwd(x)
        rows = [torch.autograd.grad(loss, z, retain_graph=True)[0].reshape(-1) for loss in losses]
        jac = torch.stack(rows).double()
        gram = jac @ jac.T
        values = torch.stack([loss.detach() for loss in losses]).double()
        comb = combine(gram, values, MinNorm(), power=2.0, mu=0.2)
        total = (comb.coefficients.to(losses[0].dtype) * torch.stack(losses)).sum()
        total.backward()
        for p in model.parameters():
            if p.grad is not None and p.grad.is_sparse:
                p.grad = p.grad.to_dense()
        inner.step()
        infos.append(_info(comb, values, gram))
    return snapshot(model, inner, infos)


def _info(comb, values: torch.Tensor, gram: torch.Tensor) -> dict[str, torch.Tensor]:
    return {
        "weights": comb.weights,
        "coefficients": comb.coefficients,
        "grad_norms": gram.diagonal().sqrt(),
        "losses": values,
    }


def plain_torch(case: Case) -> Outcome:
    """k = 1 in plain PyTorch: ``loss.backward(); inner.step()`` (or a closure step)."""
    model = copy.deepcopy(case.model)
    inner = case.inner(list(model.parameters()))
    fwd = case.forward(model)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0) if case.cond == "grad_scaler" else None
    returned = []
    for x in case.batches:
        inner.zero_grad()
        if case.cond == "closure":

            def closure(x: torch.Tensor = x) -> torch.Tensor:
                inner.zero_grad()
                loss = single_loss(fwd(x)[1])
                loss.backward()
                return loss

            returned.append(inner.step(closure))
            continue
        loss = single_loss(fwd(x)[1])
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(inner)
            scaler.update()
        else:
            loss.backward()
            inner.step()
    return snapshot(model, inner, returned=returned)


# ---------------------------------------------------------------------- the cells
def check_rejected(path: StepPath, case: Case, error: type[Exception], match: str) -> None:
    """One good step, then the condition's step raises ``error`` and changes nothing."""
    model = copy.deepcopy(case.model)
    inner = case.inner(list(model.parameters()))
    opt = path.wrap(model, inner, **case.options)
    fwd = case.forward(model)
    opt.zero_grad()
    path.backward(opt, fwd, case.batches[0])
    opt.step()
    opt.zero_grad()
    before = snapshot(model, inner)
    with pytest.raises(error, match=match):
        if case.cond == "closure":
            if path.name == "accumulate":
                opt.accumulate(fwd(case.batches[-1])[1])
                opt.step(path.closure(opt, fwd, case.batches[-1]))
            else:
                z, _ = fwd(case.batches[-1])
                opt.step(path.closure(opt, fwd, case.batches[-1]), features=z)
        else:
            path.backward(opt, fwd, case.batches[-1])
            opt.step()
    assert_outcome(snapshot(model, inner), before, case, exact=True)
    assert opt.steps == 1


def check_skipped(path: StepPath, case: Case) -> None:
    model = copy.deepcopy(case.model)
    inner = case.inner(list(model.parameters()))
    opt = path.wrap(model, inner, **case.options)
    fwd = case.forward(model)
    opt.zero_grad()
    path.backward(opt, fwd, case.batches[0])
    opt.step()
    opt.zero_grad()
    before = snapshot(model, inner)
    info = path.backward(opt, fwd, case.batches[-1])
    opt.step()
    assert info.skipped
    assert_outcome(snapshot(model, inner), before, case, exact=True)
    assert opt.steps == 1


@pytest.mark.parametrize("cond", CONDITIONS)
def test_conformance_cell(path: StepPath, cond: str) -> None:
    """One cell of ``MATRIX``: the path under the condition gives what the table says."""
    expect = MATRIX[(path.name, cond)]
    case = make_case(cond, path.k)
    if expect.startswith("raises"):
        error = {"NonFiniteError": NonFiniteError, "ValueError": ValueError}.get(
            expect.split()[1], RuntimeError
        )
        match = {"closure": "closure|accumulate"}.get(cond, "non-finite")
        check_rejected(path, case, error, match)
        return
    if expect == "skipped":
        check_skipped(path, case)
        return
    got = run_mograd(path, case)
    if expect == "same as plain torch":
        assert_outcome(got, plain_torch(case), case, exact=True)
        return
    if expect == "same as rows":
        ref = run_mograd(StepPath("rows"), case)
    elif path.name == "features":
        ref = hand_features(case)
    else:
        ref = hand_exact(case)
    assert_outcome(got, ref, case)
    if case.cond == "float64":
        # the weights are mixed (not a vertex of the simplex), so the comparison can fail
        assert all(0.01 < float(i["weights"].max()) < 0.99 for i in got.infos)


def test_matrix_is_complete() -> None:
    """Every (path, condition) has exactly one expectation, in the vocabulary above."""
    names = {"rows", "gramian", "features", "single", "accumulate"}
    assert set(MATRIX) == {(p, c) for p in names for c in CONDITIONS}
    allowed = {"same as hand-written", "same as rows", "same as plain torch", "skipped"}
    assert all(v in allowed or v.startswith("raises ") for v in MATRIX.values())


def test_accumulate_with_gramian_raises_before_anything_changes() -> None:
    """``CROSS[("accumulate", "gramian")]``: the Gram matrix of summed micro-batch
    gradients cannot be formed from per-micro-batch Gram matrices; rejected up front."""
    assert CROSS[("accumulate", "gramian")] == "raises ValueError"
    case = make_case("float64", 2)
    model = case.model
    inner = case.inner(list(model.parameters()))
    opt = MOWrapper(inner, jacobian="gramian", modules=model)
    before = snapshot(model, inner)
    with pytest.raises(ValueError, match="accumulate"):
        opt.accumulate(case.forward(model)(case.batches[0])[1])
    assert_outcome(snapshot(model, inner), before, case, exact=True)
    # nothing is pending: a normal step works afterwards
    opt.step(case.forward(model)(case.batches[0])[1])
    assert opt.steps == 1

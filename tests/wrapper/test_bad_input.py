"""Bad input: a clear exception naming the problem, and nothing modified."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from torch import nn

from mograd import MOWrapper, NonFiniteError


def setup(nonfinite: str = "raise") -> tuple[nn.Module, MOWrapper, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    opt = MOWrapper(torch.optim.Adam(model.parameters(), lr=1e-2), nonfinite=nonfinite)
    x = torch.randn(10, 4)
    # one good step first, so that there is optimizer state to protect
    out = model(x)
    opt.step([out[:, 0].pow(2).mean(), out[:, 1].abs().mean()])
    opt.zero_grad()
    return model, opt, x


def snapshot(model: nn.Module, opt: MOWrapper) -> tuple:
    return (
        copy.deepcopy(model.state_dict()),
        copy.deepcopy(opt.state_dict()),
        [None if p.grad is None else p.grad.clone() for p in model.parameters()],
    )


def assert_untouched(model: nn.Module, opt: MOWrapper, snap: tuple) -> None:
    params, state, grads = snap
    for k, v in model.state_dict().items():
        assert torch.equal(v, params[k]), k
    now = opt.state_dict()
    assert now["mograd"] == state["mograd"]
    for pid, st in state["state"].items():
        for key, val in st.items():
            assert torch.equal(now["state"][pid][key], val)
    for p, g in zip(model.parameters(), grads):
        assert (p.grad is None and g is None) or torch.equal(p.grad, g)


def nan_loss(model, x):
    out = model(x)
    return [out[:, 0].pow(2).mean() * float("nan"), out[:, 1].mean()]


def inf_grad(model, x):
    out = model(x)
    # finite value, infinite gradient: sqrt'(0) = inf
    return [out[:, 0].pow(2).mean(), (out[:, 1] * 0).abs().sqrt().mean()]


def nan_with_k1(model, x):
    return [model(x).sum() * float("inf")]


BAD_LOSSES: list[tuple[str, Callable, type[Exception], str]] = [
    ("empty list", lambda m, x: [], ValueError, "empty"),
    ("single tensor", lambda m, x: m(x).mean(), TypeError, "single tensor"),
    ("non-scalar", lambda m, x: [m(x)[:, 0], m(x).mean()], ValueError, r"losses\[0\] must be a scalar"),
    ("no grad", lambda m, x: [m(x).mean(), torch.tensor(1.0)], ValueError, r"losses\[1\] does not require grad"),
    (
        "reaches no parameter",
        lambda m, x: [m(x).mean(), torch.ones((), requires_grad=True) * 2],
        ValueError,
        r"losses\[1\] does not depend on any parameter",
    ),
    ("not a tensor", lambda m, x: [m(x).mean(), 1.0], TypeError, r"losses\[1\] is a float"),
    (
        "different devices",
        lambda m, x: [m(x).mean(), m(x).mean().to("meta")],
        ValueError,
        "different devices",
    ),
    ("nan loss", nan_loss, NonFiniteError, r"losses\[0\] = nan"),
    ("inf gradient", inf_grad, NonFiniteError, r"non-finite gradient of losses\[1\]"),
    ("k=1 inf loss", nan_with_k1, NonFiniteError, r"losses\[0\]"),
]


@pytest.mark.parametrize(("name", "make_losses", "exc", "match"), BAD_LOSSES, ids=[b[0] for b in BAD_LOSSES])
def test_bad_losses_raise_and_touch_nothing(name, make_losses, exc, match) -> None:
    model, opt, x = setup()
    snap = snapshot(model, opt)
    with pytest.raises(exc, match=match):
        opt.step(make_losses(model, x))
    assert_untouched(model, opt, snap)
    with pytest.raises(exc, match=match):
        opt.backward(make_losses(model, x))
    assert_untouched(model, opt, snap)


@pytest.mark.parametrize("make_losses", [nan_loss, inf_grad, nan_with_k1])
def test_skip_policy_leaves_everything_untouched(make_losses) -> None:
    model, opt, x = setup("skip")
    snap = snapshot(model, opt)
    info = opt.step(make_losses(model, x))
    assert info.skipped
    # only the wrapper's skip counter moved
    expected_own = {**snap[1]["mograd"], "skipped": 1}
    assert_untouched(model, opt, (snap[0], {**snap[1], "mograd": expected_own}, snap[2]))
    # backward + plain step(): the step is skipped too
    info = opt.backward(make_losses(model, x))
    assert info.skipped
    opt.step()
    assert opt.state_dict()["mograd"]["skipped"] == 2
    for k, v in model.state_dict().items():
        assert torch.equal(v, snap[0][k])
    # and the next good step goes through
    out = model(x)
    info = opt.step([out[:, 0].pow(2).mean(), out[:, 1].abs().mean()])
    assert not info.skipped
    assert any(not torch.equal(v, snap[0][k]) for k, v in model.state_dict().items())


def test_ignore_policy_lets_nan_through() -> None:
    model, opt, x = setup("ignore")
    opt.step(nan_loss(model, x))
    assert any(torch.isnan(p).any() for p in model.parameters())


def test_fixed_weights_of_wrong_length() -> None:
    model = nn.Linear(3, 2)
    opt = MOWrapper(torch.optim.SGD(model.parameters(), lr=0.1), weights=(0.5, 0.5))
    snap = copy.deepcopy(model.state_dict())
    out = model(torch.randn(4, 3))
    with pytest.raises(ValueError, match="weights has 2 entries but 3 losses"):
        opt.step([out[:, 0].mean(), out[:, 1].mean(), out.pow(2).mean()])
    assert all(torch.equal(v, snap[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def adam() -> torch.optim.Optimizer:
    return torch.optim.Adam(nn.Linear(2, 2).parameters())


BAD_OPTIONS: list[tuple[str, Callable[[], object], type[Exception], str]] = [
    ("not an optimizer", lambda: MOWrapper(nn.Linear(2, 2)), TypeError, "torch.optim.Optimizer, got Linear"),
    ("a parameter list", lambda: MOWrapper(list(nn.Linear(2, 2).parameters())), TypeError, "got list"),
    ("wrapped twice", lambda: MOWrapper(MOWrapper(adam())), TypeError, "already"),
    ("power 0", lambda: MOWrapper(adam(), power=0.0), ValueError, "power must be a finite number > 0, got 0.0"),
    ("power negative", lambda: MOWrapper(adam(), power=-1), ValueError, "power .* got -1"),
    ("power nan", lambda: MOWrapper(adam(), power=float("nan")), ValueError, "power .* got nan"),
    ("power string", lambda: MOWrapper(adam(), power="2"), ValueError, "power must be a real number, got '2'"),
    ("mu 0", lambda: MOWrapper(adam(), mu=0.0), ValueError, "mu must be a finite number > 0, got 0.0"),
    ("mu inf", lambda: MOWrapper(adam(), mu=float("inf")), ValueError, "mu .* got inf"),
    ("weights negative", lambda: MOWrapper(adam(), weights=(0.5, -0.1)), ValueError, r"weights\[1\] must be finite and >= 0, got -0.1"),
    ("weights zero", lambda: MOWrapper(adam(), weights=(0.0, 0.0)), ValueError, "must not all be zero"),
    ("weights empty", lambda: MOWrapper(adam(), weights=()), ValueError, "empty"),
    ("weights nan", lambda: MOWrapper(adam(), weights=(float("nan"), 1.0)), ValueError, r"weights\[0\]"),
    ("weights name", lambda: MOWrapper(adam(), weights="frank_wolfe"), ValueError, "got .frank_wolfe."),
    ("nonfinite", lambda: MOWrapper(adam(), nonfinite="warn"), ValueError, "nonfinite must be one of .* got 'warn'"),
    ("max_iter", lambda: MOWrapper(adam(), max_iter=0), ValueError, "max_iter must be an int >= 1, got 0"),
    ("tol", lambda: MOWrapper(adam(), tol=-1e-3), ValueError, "tol must be .* got -0.001"),
    ("shared foreign", lambda: MOWrapper(adam(), shared_params=[nn.Parameter(torch.ones(3))]), ValueError, r"shared_params\[0\] \(shape \(3,\)\) is not held"),
    ("shared empty", lambda: MOWrapper(adam(), shared_params=[]), ValueError, "shared_params is empty"),
    ("normalize", lambda: MOWrapper(adam(), normalize="L2"), ValueError, "normalize must be one of .* got 'L2'"),
    ("normalized_update", lambda: MOWrapper(adam(), normalized_update="yes"), ValueError, "normalized_update must be a bool, got 'yes'"),
    ("l2 on a loss-level weighting", lambda: MOWrapper(adam(), weights="famo", normalize="l2"), ValueError, "normalize='l2' needs the gradient norms, but 'famo' is a loss-level"),
    ("loss+ on a loss-level weighting", lambda: MOWrapper(adam(), weights="uw", normalize="loss+"), ValueError, "normalize='loss\\+' needs the gradient norms, but 'uw' is a loss-level"),
    ("weights object", lambda: MOWrapper(adam(), weights=3), ValueError, "weights must be one of .* got 3"),
    ("SparseAdam", lambda: MOWrapper(torch.optim.SparseAdam(nn.Embedding(3, 2, sparse=True).parameters())), ValueError, "SparseAdam needs sparse gradients"),
]


@pytest.mark.parametrize(("name", "build", "exc", "match"), BAD_OPTIONS, ids=[b[0] for b in BAD_OPTIONS])
def test_bad_options(name, build, exc, match) -> None:
    with pytest.raises(exc, match=match):
        build()


def _two(model, x):
    out = model(x)
    return [out[:, 0].pow(2).mean(), out[:, 1].abs().mean()]


BAD_CALLS: list[tuple[str, Callable, type[Exception], str]] = [
    ("backward with nothing accumulated", lambda m, o, x: o.backward(), ValueError, "nothing was gathered with accumulate"),
    ("losses and closure", lambda m, o, x: o.step(_two(m, x), closure=lambda: _two(m, x)), ValueError, "either losses or closure"),
    ("closure with features", lambda m, o, x: o.step(lambda: _two(m, x), features=m[0](x)), ValueError, "features= cannot be combined with a closure"),
    ("features without losses", lambda m, o, x: o.step(features=m[0](x)), ValueError, "features= needs losses"),
    ("accumulate then backward(losses)", lambda m, o, x: (o.accumulate(_two(m, x)), o.backward(_two(m, x))), RuntimeError, "accumulate.. are pending"),
    ("accumulate k changes", lambda m, o, x: (o.accumulate(_two(m, x)), o.accumulate(_two(m, x)[:1])), ValueError, "got 1 losses, earlier micro-batches 2"),
    ("accumulate a single tensor", lambda m, o, x: o.accumulate(m(x).mean()), TypeError, "single tensor"),
]


@pytest.mark.parametrize(("name", "call", "exc", "match"), BAD_CALLS, ids=[b[0] for b in BAD_CALLS])
def test_bad_calls_raise_and_touch_nothing(name, call, exc, match) -> None:
    model, opt, x = setup()
    snap = snapshot(model, opt)
    with pytest.raises(exc, match=match):
        call(model, opt, x)
    assert_untouched(model, opt, snap)

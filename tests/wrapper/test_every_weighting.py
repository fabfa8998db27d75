"""Every registered weighting, by name, through ``MOWrapper`` on every path that allows it.

The exact paths (rows, ``jacobian="gramian"``, accumulation of two half batches) must give
the same parameters (float64, 1e-10): they form the same Gram matrix of the same full-batch
gradients. Representation mode runs every Gram weighting on the features' Gram matrix; a
loss-level weighting (``needs_gram`` false) forms no Gram matrix at all, so on every path it
takes the same one-backward step.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mograd
from mograd import MOWrapper
from mograd.weightings import WEIGHTINGS, Weighting, from_name

K = 4
PATHS = ("rows", "gramian", "accumulate", "features")


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(5, 8), nn.Tanh())
        self.heads = nn.Linear(8, K)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        z = self.trunk(x)
        out = self.heads(z)
        scales = torch.tensor([1.0, 3.0, 0.5, 10.0], dtype=x.dtype)
        losses = [((out[:, i] - i) ** 2).mean() * scales[i] for i in range(K)]
        return z, losses


def train(name: str, path: str, steps: int = 3) -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = Net().double()
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randn(16, 5, generator=gen, dtype=torch.float64) for _ in range(steps)]
    extra = {"jacobian": "gramian", "modules": model} if path == "gramian" else {}
    opt = MOWrapper(torch.optim.SGD(model.parameters(), lr=0.05), weights=name, **extra)
    for x in batches:
        opt.zero_grad()
        if path == "accumulate":
            for half in x.chunk(2):
                opt.accumulate([loss / 2 for loss in model(half)[1]])
            info = opt.step()
        elif path == "features":
            z, losses = model(x)
            info = opt.step(losses, features=z)
        else:
            info = opt.step(model(x)[1])
        assert torch.isfinite(info.coefficients).all(), (name, path, info)
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("name", sorted(WEIGHTINGS))
def test_every_weighting_takes_the_same_exact_step_on_every_exact_path(name: str) -> None:
    start = [p.detach().clone() for p in (torch.manual_seed(0), Net().double())[1].parameters()]
    rows = train(name, "rows")
    assert any(not torch.equal(a, b) for a, b in zip(rows, start)), f"{name} did not move"
    for path in ("gramian", "accumulate"):
        for a, b in zip(rows, train(name, path)):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=f"{name} on {path}")


@pytest.mark.parametrize("name", sorted(WEIGHTINGS))
def test_every_weighting_runs_in_representation_mode(name: str) -> None:
    params = train(name, "features")
    assert all(torch.isfinite(p).all() for p in params)
    if not from_name(name).needs_gram:  # no Gram matrix: the same step as the exact paths
        for a, b in zip(params, train(name, "rows")):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


STATEFUL = sorted(
    n for n in WEIGHTINGS if type(from_name(n)).state_dict is not Weighting.state_dict
)


def _trajectory(name: str, path: str, policy: str | None) -> tuple[list[torch.Tensor], dict]:
    """Three steps; with ``policy``, a step whose heads' gradient is NaN (losses, G and the
    weights finite: the heads are not shared) is inserted after the first and rejected."""
    torch.manual_seed(0)
    model = Net().double()
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randn(16, 5, generator=gen, dtype=torch.float64) for _ in range(3)]
    shared = list(model.trunk.parameters())
    extra = {"jacobian": "gramian", "modules": model} if path == "gramian" else {}
    opt = MOWrapper(
        torch.optim.SGD(model.parameters(), lr=0.05),
        shared_params=shared,
        weights=name,
        nonfinite=policy or "raise",
        **extra,
    )

    def step(x: torch.Tensor) -> mograd.StepInfo:
        if path == "accumulate":
            for half in x.chunk(2):
                opt.accumulate([loss / 2 for loss in model(half)[1]])
            return opt.step()
        z, losses = model(x)
        return opt.step(losses, features=z) if path == "features" else opt.step(losses)

    plan = [(batches[0], False), *([(batches[1], True)] if policy else [])]
    plan += [(x, False) for x in batches[1:]]
    for x, bad in plan:
        opt.zero_grad()
        hook = None
        if bad:
            hook = model.heads.weight.register_hook(lambda g: torch.full_like(g, float("nan")))
        try:
            if bad and policy == "raise":
                with pytest.raises(mograd.NonFiniteError):
                    step(x)
            else:
                info = step(x)
                assert info.skipped == bad, (name, path, info)
                if bad:  # the weighting ran on finite values before the guard said no
                    assert torch.isfinite(info.coefficients).all(), (name, path, info)
        finally:
            if hook is not None:
                hook.remove()
    return [p.detach().clone() for p in model.parameters()], opt.weighting.state_dict()


# On the gramian path a Gram weighting's update is formed from the forward records, so no
# gradient hook can make it NaN while G stays finite: that path runs the loss-level ones
# (one backward pass), the Gram ones are checked on rows, accumulate and features (the
# restore itself is the pipeline's, the same code for every source).
REJECTED = [
    (name, path)
    for name in STATEFUL
    for path in PATHS
    if path != "gramian" or not from_name(name).needs_gram
]


@pytest.mark.parametrize("policy", ["raise", "skip"])
@pytest.mark.parametrize(("name", "path"), REJECTED)
def test_a_rejected_step_leaves_a_stateful_weighting_as_it_was(
    name: str, path: str, policy: str
) -> None:
    """A step the guard rejects after the weighting ran on finite inputs (a gradient outside
    G is NaN) restores the weighting's state: the run goes on exactly as one without it."""
    params, state = _trajectory(name, path, policy)
    ref_params, ref_state = _trajectory(name, path, None)
    for a, b in zip(params, ref_params):
        assert torch.equal(a, b), (name, path, policy)
    assert _same(state, ref_state), (name, path, policy)


def _same(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and bool(torch.equal(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(_same, a, b))
    return bool(a == b)

"""A full MOWrapper step with a built-in weighting against TorchJD's own backward pass."""

from __future__ import annotations

import copy

import pytest
import torch

from mograd import MOWrapper
from mograd.weightings import CAGrad, DualProj, NashMTL, PCGrad, Random, UPGrad

aggregation = pytest.importorskip("torchjd.aggregation")
autojac = pytest.importorskip("torchjd.autojac")
pytest.importorskip("qpsolvers")
pytest.importorskip("quadprog")
from torchjd.linalg import QuadprogProjector  # noqa: E402


def model_and_losses(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3)
    ).double()
    x = torch.randn(16, 4, dtype=torch.float64)
    y = torch.randn(16, 3, dtype=torch.float64)

    def losses(m: torch.nn.Module) -> list[torch.Tensor]:
        out = m(x)
        return [
            (out[:, 0] - y[:, 0]).pow(2).mean(),
            (out[:, 1] + out[:, 0] - y[:, 1]).abs().mean(),
            -(out[:, 2] * y[:, 2]).mean() + out.pow(2).mean(),
        ]

    return model, losses


def torchjd_step(model: torch.nn.Module, losses, aggregator) -> list[torch.Tensor]:
    params = list(model.parameters())
    autojac.backward(losses(model), inputs=params)
    autojac.jac_to_grad(params, aggregator)
    with torch.no_grad():
        return [p - p.grad for p in params]  # SGD, lr = 1


def mograd_step(model: torch.nn.Module, losses, weighting) -> list[torch.Tensor]:
    opt = MOWrapper(torch.optim.SGD(model.parameters(), lr=1.0), weights=weighting)
    opt.zero_grad()
    opt.step(losses(model))
    return [p.detach().clone() for p in model.parameters()]


def assert_same_update(before, ours, ref, tol: float) -> None:
    d_ours = torch.cat([(o - b).reshape(-1) for o, b in zip(ours, before)])
    d_ref = torch.cat([(r - b).reshape(-1) for r, b in zip(ref, before)])
    rel = float((d_ours - d_ref).norm() / d_ref.norm())
    assert rel <= tol, rel


@pytest.mark.parametrize(
    ("ours", "theirs", "tol"),
    [
        (
            lambda: UPGrad(),
            lambda: aggregation.UPGrad(projector=QuadprogProjector(norm_eps=0.0, reg_eps=0.0)),
            1e-8,
        ),
        (lambda: UPGrad(reg_eps=1e-4), lambda: aggregation.UPGrad(), 1e-8),
        (
            lambda: DualProj(),
            lambda: aggregation.DualProj(projector=QuadprogProjector(norm_eps=0.0, reg_eps=0.0)),
            1e-8,
        ),
    ],
    ids=["upgrad-exact", "upgrad-reg", "dualproj"],
)
def test_sgd_step_matches_torchjd(ours, theirs, tol: float) -> None:
    model, losses = model_and_losses()
    twin = copy.deepcopy(model)
    before = [p.detach().clone() for p in model.parameters()]
    ref = torchjd_step(twin, losses, theirs())
    assert_same_update(before, mograd_step(model, losses, ours()), ref, tol)


def test_sgd_step_with_upgrad_by_name() -> None:
    model, losses = model_and_losses(1)
    twin = copy.deepcopy(model)
    before = [p.detach().clone() for p in model.parameters()]
    ref = mograd_step(twin, losses, UPGrad())
    assert_same_update(before, mograd_step(model, losses, "upgrad"), ref, 0.0 + 1e-15)


def test_cagrad_step_matches_torchjd() -> None:
    pytest.importorskip("cvxpy")
    pytest.importorskip("clarabel")
    model, losses = model_and_losses(2)
    twin = copy.deepcopy(model)
    before = [p.detach().clone() for p in model.parameters()]
    ref = torchjd_step(twin, losses, aggregation.CAGrad(c=0.5))
    assert_same_update(before, mograd_step(model, losses, CAGrad(c=0.5)), ref, 1e-3)


@pytest.mark.parametrize("make", [lambda: Random(seed=5), lambda: PCGrad(seed=5), NashMTL])
def test_stateful_weighting_resumes_bit_identically_through_the_optimizer(make) -> None:
    model, losses = model_and_losses(3)
    opt = MOWrapper(torch.optim.Adam(model.parameters(), lr=1e-2), weights=make())
    for _ in range(2):
        opt.zero_grad()
        opt.step(losses(model))
    twin = copy.deepcopy(model)
    opt2 = MOWrapper(torch.optim.Adam(twin.parameters(), lr=1e-2), weights=make())
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    for _ in range(2):
        for o, m in ((opt, model), (opt2, twin)):
            o.zero_grad()
            o.step(losses(m))
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)

"""Tests of the Pareto-front benchmark: problems, batched optimizer, metrics, end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import mograd
from benchmarks import pareto_fronts as pf
from benchmarks.mo_problems import PROBLEMS, front_partition, get_problem
from mograd.pareto import non_dominated


def _pareto_set_points(name: str, n: int = 40) -> torch.Tensor:
    """Points of the analytic Pareto set: for ZDT the x1 values of the (non-dominated) front."""
    prob = get_problem(name)
    if name.startswith("zdt"):
        f1 = prob.true_front(400)[:, 0]
        # Drop the last two samples of each piece of ZDT3's disconnected front: a piece ends
        # at a local minimum of f2, which the discrete sample can overshoot by one step.
        last = np.append(np.flatnonzero(np.diff(f1) > 1e-2), len(f1) - 1)
        f1 = np.delete(f1, np.concatenate([last, last - 1]))
        f1 = f1[(f1 > 1e-3) & (f1 < 1 - 1e-3)]
        t = torch.from_numpy(f1[np.linspace(0, len(f1) - 1, n).astype(int)])
    else:
        t = torch.linspace(0.0, 1.0, n, dtype=torch.float64)
    return prob.pareto_x(t)


@pytest.mark.parametrize("name", list(PROBLEMS))
def test_analytic_front_matches_pareto_set_and_is_not_dominated(name: str) -> None:
    prob = get_problem(name)
    front = prob.true_front(2000)
    assert non_dominated(front).all()
    assert np.all(np.diff(front[:, 0]) > 0)
    f = prob.objectives_x(_pareto_set_points(name)).numpy()
    # Objectives of the Pareto set lie on the dense analytic front ...
    d = np.sqrt(((f[:, None, :] - front[None, :, :]) ** 2).sum(axis=2)).min(axis=1)
    assert d.max() < 5e-3
    # ... and no random feasible point dominates any of them.
    gen = torch.Generator().manual_seed(0)
    samples = prob.objectives_x(prob.sample_x(20000, gen)).numpy()
    for p in f:
        dominating = np.all(samples <= p + 1e-12, axis=1) & np.any(samples < p - 1e-12, axis=1)
        assert not dominating.any(), (name, p, samples[dominating][:3])


@pytest.mark.parametrize("name", list(PROBLEMS))
def test_analytic_front_is_pareto_stationary(name: str) -> None:
    """KKT in x-space: some convex combination of the two gradients vanishes on the free
    coordinates and points into the box on the coordinates held at a bound (ZDT: x_2.. = 0)."""
    prob = get_problem(name)
    x = _pareto_set_points(name).requires_grad_(True)
    f = prob.objectives_x(x)
    g1 = torch.autograd.grad(f[:, 0].sum(), x, retain_graph=True)[0]
    g2 = torch.autograd.grad(f[:, 1].sum(), x)[0]
    for i in range(x.shape[0]):
        free = torch.ones(x.shape[1], dtype=torch.bool)
        if name.startswith("zdt"):
            free[1:] = False  # x_2..n sit at the lower bound 0
        a, b = g1[i, free], g2[i, free]
        jac = torch.stack([a, b])
        w = mograd.min_norm_weights(jac @ jac.T)
        combo = w[0] * g1[i] + w[1] * g2[i]
        assert combo[free].norm() < 1e-6 * (1 + a.norm() + b.norm())
        assert torch.all(combo[~free] >= 0)  # moving inside the box cannot help both


def test_front_partition() -> None:
    zdt1 = front_partition(get_problem("zdt1").true_front(500), 0.05)
    assert zdt1["supported"].all() and not zdt1["concave"].any()
    zdt2_front = get_problem("zdt2").true_front(500)
    zdt2 = front_partition(zdt2_front, 0.05)
    assert zdt2["supported"].sum() == 2  # only the two end points minimize a linear weighting
    assert zdt2["concave"].mean() > 0.9
    # ZDT3: every piece's tip is supported and part of each later piece is concave.
    zdt3 = front_partition(get_problem("zdt3").true_front(2000), 0.05)
    assert 0.2 < zdt3["concave"].mean() < 0.7 and zdt3["supported"].any()


@pytest.mark.parametrize("method", ["mgda", "mib", "mib_wo_s", "mib_wo_aw"])
@pytest.mark.parametrize("name", ["zdt2", "vlmop2"])
def test_batched_step_equals_mowrapper(name: str, method: str) -> None:
    """The benchmark's batched update is B independent mograd.MOWrapper(Adam) runs."""
    prob = get_problem(name)
    spec = pf.METHODS[method]
    theta0 = prob.sample_theta(4, torch.Generator().manual_seed(1))
    steps, lr = 25, 0.05
    batched = pf.optimize_batch(prob, spec, theta0, steps, lr)
    for b in range(theta0.shape[0]):
        th = theta0[b : b + 1].clone().requires_grad_(True)
        opt = mograd.MOWrapper(
            torch.optim.Adam([th], lr=lr), weights=spec.weights, power=spec.power, mu=spec.mu
        )
        for _ in range(steps):
            opt.zero_grad()
            f = prob.objectives(th)
            opt.step([f[0, 0], f[0, 1]])
        torch.testing.assert_close(batched[b], th.detach()[0], rtol=1e-9, atol=1e-10)


def test_batched_linear_equals_adam_on_weighted_sum() -> None:
    prob = get_problem("zdt1")
    theta0 = prob.sample_theta(3, torch.Generator().manual_seed(2))
    w = pf.linear_weights(3)
    batched = pf.optimize_batch(prob, pf.METHODS["linear"], theta0, 20, 0.05, w)
    for b in range(3):
        th = theta0[b : b + 1].clone().requires_grad_(True)
        opt = torch.optim.Adam([th], lr=0.05)
        for _ in range(20):
            opt.zero_grad()
            f = prob.objectives(th)[0]
            (w[b] * f[0] + (1 - w[b]) * f[1]).backward()
            opt.step()
        torch.testing.assert_close(batched[b], th.detach()[0], rtol=1e-9, atol=1e-10)


def test_linear_misses_the_concave_part_that_mgda_reaches() -> None:
    """The measured effect on VLMOP2 at small scale: linear scalarization ends at the two end
    points, MGDA from the same starts spreads over the concave part."""
    prob = get_problem("vlmop2")
    front = prob.true_front(1000)
    concave = front_partition(front, 0.05)["concave"]
    starts = prob.sample_theta(16, torch.Generator().manual_seed(0))
    res = {}
    for m in ("linear", "mgda"):
        theta = pf.optimize_batch(prob, pf.METHODS[m], starts, 400, 0.05, pf.linear_weights(16))
        pts = prob.objectives(theta).detach().numpy()
        res[m] = pf.evaluate(pts, front, concave, prob.ref, 0.05)
    assert res["linear"]["concave_pts"] == 0.0
    assert res["mgda"]["concave_pts"] > 0.8 and res["mgda"]["concave_cov"] > 0.3
    assert res["mgda"]["hv"] > res["linear"]["hv"]


def test_benchmark_end_to_end_tiny(tmp_path: Path) -> None:
    out = tmp_path / "pf"
    argv = ["--seeds", "2", "--starts", "3", "--steps", "15", "--out", str(out), "--no-progress"]
    results = pf.main(argv)
    saved = json.loads((out / "results.json").read_text())
    assert saved["seeds"] == [0, 1]
    assert saved["config"]["steps"] == 15
    assert "--steps 15" in saved["command"]
    assert saved["versions"]["torch"] == torch.__version__
    assert saved["duration_s"]["total"] > 0
    table = (out / "table.md").read_text()
    assert set(saved["problems"]) == set(PROBLEMS)
    for pname, pres in saved["problems"].items():
        assert set(pres["methods"]) == set(pf.METHODS)
        assert (out / f"front_{pname}.png").stat().st_size > 1000
        for mres in pres["methods"].values():
            assert mres["label"] in table
            for key in ("hv", "igd", "gd", "on_front"):
                assert math.isfinite(mres["summary"][key]["mean"]), (pname, key)
                assert math.isfinite(mres["summary"][key]["std"]), (pname, key)
            cov = mres["summary"]["concave_cov"]["mean"]
            assert math.isnan(cov) if pres["shape"] == "convex" else 0.0 <= cov <= 1.0
            assert len(mres["per_seed"]) == 2 and len(mres["per_seed"][0]["points"]) == 3
    assert results["problems"].keys() == saved["problems"].keys()


def test_cli_help_and_presets(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        pf.parse_args(["--help"])
    assert exc.value.code == 0
    assert "--preset" in capsys.readouterr().out
    cfg = pf.build_config(pf.parse_args(["--preset", "paper", "--steps", "7"]))
    assert cfg.steps == 7 and len(cfg.seeds) == pf.PRESETS["paper"]["seeds"]
    with pytest.raises(ValueError, match="unknown problem 'nope'"):
        get_problem("nope")


def test_mib_collapses_to_the_balanced_point_on_vlmop2() -> None:
    """MIB's p = 2 reweighting is not stationary at Pareto-stationary points: with w* the
    min-norm weights there, the update sum_i c_i g_i vanishes only where c is proportional to
    w*, i.e. w*_1 (1 + a_1) = w*_2 (1 + a_2). On the symmetric VLMOP2 front that is the middle
    point f1 = f2 = 1 - exp(-1), so every start ends there, unlike MGDA."""
    prob = get_problem("vlmop2")
    starts = prob.sample_theta(8, torch.Generator().manual_seed(3))
    mid = 1.0 - math.exp(-1.0)
    mib = prob.objectives(pf.optimize_batch(prob, pf.METHODS["mib"], starts, 1500, 0.02))
    np.testing.assert_allclose(mib.detach().numpy(), mid, atol=2e-3)
    mgda = prob.objectives(pf.optimize_batch(prob, pf.METHODS["mgda"], starts, 1500, 0.02))
    assert mgda[:, 0].detach().std() > 0.1

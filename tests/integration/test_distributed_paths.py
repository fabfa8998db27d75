"""The distributed column of the conformance matrix: every path on two real gloo ranks.

Each rank takes half of a batch; the ranks must take the same step, and that step must be
the one a single process takes on the full batch (the DDP recipe's promise). Scenarios:

* ``baseline``: the plain case;
* ``rank_unreached``: a data-dependent graph in which one parameter is used only for some
  samples, none of them on rank 0 (rank 0's losses do not reach it);
* ``nonfinite_one_rank``: ``nonfinite="skip"``, and the second batch has a NaN sample on
  rank 0 only: every rank skips that step.

All cases run in ONE pair of processes (``run_all``), which write one result file per case
and rank; the tests below read them. A case that kills a rank (a collective of mismatched
sizes aborts gloo) is recorded as that case's failure and the remaining cases run in a new
pair, so one broken case does not hide the others.
"""

from __future__ import annotations

import os
import sys
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from tests.paths import PATHS, StepPath

WORLD = 2
STEPS = 2
BATCH = 16  # 8 samples per rank
SCENARIOS = ("baseline", "rank_unreached", "nonfinite_one_rank")

DIST_MATRIX: dict[tuple[str, str], str] = {
    (p.name, s): "skipped on every rank" if s == "nonfinite_one_rank" else "same as one process"
    for p in PATHS
    for s in SCENARIOS
}
"""(path, scenario) -> expectation under two gloo ranks: "same as one process" (every
rank's weights and parameters equal those of one process on the full batch, 1e-12, and
the ranks' parameters are bit-identical); "skipped on every rank" (``StepInfo.skipped``
on both ranks for the step whose NaN sample only rank 0 saw, parameters as after the
previous step)."""

CASES = [f"{p.name}-{s}" for p in PATHS for s in SCENARIOS]


class Net(nn.Module):
    """A 2-layer MLP; ``extra`` is used only for the samples flagged in ``x[:, 0] > 0.5``
    when ``gated`` (a data-dependent graph)."""

    def __init__(self, gated: bool) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(5, 8), nn.Tanh())
        self.head = nn.Linear(8, 2)
        self.extra = nn.Linear(8, 2)
        self.gated = gated

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.body(x)
        out = self.head(z)
        flags = (x[:, :1] > 0.5).to(x.dtype)
        if self.gated and bool(flags.any()):
            out = out + flags * self.extra(z)
        return z, out


def two_losses(out: torch.Tensor) -> list[torch.Tensor]:
    return [(out[:, 0] - 1).pow(2).mean(), (out[:, 1] + 1).pow(2).mean() + 0.1 * out[:, 0].mean()]


def data(scenario: str) -> list[torch.Tensor]:
    """``STEPS`` full batches; rank r takes rows ``[8 r, 8 r + 8)``."""
    gen = torch.Generator().manual_seed(1)
    xs = [torch.randn(BATCH, 5, generator=gen, dtype=torch.float64) for _ in range(STEPS)]
    if scenario == "rank_unreached":
        for x in xs:  # no flagged sample on rank 0, some on rank 1
            x[: BATCH // 2, 0] = -x[: BATCH // 2, 0].abs()
            x[BATCH // 2 :: 2, 0] = 1.0
    if scenario == "nonfinite_one_rank":
        xs[-1][0, 0] = float("nan")  # rank 0's half of the second batch
    return xs


def run_case(name: str, rank: int, world: int) -> dict[str, Any]:
    """One case on this rank's share of the batches (``world=1``: one process, full batch)."""
    path_name, scenario = name.split("-", 1)
    path = StepPath(path_name)
    torch.manual_seed(0)
    model = Net(gated=scenario == "rank_unreached").double()
    options = {"nonfinite": "skip"} if scenario == "nonfinite_one_rank" else {}
    opt = path.wrap(model, torch.optim.Adam(model.parameters(), lr=1e-2), **options)

    def forward(x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        z, out = model(x)
        return z, two_losses(out)

    share = BATCH // world
    weights, skipped = [], []
    for x in data(scenario):
        opt.zero_grad()
        info = path.backward(opt, forward, x[rank * share : (rank + 1) * share])
        opt.step()
        weights.append(info.weights.detach().clone())
        skipped.append(bool(info.skipped))
    params = [p.detach().clone() for p in model.parameters()]
    return {"weights": weights, "skipped": skipped, "params": params, "error": None}


def _save(obj: dict[str, Any], target: Path) -> None:
    tmp = target.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, target)  # a rank killed mid-write leaves no half file


def worker(rank: int, world: int, init_file: str, out_dir: str, cases: list[str]) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=30),
    )
    for name in cases:
        target = Path(out_dir) / f"{name}.rank{rank}.pt"
        try:
            result = run_case(name, rank, world)
        except Exception as exc:
            lines = traceback.format_exception_only(type(exc), exc)
            _save({"error": "".join(lines).strip()}, target)
            sys.stdout.flush()
            os._exit(1)  # the other rank may wait in a collective: end this pair
        _save(result, target)
    dist.destroy_process_group()


def run_all(cases: list[str], tmp: Path) -> dict[str, list[dict[str, Any]]]:
    """Every case on one pair of gloo processes; a case that ends the pair is recorded
    (with the error each rank left, or how the pair ended) and the rest run in a new pair."""
    results: dict[str, list[dict[str, Any]]] = {}
    pending = list(cases)
    attempt = 0
    while pending:
        attempt += 1
        out = tmp / f"pair{attempt}"
        out.mkdir()
        ended = None
        try:
            mp.start_processes(
                worker,
                args=(WORLD, str(out / "init"), str(out), pending),
                nprocs=WORLD,
                join=True,
                start_method="fork" if sys.platform == "linux" else "spawn",
            )
        except Exception as exc:  # a rank raised or died: the first unfinished case did it
            ended = f"the process pair ended: {type(exc).__name__}: {str(exc)[:300]}"
        for name in list(pending):
            files = [out / f"{name}.rank{r}.pt" for r in range(WORLD)]
            loaded = [torch.load(f, weights_only=True) if f.exists() else None for f in files]
            done = all(r is not None and r["error"] is None for r in loaded)
            pending.remove(name)
            if done:
                results[name] = loaded
                continue
            results[name] = [r if r is not None else {"error": ended} for r in loaded]
            break
    return results


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    return run_all(CASES, tmp_path_factory.mktemp("distributed_paths"))


def check_case(name: str, results: dict[str, list[dict[str, Any]]]) -> None:
    ranks = results[name]
    errors = [r["error"] for r in ranks if r["error"] is not None]
    assert not errors, f"{name}: {errors}"
    ref = run_case(name, rank=0, world=1)
    for r, res in enumerate(ranks):
        assert res["skipped"] == ref["skipped"], f"{name} rank {r}: skipped {res['skipped']}"
        for w, w_ref, skip in zip(res["weights"], ref["weights"], ref["skipped"]):
            if not skip:  # a skipped step's weights may be NaN
                torch.testing.assert_close(w, w_ref, rtol=1e-12, atol=1e-12)
        for i, (p, p_ref) in enumerate(zip(res["params"], ref["params"])):
            torch.testing.assert_close(
                p, p_ref, rtol=1e-12, atol=1e-12, msg=lambda m, r=r, i=i: f"rank {r} param {i}: {m}"
            )
    for i, (a, b) in enumerate(zip(ranks[0]["params"], ranks[1]["params"])):
        assert torch.equal(a, b), f"{name}: parameter {i} differs between the ranks"


def test_k1_ranks_take_the_same_averaged_step(results) -> None:
    """Item 2 of issue 17: with k = 1 under ``torch.distributed`` the ranks' gradients are
    averaged, so both ranks take the same step, one process's step on the full batch."""
    check_case("single-baseline", results)


def test_representation_mode_with_a_parameter_one_rank_does_not_reach(results) -> None:
    """Item 5 of issue 17: representation mode, distributed, a parameter that rank 0's
    losses do not reach (a data-dependent graph): no size mismatch in the collective (the
    rows and gramian paths zero-pad), and the step of one process on the full batch."""
    check_case("features-rank_unreached", results)


NAMED = {"single-baseline", "features-rank_unreached"}  # the two tests above


@pytest.mark.parametrize("name", [c for c in CASES if c not in NAMED])
def test_distributed_cell(name: str, results) -> None:
    """One cell of ``DIST_MATRIX``."""
    path_name, scenario = name.split("-", 1)
    expect = DIST_MATRIX[(path_name, scenario)]
    check_case(name, results)
    if expect == "skipped on every rank":
        assert all(r["skipped"] == [False, True] for r in results[name])

"""A tiny real run of benchmarks/step_overhead.py (speed targets live in the benchmark)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks import step_overhead

ROOT = Path(__file__).resolve().parents[2]


def test_tiny_run_writes_table_json_and_figure(tmp_path) -> None:
    out = tmp_path / "so"
    rows = step_overhead.main(
        ["--models", "mlp", "--k", "2", "8", "--steps", "2", "--warmup", "1", "--threads", "1",
         "--methods", "adam", "mograd", "mograd_repr", "torchjd_mgda", "--no-memory",
         "--pass-rounds", "1", "--no-solvers", "--out", str(out)]
    )
    assert [(r["model"], r["k"]) for r in rows] == [("mlp", 2), ("mlp", 8)]
    data = json.loads((out / "results.json").read_text())
    assert data["command"].startswith("python ") and data["environment"]["torch"]
    for row in data["rows"]:
        assert row["ratio"]["adam"] == pytest.approx(1.0)
        for m in ("mograd", "mograd_repr", "torchjd_mgda"):
            assert math.isfinite(row["ratio"][m]) and row["ratio"][m] > 0
            assert len(row["times_ms"][m]) == 2
    table = (out / "table.md").read_text()
    assert "| mlp | 8 |" in table and "torchjd_mgda" in table
    assert "Pass costs" in table and "load average" in table
    for row in data["rows"]:
        assert set(row["passes"]) == {"F_ms", "B_a_ms", "B_w_ms"}
        assert all(math.isfinite(v) for v in row["pass_floors"].values())
    assert (out / "overhead.png").read_bytes()[:4] == b"\x89PNG"


def test_many_tasks_the_records_path_and_autogram_in_one_run(tmp_path) -> None:
    pytest.importorskip("torchjd")
    rows = step_overhead.main(
        ["--models", "mlp", "--k", "40", "--steps", "1", "--warmup", "0", "--threads", "1",
         "--methods", "mograd_frugal", "torchjd_autogram", "--no-memory", "--no-passes",
         "--solver-k", "8", "--solver-rounds", "1", "--out", str(tmp_path)]
    )
    assert rows[0]["k"] == 40 and "mograd_frugal/torchjd_autogram" in rows[0]["vs_floor"]
    data = json.loads((tmp_path / "results.json").read_text())
    assert set(data["solvers_ms"]) == set(step_overhead.SOLVERS)
    assert all(v["8"] > 0 for v in data["solvers_ms"].values())
    table = (tmp_path / "table.md").read_text()
    assert "| nash_mtl | " in table and "mograd_frugal / torchjd_autogram" in table


@pytest.mark.parametrize("k", [8, 40, 128])
def test_k_losses_split_the_batch_into_groups(k) -> None:
    """k / 2 groups, each with its CE and its KL term: weighted by the group sizes they
    are the whole batch's two losses (k = 2) on the same model and batch."""
    import torch

    cpu = torch.device("cpu")
    whole = step_overhead.build_task("mlp", 2, cpu)
    ref, _ = whole.forward(whole.model)
    task = step_overhead.build_task("mlp", k, cpu)
    losses, _ = task.forward(task.model)
    assert len(losses) == k
    sizes = torch.tensor([len(g) for g in torch.tensor_split(torch.arange(128), k // 2)])
    frac = sizes / 128.0
    torch.testing.assert_close((frac * torch.stack(losses[: k // 2])).sum(), ref[0])
    torch.testing.assert_close((frac * torch.stack(losses[k // 2 :])).sum(), ref[1])


def test_pass_floors_and_solver_table() -> None:
    from benchmarks import step_parts

    fl = step_parts.pass_floors({"F_ms": 1.0, "B_a_ms": 1.0, "B_w_ms": 1.0}, 8)
    assert fl["exact_ms"] == 17.0 and fl["records_ms"] == 10.0
    table = step_parts.solver_table({"upgrad": {8: 1.0, 128: 50.0}}, {128: 250.0})
    assert "| upgrad | 1.00 | 50.00 (20 %) |" in table


def test_peak_memory_of_a_fresh_child_process() -> None:
    # Adam's two moment buffers alone are 2 x 0.73 M floats (5.6 MiB) for this MLP.
    assert step_overhead.peak_memory_mb("mlp", 2, "mograd", step_overhead.torch.device("cpu")) > 5


@pytest.mark.parametrize(
    "bad",
    [["--steps", "0"], ["--device", "tpu"], ["--k", "3"], ["--k", "258"], ["--solver-k", "5"],
     ["--pass-rounds", "0"]],
)
def test_bad_arguments_exit_with_a_message(bad, capsys) -> None:
    with pytest.raises(SystemExit):
        step_overhead.main(bad)
    assert "error" in capsys.readouterr().err


def test_weighting_rows_mograd_and_torchjd_in_one_run(tmp_path) -> None:
    pytest.importorskip("torchjd")
    pytest.importorskip("cvxpy")
    pytest.importorskip("clarabel")
    methods = ["mograd_upgrad", "torchjd_upgrad", "mograd_cagrad", "torchjd_cagrad"]
    rows = step_overhead.main(
        ["--models", "mlp", "--k", "2", "--steps", "1", "--warmup", "0", "--threads", "1",
         "--methods", *methods, "--no-memory", "--no-passes", "--no-solvers",
         "--out", str(tmp_path)]
    )
    for m in methods:
        assert math.isfinite(rows[0]["ratio"][m]) and rows[0]["ratio"][m] > 0
    assert "mograd_cagrad" in (tmp_path / "table.md").read_text()


def test_default_output_is_the_ignored_runs_folder() -> None:
    args = step_overhead.parse_args([])
    assert args.out == ROOT / "runs" / "step_overhead"


@pytest.mark.parametrize(("method", "floor"), step_overhead.FLOORS)
def test_hand_written_floors_compute_the_same_step(floor, method) -> None:
    """The floor rows time the same computation as mograd's, written by hand."""
    import torch

    device = torch.device("cpu")
    params = []
    for m in (floor, method):
        task = step_overhead.build_task("mlp", 2, device)
        step_overhead.make_stepper(m, task.model, task)()
        params.append([p.detach().clone() for p in task.model.parameters()])
    for a, b in zip(*params):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_paired_ratios_pair_each_round() -> None:
    times = {"mograd_repr": [2.0, 3.0, 4.0], "floor_repr": [1.0, 3.0, 2.0], "adam": [1.0, 1.0, 1.0]}
    out = step_overhead.paired_ratios(times)
    assert set(out) == {"mograd_repr/floor_repr"}
    assert out["mograd_repr/floor_repr"]["median"] == 2.0  # ratios 2, 1, 2 (not 3 / 2)
    table = step_overhead.floor_table([{"model": "mlp", "k": 2, "vs_floor": out}])
    assert "| mlp | 2 | 2.000 (" in table


def test_named_weightings_and_torchjd_classes_as_methods(tmp_path) -> None:
    """``w:<weighting>[:<policy>]`` and ``tjd:<Class>`` rows: a loss-level weighting (with
    the default guard and without), a Gram one, TorchJD's aggregator and scalarizer of the
    same names and the guard's floor, in one run; a bad name or policy is refused."""
    out = tmp_path / "named"
    methods = ["w:famo", "w:famo:ignore", "floor_checked", "tjd:FAMO", "w:fairgrad", "tjd:FairGrad"]
    rows = step_overhead.main(
        ["--models", "mlp", "--k", "2", "--steps", "2", "--warmup", "1", "--threads", "1",
         "--methods", *methods, "--no-memory", "--no-passes", "--no-solvers", "--out", str(out)]
    )
    for m in methods:
        assert math.isfinite(rows[0]["ratio"][m]) and rows[0]["ratio"][m] > 0
    for bad in ("w:no_such_weighting", "w:famo:sometimes"):
        with pytest.raises(SystemExit):
            step_overhead.main(["--methods", bad, "--out", str(out)])

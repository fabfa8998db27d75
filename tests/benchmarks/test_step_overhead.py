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
         "--out", str(out)]
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
    assert (out / "overhead.png").read_bytes()[:4] == b"\x89PNG"


def test_peak_memory_of_a_fresh_child_process() -> None:
    # Adam's two moment buffers alone are 2 x 0.73 M floats (5.6 MiB) for this MLP.
    assert step_overhead.peak_memory_mb("mlp", 2, "mograd", step_overhead.torch.device("cpu")) > 5


@pytest.mark.parametrize("bad", [["--steps", "0"], ["--device", "tpu"], ["--k", "3"]])
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
         "--methods", *methods, "--no-memory", "--out", str(tmp_path)]
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

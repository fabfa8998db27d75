"""A tiny real run of benchmarks/distributed_steps.py (two gloo processes per method; the
time and memory comparisons live in the benchmark's results, not here)."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks import distributed_steps


def test_tiny_run_writes_table_json_and_figure(tmp_path) -> None:
    out = tmp_path / "ds"
    rows = distributed_steps.main(
        ["--k", "2", "--steps", "1", "--warmup", "1", "--width", "32", "--depth", "1",
         "--methods", "dp_scatter", "fsdp", "--out", str(out)]
    )  # fmt: skip
    assert [r["k"] for r in rows] == [2]
    data = json.loads((out / "results.json").read_text())
    assert data["command"].startswith("python ") and data["environment"]["torch"]
    assert "load_average_at_start" in data["environment"]
    row = data["rows"][0]
    for m in ("dp_scatter", "fsdp"):
        r = row["methods"][m]
        assert math.isfinite(r["step_ms"]) and r["step_ms"] > 0
        assert len(r["ranks"]) == 2 and r["time_ratio"] is None  # no plain method ran
    scatter = row["methods"]["dp_scatter"]
    # k reduce-scatters and one all-gather: (k + 1) / 2 all-reduce volumes, plus the small
    # all-reduce (k^2 + 3k + parameters + 1 numbers) and the guard's flag
    assert scatter["collectives"] == {"all_reduce": 2, "reduce_scatter": 2, "all_gather": 1}
    assert 1.5 <= scatter["sent_p"] < 1.51
    fsdp = row["methods"]["fsdp"]
    # one per Linear and pass, but the KL pass does not reach the head: 3 + 2
    assert fsdp["collectives"]["reduce_scatter"] == 5
    table = (out / "table.md").read_text()
    assert "| dp_scatter |" in table and "sent / P" in table
    assert (out / "distributed_steps.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("bad", [["--k", "3"], ["--world", "1"], ["--steps", "0"]])
def test_bad_arguments_exit_with_a_message(bad, capsys) -> None:
    with pytest.raises(SystemExit):
        distributed_steps.main(bad)
    assert "error" in capsys.readouterr().err

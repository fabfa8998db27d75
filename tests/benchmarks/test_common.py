"""The helpers every benchmark entry point shares (benchmarks/_common.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks._common import device_of, doc_parser, read_runs, run_file, slug, write_json


def test_run_store_round_trip(tmp_path: Path) -> None:
    records = [{"method": "MIB w.o. s", "seed": 1}, {"method": "Mean", "seed": 0}]
    for rec in records:
        write_json(run_file(tmp_path, slug(rec["method"]), rec["seed"]), rec)
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [
        "MIB_w.o._s__seed1.json",
        "Mean__seed0.json",
    ]
    assert read_runs(tmp_path) == records  # file-name order
    assert not list((tmp_path / "runs").glob(".*"))  # no temporary file left behind
    assert read_runs(tmp_path / "missing") == []


def test_write_json_replaces_a_record_whole(tmp_path: Path) -> None:
    path = tmp_path / "runs" / "x.json"
    write_json(path, {"a": list(range(100))})
    write_json(path, {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}


def test_device_of() -> None:
    assert device_of("cpu") == "cpu"
    assert device_of(None) == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--device cuda was given"):
            device_of("cuda")


def test_doc_parser_splits_the_docstring() -> None:
    p = doc_parser("First paragraph.\n\nUsage:\n    python -m benchmarks.x\n")
    assert p.description == "First paragraph."
    assert p.epilog == "Usage:\n    python -m benchmarks.x\n"
    assert doc_parser(None).description == ""

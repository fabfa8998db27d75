"""Smoke test of benchmarks/ib_front.py on real FashionMNIST at a tiny scale."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks import ib_front
from benchmarks.ibkit.data import DEBIAN_FASHION_MNIST


@pytest.mark.skipif(
    not DEBIAN_FASHION_MNIST.is_dir(), reason="FashionMNIST package files are not installed"
)
def test_ib_front_tiny_run(tmp_path: Path) -> None:
    out = tmp_path / "ib"
    argv = ["--epochs", "1", "--train-limit", "256", "--test-limit", "100", "--betas", "1e-4",
            "1e-1", "--vib-seeds", "1", "--mo-seeds", "1", "--threads", "1", "--no-progress",
            "--methods", "MIB", "VIB w. aw", "MIB-loss", "--out", str(out)]  # fmt: skip
    ib_front.main(argv)
    res = json.loads((out / "results.json").read_text())
    assert set(res["methods"]) == {"VIB", "MIB", "VIB w. aw", "MIB-loss"}
    assert len(res["runs"]) == 5
    for r in res["runs"]:
        assert r["i_xz"] >= 0 and math.isfinite(r["i_zy"]) and r["i_zy"] <= math.log(10) + 1e-6
    vib = res["methods"]["VIB"]
    # beta = 0.1 compresses more than beta = 1e-4.
    assert vib["points"][1][0] < vib["points"][0][0]
    for m in res["methods"].values():
        assert m["hv_linear"] >= 0 and math.isfinite(m["hv_log10"])
        assert any(m["non_dominated"])
    assert (out / "ib_front.png").stat().st_size > 1000
    assert "| VIB | 0.1 | 0 |" in (out / "table.md").read_text()


def test_ib_front_defaults_to_runs_and_all_variants() -> None:
    """Without --out the front goes to runs/ib_front (git-ignored), with every MIB variant."""
    args = ib_front.parse_args([])
    assert args.out is None
    assert args.methods == ["MIB", "VIB w. aw", "MIB-l2", "MIB-loss", "MGDA-l2"]
    assert ib_front.default_out(ib_front.NAME).parts[-2:] == ("runs", "ib_front")

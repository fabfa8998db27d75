"""What every benchmark entry point shares: where results go, and the environment record.

A run writes to ``runs/<name>/`` (ignored by git) unless ``--out`` says otherwise, so that a
run on a fresh clone really trains instead of re-printing the committed reference results,
which live in ``benchmarks/results/<name>/`` and are regenerated with
``--out benchmarks/results/<name>``.
"""

from __future__ import annotations

import os
import platform
import shlex
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RUNS = ROOT / "runs"

__all__ = ["RESULTS", "ROOT", "RUNS", "command_line", "default_out", "environment", "reference"]


def default_out(name: str) -> Path:
    """The default output directory of a run: ``runs/<name>`` (git-ignored)."""
    return RUNS / name


def reference(name: str) -> Path | None:
    """The committed reference results of ``name``, if there are any."""
    path = RESULTS / name
    return path if (path / "results.json").exists() else None


def command_line() -> str:
    """The exact command that started this process, for the results' record."""
    return " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])


def environment(*packages: str) -> dict[str, str]:
    """Python, platform, CPU and the versions of ``torch``, ``mograd`` and ``packages``."""
    out = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)",
    }
    for pkg in ("torch", "numpy", "mograd", *packages):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    try:
        import torch

        if torch.cuda.is_available():
            out["gpu"] = torch.cuda.get_device_name(0)
        out["torch_threads"] = str(torch.get_num_threads())
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return out

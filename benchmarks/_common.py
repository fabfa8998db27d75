"""What every benchmark entry point shares: where results go, the environment record, and
the argument types of the command lines.

A run writes to ``runs/<name>/`` (ignored by git) unless ``--out`` says otherwise, so that a
run on a fresh clone really trains instead of re-printing the committed reference results,
which live in ``benchmarks/results/<name>/`` and are regenerated with
``--out benchmarks/results/<name>``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import subprocess
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RUNS = ROOT / "runs"

__all__ = [
    "RESULTS",
    "ROOT",
    "RUNS",
    "command_line",
    "count_or_all",
    "default_out",
    "device_of",
    "doc_parser",
    "environment",
    "non_negative_float",
    "positive_float",
    "positive_int",
    "read_runs",
    "reference",
    "run_child",
    "run_file",
    "seed_value",
    "slug",
    "write_json",
]


def default_out(name: str) -> Path:
    """The default output directory of a run: ``runs/<name>`` (git-ignored)."""
    return RUNS / name


def reference(name: str) -> Path | None:
    """The committed reference results of ``name``, if there are any."""
    path = RESULTS / name
    return path if (path / "results.json").exists() else None


def doc_parser(doc: str | None) -> argparse.ArgumentParser:
    """A parser whose description is the first paragraph of a module docstring ``doc`` and
    whose epilog is the rest, as written."""
    text = doc or ""
    head, _, rest = text.partition("\n\n")
    return argparse.ArgumentParser(
        description=head,
        epilog=rest,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def device_of(arg: str | None) -> str:
    """The ``--device`` choice: ``arg``, else ``"cuda"`` when available, else ``"cpu"``.

    Raises:
        ValueError: ``"cuda"`` without a GPU.
    """
    import torch

    device = arg or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was given but torch.cuda.is_available() is False")
    return device


def slug(label: str) -> str:
    """A file-name-safe version of a run label."""
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", label).strip("_")


def run_file(out: Path, stem: str, seed: int) -> Path:
    """Where the record of one run is stored: ``out/runs/<stem>__seed<seed>.json``."""
    return Path(out) / "runs" / f"{stem}__seed{seed}.json"


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (a crash never leaves a truncated file behind)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def read_runs(out: Path) -> list[dict[str, Any]]:
    """All stored run records under ``out/runs``, in file-name order."""
    runs = []
    for p in sorted((Path(out) / "runs").glob("*.json")):
        with open(p) as f:
            runs.append(json.load(f))
    return runs


def command_line(module: str, argv: Sequence[str] | None = None) -> str:
    """The command that reruns this invocation, for the results' record:
    ``python -m benchmarks.<module> <arguments>`` (``argv`` defaults to ``sys.argv[1:]``)."""
    args = sys.argv[1:] if argv is None else list(argv)
    return shlex.join(["python", "-m", f"benchmarks.{module}", *args])


def run_child(
    module: str, args: Sequence[str], env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m benchmarks.<module> <args>`` in a fresh process from the repository
    root (used to measure peak memory of one method alone)."""
    cmd = [sys.executable, "-m", f"benchmarks.{module}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)


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
    # numpy's BLAS (the host-side QP solvers of the weightings) sizes its thread pool from
    # these when numpy is imported; on a loaded machine its threads oversubscribe the cores
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        out[var] = os.environ.get(var, "unset")
    try:
        import torch

        if torch.cuda.is_available():
            out["gpu"] = torch.cuda.get_device_name(0)
        out["torch_threads"] = str(torch.get_num_threads())
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return out


def positive_int(text: str) -> int:
    """argparse type: an integer > 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    value = non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return value


def seed_value(text: str) -> int:
    """argparse type: a seed, an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"seeds must be >= 0, got {value}")
    return value


def count_or_all(text: str) -> int | None:
    """argparse type: a positive count, or ``all`` (also ``none``, ``full``) for no limit."""
    if text.lower() in ("all", "none", "full"):
        return None
    return positive_int(text)

"""Many cases on ONE pair of real gloo processes, bounded in time.

``run_cases(runner, cases, tmp)`` starts two processes that join one gloo process group and
run ``runner(name, rank, world, out_dir)`` for every case in turn, each writing one result
file per case and rank (a dict; ``error`` is ``None`` when the case ran). A case that raises
ends the pair (the other rank may wait in a collective): it is recorded as that case's
failure and the remaining cases run in a new pair. The pair's collectives time out after
``collective_timeout`` seconds, and a pair that runs past ``timeout`` seconds is killed, so
a collective that would hang fails the test instead.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

__all__ = ["WORLD", "Runner", "run_cases"]

WORLD = 2
Runner = Callable[[str, int, int, Path], dict[str, Any]]


def _save(obj: dict[str, Any], target: Path) -> None:
    tmp = target.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, target)  # a rank killed mid-write leaves no half file


def _worker(
    rank: int,
    world: int,
    init_file: str,
    out_dir: str,
    cases: list[str],
    runner: Runner,
    collective_timeout: float,
) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=collective_timeout),
    )
    for name in cases:
        target = Path(out_dir) / f"{name}.rank{rank}.pt"
        try:
            result = runner(name, rank, world, Path(out_dir))
        except Exception as exc:
            lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
            _save({"error": "".join(lines[-6:]).strip()}, target)
            sys.stdout.flush()
            os._exit(1)  # the other rank may wait in a collective: end this pair
        result.setdefault("error", None)
        _save(result, target)
    dist.destroy_process_group()


def _start(
    out: Path, pending: list[str], runner: Runner, timeout: float, coll: float
) -> str | None:
    """Run the pair; how it ended, when it did not end well."""
    ctx = mp.start_processes(
        _worker,
        args=(WORLD, str(out / "init"), str(out), pending, runner, coll),
        nprocs=WORLD,
        join=False,
        start_method="fork" if sys.platform == "linux" else "spawn",
    )
    deadline = time.monotonic() + timeout
    try:
        while not ctx.join(timeout=max(0.1, min(5.0, deadline - time.monotonic()))):
            if time.monotonic() > deadline:
                for p in ctx.processes:
                    p.kill()
                return f"the process pair ran past {timeout:.0f} s and was killed"
    except Exception as exc:  # a rank raised or died: the first unfinished case did it
        return f"the process pair ended: {type(exc).__name__}: {str(exc)[:300]}"
    return None


def run_cases(
    runner: Runner,
    cases: list[str],
    tmp: Path,
    *,
    timeout: float = 240.0,
    collective_timeout: float = 30.0,
) -> dict[str, list[dict[str, Any]]]:
    """Every case on one pair of gloo processes; ``{case: [rank 0 result, rank 1 result]}``."""
    results: dict[str, list[dict[str, Any]]] = {}
    pending = list(cases)
    attempt = 0
    while pending:
        attempt += 1
        out = tmp / f"pair{attempt}"
        out.mkdir()
        ended = _start(out, pending, runner, timeout, collective_timeout)
        for name in list(pending):
            files = [out / f"{name}.rank{r}.pt" for r in range(WORLD)]
            loaded = [torch.load(f, weights_only=True) if f.exists() else None for f in files]
            pending.remove(name)
            if all(r is not None and r["error"] is None for r in loaded):
                results[name] = loaded  # type: ignore[assignment]
                continue
            results[name] = [r if r is not None else {"error": ended} for r in loaded]
            break
    return results

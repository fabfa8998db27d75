"""Fashion tasks: four heterogeneous tasks on one trunk, where the choice of weighting matters.

Real FashionMNIST, each image mirrored with probability 1/2 and then rotated by a uniform
angle in [-45, 45] degrees; one convolutional trunk shared by four heads (``benchmarks/taskkit``):

- ``class``: 10-class classification (cross-entropy; accuracy, higher is better);
- ``recon``: reconstruction of the input image (pixel MSE; PSNR in dB, higher is better);
- ``angle``: regression of the rotation angle (MSE in deg^2; MAE in degrees, lower is better);
- ``flip``: the binary attribute "mirrored" (binary cross-entropy; accuracy, higher is better).

The losses keep their natural units, so their scales differ by four orders of magnitude, and
the tasks pull the trunk apart (invariance to rotation and mirroring for the class, sensitivity
to them for the angle and the flip). Every weighting of ``mograd.weightings.WEIGHTINGS``
(picked up when the benchmark runs), its ``normalize=`` variants where they change the update,
MIB / MIB-l2 / MIB-loss, representation-mode rows, and the four single-task baselines are
trained by this script; the table reports Delta m % against the single-task models, every
task's metric +- std over seeds and the epoch time relative to ``Mean``.

Outputs in ``--out`` (default ``runs/fashion_tasks_<preset>``): ``results.json`` (summary,
every run, the command line, the environment and the load), ``table.md``, ``delta_m.png``,
``cosines.png`` and one record per (method, seed) under ``runs/`` (a rerun skips the stored
ones). Docs: ``docs/fashion_tasks.md``.

Examples:
    python -m benchmarks.fashion_tasks --preset quick --threads 2
    python -m benchmarks.fashion_tasks --preset paper --device cuda
    python -m benchmarks.fashion_tasks --methods "single class" Mean MGDA-l2 --seeds 0
    python -m benchmarks.fashion_tasks --list-methods
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from benchmarks._common import (
    command_line,
    count_or_all,
    default_out,
    device_of,
    environment,
    positive_float,
    positive_int,
    seed_value,
)
from benchmarks.taskkit.data import RECIPE, TaskData, load_tasks
from benchmarks.taskkit.methods import Method, available, catalogue, resolve_names
from benchmarks.taskkit.report import load_runs, run_path, write_json, write_report
from benchmarks.taskkit.tasks import TASKS
from benchmarks.taskkit.train import RunConfig, run

NAME = "fashion_tasks"
_UNSET = object()

#: Representation-mode rows of the quick preset (the paper preset has all of them).
QUICK_REPR = ("MGDA-l2 (repr)", "MIB-l2 (repr)", "UPGrad-l2 (repr)")
#: ``normalize="loss"`` rows of Gram-matrix weightings in the quick preset (the loss-level
#: weightings' are all in; the paper preset has every one).
QUICK_LOSS = ("Mean-loss", "MGDA-loss", "MIB-loss")


@dataclass(frozen=True)
class Preset:
    """Defaults of a preset (each can be overridden on the command line)."""

    config: RunConfig
    seeds: tuple[int, ...]
    methods: tuple[str, ...]
    description: str


def _ordered(names: Sequence[str]) -> tuple[str, ...]:
    """Single-task rows first, then Mean, then the rest in catalogue order."""
    singles = [n for n in names if n.startswith("single ")]
    rest = [n for n in names if not n.startswith("single ") and n != "Mean"]
    return tuple([*singles, *(["Mean"] if "Mean" in names else []), *rest])


def _in_quick(name: str, method: Method) -> bool:
    """The quick preset's rows: every base row, ``-l2`` where offered, ``-loss`` for the
    loss-level weightings (their only normalization) and for MIB, Mean and MGDA, and the
    representation-mode rows of :data:`QUICK_REPR`."""
    if name.endswith(" (repr)"):
        return name in QUICK_REPR
    if name.endswith("-loss"):
        return name in QUICK_LOSS or not method.gram
    return True


def presets(methods: dict[str, Method] | None = None) -> dict[str, Preset]:
    """``quick`` (this CPU, 2 seeds) and ``paper`` (a GPU, every row, 3 seeds)."""
    cat = methods if methods is not None else catalogue()
    names = list(cat)
    quick_names = [n for n in names if _in_quick(n, cat[n])]
    quick = Preset(
        RunConfig(epochs=5, batch_size=128, lr=2e-3, train_limit=6000, test_limit=2000),
        (0, 1),
        _ordered(quick_names),
        "quick preset (CPU): 6 000 training images, 5 epochs, batch 128, Adam lr 2e-3, "
        "2 000 test images; every registered weighting, its normalize='l2' variant where it "
        "changes the update, normalize='loss' for the loss-level weightings and for Mean, "
        f"MGDA and MIB, and the representation-mode rows {', '.join(QUICK_REPR)}",
    )
    paper = Preset(
        RunConfig(epochs=30, batch_size=256, lr=1e-3, train_limit=None, test_limit=None),
        (0, 1, 2),
        _ordered(names),
        "paper preset (GPU): all 60 000 training images, 30 epochs, batch 256, Adam lr 1e-3, "
        "all 10 000 test images; every row of the catalogue (both normalize= variants where "
        "they change the update, every representation-mode row)",
    )
    return {"quick": quick, "paper": paper}


def build_parser(cat: dict[str, Method] | None = None) -> argparse.ArgumentParser:
    """The command line of ``benchmarks/fashion_tasks.py`` (``cat``: the catalogue, built
    when not given)."""
    p = presets(cat)
    q, pp = p["quick"], p["paper"]
    tasks = "\n".join(
        f"  {t.name:6s} {t.kind}: loss {t.loss}, metric {t.metric} "
        f"({'higher' if t.higher_is_better else 'lower'} is better)"
        for t in TASKS
    )
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.fashion_tasks",
        description=(
            "Four heterogeneous tasks on real FashionMNIST (rotated, possibly mirrored "
            "images) with one shared trunk: every weighting of mograd.MOWrapper against the "
            "single-task models. Reports Delta m %, per-task metrics +- std over seeds, "
            "epoch time relative to Mean and the gradient cosines over training. Writes "
            "results.json, table.md, delta_m.png and cosines.png to --out; runs already "
            "stored there are not retrained."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            f"tasks:\n{tasks}\n"
            "presets:\n"
            f"  quick  {q.description};\n         seeds {' '.join(map(str, q.seeds))}, "
            f"{len(q.methods)} rows\n"
            f"  paper  {pp.description};\n         seeds {' '.join(map(str, pp.seeds))}, "
            f"{len(pp.methods)} rows\n"
            "methods: see --list-methods ('single <task>' are the baselines, '<m>-l2' / "
            "'<m>-loss' normalize=, '<m> (repr)' representation mode)\n"
            "docs: docs/fashion_tasks.md"
        ),
    )
    add = parser.add_argument
    add("--preset", choices=tuple(p), default="quick", help="default: quick")
    add("--methods", nargs="+", metavar="M", help="rows to run (default: the preset's)")
    add("--list-methods", action="store_true", help="print every known row and exit")
    add("--seeds", nargs="+", type=seed_value, metavar="S", help="training seeds")
    add("--epochs", type=positive_int, help="training epochs")
    add(
        "--train-limit",
        type=count_or_all,
        default=_UNSET,
        metavar="N",
        help="train on a fixed random subset of N of the 60 000 images ('all' for all)",
    )
    add(
        "--test-limit",
        type=count_or_all,
        default=_UNSET,
        metavar="N",
        help="evaluate on a fixed random subset of N of the 10 000 test images ('all')",
    )
    add("--batch-size", type=positive_int, help="mini-batch size")
    add("--lr", type=positive_float, help="Adam's learning rate")
    add(
        "--trace-every",
        type=positive_int,
        metavar="N",
        help="steps per point of the cosine traces (default 10)",
    )
    add("--device", choices=("cpu", "cuda"), help="cpu or cuda (default: cuda if available)")
    add("--threads", type=positive_int, help="torch CPU threads (default: all cores, at most 4)")
    add("--out", type=Path, help=f"output directory (default: runs/{NAME}_<preset>)")
    add("--data-dir", type=Path, help="FashionMNIST idx files (default: Debian package)")
    add("--overwrite", action="store_true", help="retrain runs already stored in --out")
    add("--no-figures", action="store_true", help="skip the PNG figures")
    add("--no-progress", action="store_true", help="no progress bars")
    return parser


def resolve(args: argparse.Namespace, cat: dict[str, Method]) -> tuple[Preset, Path]:
    """The preset merged with the command-line overrides.

    Raises:
        ValueError: An unknown method, or ``--device cuda`` without a GPU.
    """
    preset = presets(cat)[args.preset]
    changes: dict[str, Any] = {}
    for field in ("epochs", "batch_size", "lr", "trace_every"):
        if getattr(args, field) is not None:
            changes[field] = getattr(args, field)
    for field in ("train_limit", "test_limit"):
        if getattr(args, field) is not _UNSET:
            changes[field] = getattr(args, field)
    device = device_of(args.device)
    cfg = replace(preset.config, device=device, **changes)
    methods = _ordered(resolve_names(args.methods, list(cat))) if args.methods else preset.methods
    seeds = tuple(dict.fromkeys(args.seeds)) if args.seeds else preset.seeds
    out = args.out if args.out is not None else default_out(f"{NAME}_{args.preset}")
    return replace(preset, config=cfg, methods=methods, seeds=seeds), out


def describe(name: str, cfg: RunConfig, preset: Preset) -> str:
    """One line saying what this invocation trains (after the command-line overrides)."""
    lim = "all 60 000" if cfg.train_limit is None else f"{cfg.train_limit}"
    tlim = "all 10 000" if cfg.test_limit is None else f"{cfg.test_limit}"
    return (
        f"Preset {name}: {lim} training images, {cfg.epochs} epochs, batch {cfg.batch_size}, "
        f"Adam lr {cfg.lr:g}; {tlim} test images; trunk width {cfg.width}; seeds "
        f"{list(preset.seeds)}; {len(preset.methods)} rows; device {cfg.device}."
    )


def _load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:  # pragma: no cover - not on every platform
        return "unknown"


def _previous(out: Path, fingerprint: dict[str, Any]) -> list[dict[str, Any]]:
    """The invocation log of ``out/results.json`` when it holds runs of the same settings."""
    try:
        old = json.loads((out / "results.json").read_text())["meta"]
    except (OSError, ValueError, KeyError):
        return []
    return list(old.get("invocations", [])) if old.get("config") == fingerprint else []


def warm_up(train: TaskData, test: TaskData, cfg: RunConfig, cat: dict[str, Method]) -> None:
    """Untimed throwaway steps, so that the first timed run does not pay the process's
    one-time costs (thread pools, allocator, kernels)."""
    n = min(len(train), 10 * cfg.batch_size)
    small = replace(cfg, epochs=1)
    for name in ("single class", "Mean", "MGDA", "MGDA (repr)"):
        if name in cat:
            run(cat[name], 0, small, train.take(slice(0, n)), test.take(slice(0, 64)), False)


def _plan(
    preset: Preset,
    cat: dict[str, Method],
    stored: dict[tuple[str, int], dict[str, Any]],
    overwrite: bool,
) -> tuple[list[Method], dict[str, str], list[tuple[Method, int]]]:
    """The runnable rows, the rows left out (with why) and the (row, seed) runs to train."""
    plan, left_out = [], {}
    for name in preset.methods:
        why = available(cat[name])
        if why is None:
            plan.append(cat[name])
        else:
            left_out[name] = f"not available in this mograd ({why})"
    fingerprint = preset.config.fingerprint()
    todo = []
    for seed in preset.seeds:
        for m in plan:
            old = stored.get((m.label, seed))
            fresh = (
                old is not None
                and old["config"] == fingerprint
                and old["mograd_args"] == m.describe
                and not overwrite
            )
            if not fresh:
                todo.append((m, seed))
    return plan, left_out, todo


def _train_all(
    todo: list[tuple[Method, int]],
    cfg: RunConfig,
    train: TaskData,
    test: TaskData,
    out: Path,
    stored: dict[tuple[str, int], dict[str, Any]],
    progress: bool,
) -> dict[str, str]:
    """Train every (row, seed) of ``todo``, storing each record; returns the failures."""
    failed: dict[str, str] = {}
    bar = tqdm(total=len(todo), desc=NAME, disable=not progress, dynamic_ncols=True)
    for method, seed in todo:
        try:
            rec = run(method, seed, cfg, train, test, progress=progress)
        except (RuntimeError, ValueError, FloatingPointError) as exc:  # one bad run
            failed[f"{method.label} seed {seed}"] = f"{type(exc).__name__}: {exc}"
            bar.write(f"{method.label} seed {seed} FAILED: {exc}", file=sys.stdout)
            bar.update(1)
            continue
        write_json(run_path(out, method.label, seed), rec)
        stored[(method.label, seed)] = rec
        bar.update(1)
        t = rec["test"]
        bar.write(
            f"{method.label} seed {seed}: class {t['class']['metric']:.2f}%, recon "
            f"{t['recon']['metric']:.2f} dB, angle {t['angle']['metric']:.2f} deg, flip "
            f"{t['flip']['metric']:.2f}%; epoch {min(rec['epoch_s']):.2f}s",
            file=sys.stdout,
        )
    bar.close()
    return failed


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; returns the exit status."""
    cat = catalogue()
    parser = build_parser(cat)
    args = parser.parse_args(argv)
    if args.list_methods:
        for label, m in cat.items():
            print(f"{label:28s} {m.describe}")
        return 0
    try:
        preset, out = resolve(args, cat)
    except ValueError as err:
        parser.error(str(err))
    cfg = preset.config
    threads = args.threads or max(1, min(4, os.cpu_count() or 1))
    torch.set_num_threads(threads)
    stored = {(r["method"], r["seed"]): r for r in load_runs(out)} if out.exists() else {}
    plan, left_out, todo = _plan(preset, cat, stored, args.overwrite)
    for name, why in left_out.items():
        print(f"skipping {name}: {why}", flush=True)
    print(
        f"{NAME}: preset {args.preset}, {len(plan)} rows x {len(preset.seeds)} seeds, "
        f"{len(todo)} to train; device {cfg.device}, {threads} threads, load {_load()}",
        flush=True,
    )
    fingerprint = cfg.fingerprint()
    meta: dict[str, Any] = {
        "benchmark": NAME,
        "preset": args.preset,
        "description": describe(args.preset, cfg, preset),
        "command": command_line(NAME, argv),
        "config": fingerprint,
        "recipe": RECIPE,
        "tasks": [vars(t) for t in TASKS],
        "device": cfg.device,
        "threads": threads,
        "environment": environment("torchvision", "matplotlib", "tqdm"),
        "methods": [m.label for m in plan],
        "mograd_args": {m.label: m.describe for m in plan},
        "seeds": list(preset.seeds),
        "left_out": left_out,
        "started_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "load_start": _load(),
    }
    t0 = time.perf_counter()
    meta["failed"] = {}
    if todo:
        train, test = load_tasks(cfg.train_limit, cfg.test_limit, args.data_dir)
        train, test = train.to(cfg.device), test.to(cfg.device)
        warm_up(train, test, cfg, cat)
        meta["failed"] = _train_all(todo, cfg, train, test, out, stored, not args.no_progress)
    labels = {m.label for m in plan}
    runs = [
        r
        for (label, seed), r in stored.items()
        if label in labels and seed in preset.seeds and r["config"] == fingerprint
    ]
    meta["wall_s"] = time.perf_counter() - t0
    meta["load_end"] = _load()
    this = {
        "started_utc": meta["started_utc"],
        "command": meta["command"],
        "trained": len(todo),
        "wall_s": meta["wall_s"],
        "load": meta["load_start"],
        "load_end": meta["load_end"],
    }
    meta["invocations"] = [*_previous(out, fingerprint), this]
    meta["sum_run_s"] = sum(r["duration_s"] for r in runs)
    meta["finished_utc"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    if not runs:
        print("nothing to report: no method could run", flush=True)
        return 1
    write_report(out, meta, runs, figures=not args.no_figures)
    print((out / "table.md").read_text())
    print(
        f"wrote {out}/results.json, table.md"
        + ("" if args.no_figures else ", delta_m.png, cosines.png")
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

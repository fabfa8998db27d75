"""Multi-Fashion: every weighting of mograd against linear scalarization, and traced fronts.

Two FashionMNIST items on one canvas (task 1: the top-left item, task 2: the bottom-right
one), a LeNet trunk shared by two linear heads, two cross-entropy losses, and every method
through ``mograd.MOWrapper``:

- linear scalarization (``LS``) on a grid of preference rays, one run per ray: the baseline
  front; the preference-vector weightings (``UPGrad-pref``, ``DualProj-pref``,
  ``AlignedMTL-pref``) and this kit's EPO-style ``RayBalance`` (``EPO-style-pref``) traced on
  the same rays (the runs :func:`mograd.pareto.trace_front` with ``rays=`` would make, stored
  one by one so that a run can be resumed; angles by :func:`mograd.pareto.ray_angles`);
- single-point methods: Mean, MGDA, MIB (raw, ``l2``, ``loss`` normalization), UPGrad,
  DualProj, IMTL-G, Aligned-MTL, CAGrad, PCGrad, Nash-MTL, Random, and the representation-mode
  (MGDA-UB) variant ``<method> (repr)`` of the Gram-based ones.

Data recipe (seed 0), model, metrics and results: ``docs/multi_fashion.md`` and
``benchmarks/mtlkit/``. Outputs in ``--out`` (default ``runs/multi_fashion_<preset>``):
``results.json`` (with the command line and the environment), ``table.md``, ``front.png``
and one JSON record per run under ``runs/`` (a rerun skips the runs already stored).

Examples:
    python -m benchmarks.multi_fashion --preset quick --threads 2       # CPU, ~10 min
    python -m benchmarks.multi_fashion --preset paper --device cuda
    python -m benchmarks.multi_fashion --methods LS MGDA UPGrad-pref --seeds 0 --epochs 1
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
from benchmarks.mtlkit.data import load_multi_fashion
from benchmarks.mtlkit.methods import Method, all_names, available, expand, resolve_names
from benchmarks.mtlkit.report import load_runs, run_path, write_json, write_report
from benchmarks.mtlkit.train import RunConfig, Tensors, run
from mograd import pareto

NAME = "multi_fashion"
_UNSET = object()

#: Representation-mode rows of the quick preset (all Gram-based ones in the paper preset).
QUICK_REPR = ("MGDA (repr)", "MIB (repr)", "UPGrad (repr)")


@dataclass(frozen=True)
class Preset:
    """Defaults of a preset (each can be overridden on the command line)."""

    config: RunConfig
    seeds: tuple[int, ...]
    rays: int
    methods: tuple[str, ...]
    description: str


def presets() -> dict[str, Preset]:
    """``quick`` (this CPU, minutes) and ``paper`` (Lin et al. 2019's scale, GPU)."""
    singles = [n for n in all_names() if not n.endswith(" (repr)") and "-pref" not in n]
    singles.remove("LS")
    fronts = ["LS", "UPGrad-pref", "DualProj-pref", "AlignedMTL-pref", "EPO-style-pref"]
    quick = Preset(
        RunConfig(
            epochs=2,
            batch_size=128,
            optimizer="adam",
            lr=2e-3,
            train_limit=8000,
            test_limit=4000,
            loss_limit=2000,
        ),
        (0, 1),
        5,
        tuple(["Mean", *[s for s in singles if s != "Mean"], *QUICK_REPR, *fronts]),
        "quick preset (CPU): 8 000 training pairs, 2 epochs, batch 128, Adam lr 2e-3, "
        "4 000 test pairs",
    )
    paper = Preset(
        RunConfig(
            epochs=100,
            batch_size=256,
            optimizer="sgd",
            lr=1e-3,
            milestones=(15, 30, 45, 60, 75, 90),
            train_limit=None,
            test_limit=None,
            loss_limit=120000,
        ),
        (0, 1, 2),
        5,
        tuple(["Mean", *[n for n in all_names() if n != "Mean"]]),
        "paper preset (Lin et al. 2019's setting): all 120 000 training pairs, 100 epochs, "
        "batch 256, SGD lr 1e-3 momentum 0.9 halved every 15 epochs, all 20 000 test pairs",
    )
    return {"quick": quick, "paper": paper}


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``benchmarks/multi_fashion.py``."""
    p = presets()
    q, pp = p["quick"], p["paper"]
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.multi_fashion",
        description=(
            "Multi-Fashion (two overlaid FashionMNIST items, one task each): every weighting "
            "of mograd.MOWrapper against linear scalarization on preference rays, fronts "
            "traced along the rays, accuracies, hypervolumes, angles to the rays and time per "
            "epoch relative to Mean. Writes results.json, table.md and front.png to --out; "
            "runs already stored there are not retrained."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "presets:\n"
            f"  quick  {q.description};\n"
            f"         seeds {' '.join(map(str, q.seeds))}, {q.rays} rays, representation "
            f"rows {', '.join(QUICK_REPR)}\n"
            f"  paper  {pp.description};\n"
            f"         seeds {' '.join(map(str, pp.seeds))}, {pp.rays} rays, every method\n"
            f"methods: {', '.join(all_names())}\n"
            "  (LS and *-pref are fronts: one run per ray; '<m> (repr)' is representation "
            "mode)\n"
            "docs: docs/multi_fashion.md"
        ),
    )
    parser.add_argument("--preset", choices=tuple(p), default="quick", help="default: quick")
    parser.add_argument(
        "--methods", nargs="+", metavar="M", help="methods to run (default: the preset's)"
    )
    parser.add_argument("--seeds", nargs="+", type=seed_value, metavar="S", help="training seeds")
    parser.add_argument("--epochs", type=positive_int, help="training epochs")
    parser.add_argument(
        "--train-limit",
        type=count_or_all,
        default=_UNSET,
        metavar="N",
        help="train on a fixed random subset of N of the 120 000 pairs ('all' for all)",
    )
    parser.add_argument(
        "--test-limit",
        type=count_or_all,
        default=_UNSET,
        metavar="N",
        help="evaluate on a fixed random subset of N of the 20 000 test pairs ('all')",
    )
    parser.add_argument(
        "--rays", type=positive_int, help="preference rays of the fronts (default 5)"
    )
    parser.add_argument("--batch-size", type=positive_int, help="mini-batch size")
    parser.add_argument("--lr", type=positive_float, help="learning rate of the inner optimizer")
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), help="cpu or cuda (default: cuda if available)"
    )
    parser.add_argument(
        "--threads", type=positive_int, help="torch CPU threads (default: all cores, at most 4)"
    )
    parser.add_argument(
        "--out", type=Path, help=f"output directory (default: runs/{NAME}_<preset>)"
    )
    parser.add_argument(
        "--cache-dir", type=Path, help="Multi-Fashion cache (default: data/multi_fashion)"
    )
    parser.add_argument(
        "--data-dir", type=Path, help="FashionMNIST idx files (default: Debian package)"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="retrain runs already stored in --out"
    )
    parser.add_argument("--no-figures", action="store_true", help="skip front.png")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def resolve(args: argparse.Namespace) -> tuple[Preset, Path]:
    """The preset merged with the command-line overrides.

    Raises:
        ValueError: An unknown method, or ``--device cuda`` without a GPU.
    """
    preset = presets()[args.preset]
    cfg = preset.config
    changes: dict[str, Any] = {}
    for field in ("epochs", "batch_size", "lr"):
        if getattr(args, field) is not None:
            changes[field] = getattr(args, field)
    for field in ("train_limit", "test_limit"):
        if getattr(args, field) is not _UNSET:
            changes[field] = getattr(args, field)
    device = device_of(args.device)
    changes["device"] = device
    cfg = replace(cfg, **changes)
    methods = tuple(resolve_names(args.methods)) if args.methods else preset.methods
    seeds = tuple(dict.fromkeys(args.seeds)) if args.seeds else preset.seeds
    rays = args.rays or preset.rays
    out = args.out if args.out is not None else default_out(f"{NAME}_{args.preset}")
    return replace(preset, config=cfg, methods=methods, seeds=seeds, rays=rays), out


def _previous_invocations(out: Path, fingerprint: dict[str, Any]) -> list[dict[str, Any]]:
    """The invocation log of ``out/results.json`` when it holds runs of the same settings
    (so a rerun that only rewrites the report keeps the training invocation's wall time)."""
    try:
        old = json.loads((out / "results.json").read_text())["meta"]
    except (OSError, ValueError, KeyError):
        return []
    if old.get("config") != fingerprint:
        return []
    if "invocations" in old:
        return list(old["invocations"])
    if old.get("trained_runs_this_invocation"):  # a results.json written before the log
        return [
            {
                "started_utc": old["started_utc"],
                "command": old["command"],
                "trained": old["trained_runs_this_invocation"],
                "wall_s": old["wall_s"],
            }
        ]
    return []


def warm_up(data: Tensors, cfg: RunConfig, rays: Any) -> None:
    """Untimed throwaway steps (exact and representation mode), so that the first timed run,
    Mean's, does not pay the process's one-time costs (thread pools, allocator, kernels)."""
    n = min(len(data.y_train), 20 * cfg.batch_size)
    small = Tensors(data.x_train[:n], data.y_train[:n], data.x_test[:256], data.y_test[:256])
    for name in ("Mean", "MGDA", "MGDA (repr)"):
        run(expand(name, rays)[0], 0, replace(cfg, epochs=1), small, progress=False)


def describe(name: str, cfg: RunConfig, preset: Preset) -> str:
    """One line saying what this invocation trains (after the command-line overrides)."""
    lim = "all 120 000" if cfg.train_limit is None else f"{cfg.train_limit}"
    tlim = "all 20 000" if cfg.test_limit is None else f"{cfg.test_limit}"
    opt = "Adam" if cfg.optimizer == "adam" else "SGD (momentum 0.9)"
    sched = f", lr halved at epochs {list(cfg.milestones)}" if cfg.milestones else ""
    return (
        f"Preset {name}: {lim} training pairs, {cfg.epochs} epochs, batch {cfg.batch_size}, "
        f"{opt} lr {cfg.lr:g}{sched}; {tlim} test pairs; seeds {list(preset.seeds)}; "
        f"{preset.rays} preference rays; device {cfg.device}."
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        preset, out = resolve(args)
    except ValueError as err:
        parser.error(str(err))
    cfg = preset.config
    threads = args.threads or max(1, min(4, os.cpu_count() or 1))
    torch.set_num_threads(threads)
    rays = pareto.preference_rays(preset.rays)

    plan: list[Method] = []
    left_out: dict[str, str] = {}
    for name in preset.methods:
        runs_of = expand(name, rays)
        why = available(runs_of[0])
        if why is not None:
            left_out[name] = f"not available in this mograd ({why})"
            continue
        plan += runs_of
    if left_out:
        for name, why in left_out.items():
            print(f"skipping {name}: {why}", flush=True)

    stored = {(r["method"], r["seed"]): r for r in load_runs(out)} if out.exists() else {}
    fingerprint = cfg.fingerprint()
    todo = []
    for seed in preset.seeds:
        for m in plan:
            old = stored.get((m.label, seed))
            reusable = (
                old is not None
                and old["config"] == fingerprint
                and old["mograd_args"] == m.describe
                and not args.overwrite
            )
            if not reusable:
                todo.append((m, seed))
    print(
        f"{NAME}: preset {args.preset}, {len(plan)} runs x {len(preset.seeds)} seeds, "
        f"{len(todo)} to train ({len(plan) * len(preset.seeds) - len(todo)} stored in {out}); "
        f"device {cfg.device}, {threads} threads",
        flush=True,
    )
    meta: dict[str, Any] = {
        "benchmark": NAME,
        "preset": args.preset,
        "description": describe(args.preset, cfg, preset),
        "command": command_line("multi_fashion", argv),
        "config": fingerprint,
        "device": cfg.device,
        "threads": threads,
        "environment": environment("torchvision", "matplotlib", "tqdm"),
        "methods": list(dict.fromkeys(m.group for m in plan)),
        "seeds": list(preset.seeds),
        "rays": rays.tolist(),
        "left_out": left_out,
        "started_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    t0 = time.perf_counter()
    failed: dict[str, str] = {}
    meta["failed"] = failed
    if todo:
        train, test, info = load_multi_fashion(cache_dir=args.cache_dir, data_dir=args.data_dir)
        meta["data"] = {k: v for k, v in info.items() if k != "cache"}
        x, y = train.subset(cfg.train_limit, seed=0).tensors(cfg.device)
        xt, yt = test.subset(cfg.test_limit, seed=1).tensors(cfg.device)
        data = Tensors(x, y, xt, yt)
        warm_up(data, cfg, rays)
        bar = tqdm(total=len(todo), desc=NAME, disable=args.no_progress, dynamic_ncols=True)
        for method, seed in todo:
            try:
                rec = run(method, seed, cfg, data, progress=not args.no_progress)
            except (RuntimeError, ValueError, FloatingPointError) as exc:  # one bad run
                failed[f"{method.label} seed {seed}"] = f"{type(exc).__name__}: {exc}"
                bar.write(f"{method.label} seed {seed} FAILED: {exc}", file=sys.stdout)
                bar.update(1)
                continue
            write_json(run_path(out, method.label, seed), rec)
            stored[(method.label, seed)] = rec
            bar.update(1)
            bar.write(
                f"{method.label} seed {seed}: acc {rec['acc'][0] * 100:.2f} / "
                f"{rec['acc'][1] * 100:.2f}, epoch {sum(rec['epoch_s']) / cfg.epochs:.1f}s",
                file=sys.stdout,
            )
        bar.close()
    labels = {m.label for m in plan}
    runs = [
        r
        for (label, seed), r in stored.items()
        if label in labels and seed in preset.seeds and r["config"] == fingerprint
    ]
    meta["wall_s"] = time.perf_counter() - t0
    meta["trained_runs_this_invocation"] = len(todo)
    this = {
        "started_utc": meta["started_utc"],
        "command": meta["command"],
        "trained": len(todo),
        "wall_s": meta["wall_s"],
    }
    meta["invocations"] = [*_previous_invocations(out, fingerprint), this]
    meta["sum_run_s"] = sum(r["duration_s"] for r in runs)
    meta["n_runs"] = len(runs)
    meta["finished_utc"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    if not runs:
        print("nothing to report: no method could run", flush=True)
        return 1
    write_report(out, meta, runs, figures=not args.no_figures)
    print((out / "table.md").read_text())
    print(f"wrote {out}/results.json, table.md" + ("" if args.no_figures else ", front.png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

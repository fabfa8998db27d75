"""The command line shared by ``ib_fmnist.py`` and ``ib_cifar10.py``."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from benchmarks._common import (
    RESULTS,
    RUNS,
    count_or_all,
    default_out,
    device_of,
    non_negative_float,
    positive_float,
    positive_int,
    reference,
    seed_value,
)

from . import attacks as atk
from .losses import KL_REDUCTIONS
from .methods import ALL_METHODS, KNOWN_METHODS, canonical_name
from .report import load_runs, run_path, weights_summary, write_json, write_report
from .train import GRAMS, NORMALIZATIONS, SCHEDULES, RunConfig, prepare_data, run
from .weights import attack_saved, load_weights, weights_file

REPO_ROOT = Path(__file__).resolve().parents[2]

PRESETS = ("quick", "paper", "resnet-cpu")
_UNSET = object()  # default of the limit options, whose value None means "all"
# The resnet-cpu preset's methods: does a ResNet-18 lose tens of points at eps = 1/255?
RESNET_CPU_METHODS = ("RES18", "VIB", "MIB", "MIB-loss")


@dataclass(frozen=True)
class Preset:
    """Defaults of one preset (every field can be overridden on the command line).

    Attributes:
        config: The run configuration.
        seeds: Training seeds.
        methods: Methods to run.
        description: One line describing the preset (printed in table.md).
    """

    config: RunConfig
    seeds: tuple[int, ...]
    methods: tuple[str, ...]
    description: str


def presets(dataset: str) -> dict[str, Preset]:
    """The presets of a dataset.

    ``quick`` (CPU, minutes), ``paper`` (the paper's, GPU) and, for FashionMNIST, ``resnet-cpu``
    (the paper's ResNet-18 trained to about 90% on 10 000 images with a one-cycle schedule and
    bf16 autocast, attacked on 1000 test images; hours on a 2-core CPU, docs/benchmarks.md).
    """
    extra: dict[str, Preset] = {}
    if dataset == "fashion_mnist":
        quick = RunConfig(
            dataset=dataset,
            backbone="cnn",
            epochs=5,
            train_limit=10000,
            test_limit=500,
            curve_limit=200,
            eps=(1 / 255, 2 / 255, 4 / 255, 8 / 255),
        )
        # Calibrated on this 2-core CPU (docs/benchmarks.md): RES18 reaches 90.0% clean on
        # the 1000 test images after 4 one-cycle epochs on 10 000 images.
        resnet_cpu = RunConfig(
            dataset=dataset,
            backbone="resnet18",
            epochs=4,
            train_limit=10000,
            test_limit=1000,
            curve_limit=100,
            curve_attacks=(),
            schedule="onecycle",
            precision="bf16",
            eps=(1 / 255, 2 / 255, 4 / 255, 8 / 255),
        )
        extra["resnet-cpu"] = Preset(
            resnet_cpu,
            (0,),
            RESNET_CPU_METHODS,
            "resnet-cpu preset: the paper's ResNet-18 trained on a CPU",
        )
        paper = RunConfig(dataset=dataset, backbone="resnet18", epochs=40, curve_limit=1000)
    else:
        quick = RunConfig(
            dataset=dataset,
            backbone="cnn",
            epochs=5,
            train_limit=20000,
            test_limit=1000,
            curve_limit=200,
            cnn_width=32,
        )
        paper = RunConfig(dataset=dataset, backbone="resnet18", epochs=150, curve_limit=1000)
    return {
        "quick": Preset(quick, (0, 1), ALL_METHODS, "quick preset: small CNN, reduced data, CPU"),
        "paper": Preset(paper, (0, 1, 2), ALL_METHODS, "paper preset: ResNet-18, full data"),
        **extra,
    }


def _eps(text: str) -> float:
    try:
        return atk.parse_eps(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def build_parser(dataset: str, prog: str) -> argparse.ArgumentParser:
    """The argument parser of one benchmark entry point."""
    label = {"fashion_mnist": "FashionMNIST", "cifar10": "CIFAR-10"}[dataset]
    p = presets(dataset)
    q, pp = p["quick"].config, p["paper"].config
    paper_eps = atk.SETTINGS[dataset]
    quick_eps = " ".join(atk.eps_label(e) for e in q.eps) or atk.eps_label(paper_eps.eps)
    rc = p.get("resnet-cpu")
    resnet_line = (
        f"  resnet-cpu  ResNet-18, {rc.config.epochs} {rc.config.schedule} epochs on "
        f"{rc.config.train_limit} training images ({rc.config.precision} autocast), "
        f"{rc.config.test_limit} attacked test images, seed 0, {' '.join(rc.methods)}, "
        f"eps {' '.join(atk.eps_label(e) for e in rc.config.eps)} (CPU, --threads 1 on a "
        "shared machine; hours)\n"
        if rc
        else ""
    )
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            f"Information-bottleneck methods on {label} under seven adversarial attacks "
            "(the MIB paper's experiment). Trains every (method, seed), evaluates clean and "
            "adversarial accuracy and writes results.json, table.md and figures to --out. "
            "Runs already stored in --out are not retrained. Results go to runs/<name> "
            "(git-ignored) by default; the committed reference results live in "
            "benchmarks/results/<name> and are regenerated with --out benchmarks/results/<name>. "
            "At the end the run's table is compared with the committed reference."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            f"presets:\n"
            f"  quick  {q.backbone} backbone, {q.epochs} epochs, {q.train_limit} training and "
            f"{q.test_limit} test images, seeds 0 1, all methods, eps {quick_eps} (CPU)\n"
            f"  paper  ResNet-18, {pp.epochs} epochs, full data, seeds 0 1 2, all methods (GPU)\n"
            f"{resnet_line}"
            f"methods: {', '.join(KNOWN_METHODS)}\n"
            f"  (MIB-l2, MIB-loss, MGDA-l2, MIB-l2-orig: gradient-normalized variants, an "
            f"interpretation the paper does not state; MIB-l2-orig is not run by default)\n"
            f"attacks: {', '.join(atk.ATTACKS)} (paper budget eps "
            f"{atk.eps_label(paper_eps.eps)}, alpha {atk.eps_label(paper_eps.alpha)}, "
            f"{paper_eps.steps} steps; other budgets alpha = eps/4, {atk.EXTRA_STEPS} steps)\n"
            f"kl-reduction invariance (docs/benchmarks.md):\n"
            f"  {prog} --methods MIB-loss --seeds 0 --kl-reduction mean\n"
            f"beta sensitivity (paper Tables 3/4):\n"
            f"  {prog} --preset paper --beta 0.01 --methods VIB NIB VIB-squared NIB-squared"
        ),
    )
    parser.add_argument(
        "--preset", choices=tuple(p), default="quick", help="base settings (default: quick)"
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        metavar="M",
        help="methods to run (default: the preset's); quote names with spaces, e.g. 'MIB w.o. s'",
    )
    parser.add_argument(
        "--seeds",
        nargs="+",
        type=seed_value,
        metavar="S",
        help="training seeds (quick: 0 1, paper: 0 1 2)",
    )
    parser.add_argument("--epochs", type=positive_int, help="training epochs")
    parser.add_argument(
        "--beta",
        type=non_negative_float,
        help="Lagrange multiplier of VIB/NIB and their squared forms (1e-4)",
    )
    parser.add_argument(
        "--train-limit",
        type=count_or_all,
        default=_UNSET,
        metavar="N",
        help="train on a fixed random subset of N images ('all' for all)",
    )
    parser.add_argument(
        "--test-limit",
        type=count_or_all,
        default=_UNSET,
        metavar="N",
        help="evaluate and attack a fixed random subset of N test images",
    )
    parser.add_argument(
        "--curve-limit",
        type=positive_int,
        metavar="N",
        help="test images for the per-epoch FGSM/PGD curves",
    )
    parser.add_argument(
        "--attacks",
        nargs="+",
        metavar="A",
        help=f"attacks after training (default: all of {' '.join(atk.ATTACKS)})",
    )
    parser.add_argument(
        "--eps",
        nargs="+",
        type=_eps,
        metavar="E",
        help="attack budgets, e.g. 1/255 8/255 (quick: 1/255 2/255 4/255 8/255; paper: the "
        "paper's); the first gets every attack, the others --eps-attacks; the paper's budget "
        "keeps its alpha and steps, any other gets alpha = eps/4 and 10 steps",
    )
    parser.add_argument(
        "--eps-attacks",
        nargs="+",
        metavar="A",
        help="attacks at the budgets after the first (default: FGSM PGD)",
    )
    parser.add_argument(
        "--kl-reduction",
        choices=KL_REDUCTIONS,
        help="KL over the K dimensions in the training loss: sum (default, the paper's form) "
        "or mean (= sum / K, a hidden beta for VIB and raw MIB)",
    )
    parser.add_argument(
        "--gram",
        choices=GRAMS,
        help="parameters of the min-norm problem: all (default) or encoder (the paper's eq. 7)",
    )
    parser.add_argument("--backbone", choices=("cnn", "resnet18"), help="override the backbone")
    parser.add_argument("--batch-size", type=positive_int, help="mini-batch size (128)")
    parser.add_argument("--lr", type=positive_float, help="Adam learning rate (1e-3)")
    parser.add_argument(
        "--schedule",
        choices=SCHEDULES,
        help="learning-rate schedule, stepped per mini-batch, the same for every method: "
        "constant (the paper's), onecycle (warm-up to --lr, then cosine decay) or cosine",
    )
    parser.add_argument(
        "--precision",
        choices=atk.PRECISIONS,
        help="fp32 (default) or bf16: forward passes of training, evaluation and attacks "
        "under bfloat16 autocast (float32 weights and losses; about 2.3x faster ResNet-18 "
        "on a CPU with AMX)",
    )
    parser.add_argument(
        "--eval-precision",
        choices=atk.PRECISIONS,
        help="precision of evaluation and attacks only (default: --precision); with "
        "--attack-only, re-attacks saved weights in another precision; adds _eval-<p> to "
        "the default output name",
    )
    parser.add_argument(
        "--normalization",
        choices=NORMALIZATIONS,
        help="where the mean/std normalization is when the trained models are attacked: "
        "inside the model (default; the attacks see images in [0, 1]) or outside (the "
        "attacks get normalized images and clamp them to [0, 1]; a diagnostic, see "
        "docs/benchmarks.md); adds _norm-outside to the default output name",
    )
    parser.add_argument(
        "--weights-dir",
        type=Path,
        help="where trained weights are saved and --attack-only reads them (default: "
        "runs/<name>/weights, or <out>/weights for an --out outside benchmarks/results; "
        "a ResNet-18 is about 45 MB, so weights never go to the committed results)",
    )
    parser.add_argument(
        "--attack-only",
        action="store_true",
        help="do not train: load the saved weights of every (method, seed) and rerun the "
        "evaluation under this command's attacks, budgets, --test-limit and --normalization",
    )
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default=None,
        help="cpu or cuda (default: cuda when available)",
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        help="torch CPU threads (default: all cores, at most 4; results depend slightly on it)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="dataset location (default: Debian package / ~/.cache/mograd/data)",
    )
    if dataset == "cifar10":
        parser.add_argument(
            "--no-verify-md5",
            action="store_true",
            help="accept CIFAR-10 batches whose md5 differs from the official "
            "archive (hand-made test data)",
        )
    parser.add_argument(
        "--out",
        type=Path,
        help="output directory (default: runs/<name>, git-ignored; <name> = "
        "<script>_<preset>[_beta<B>][_kl-mean][_gram-encoder][_norm-outside][_eval-<p>]); "
        "--out benchmarks/results/<name> regenerates the committed reference",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="retrain runs that are already stored in --out"
    )
    parser.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    return parser


def default_threads() -> int:
    """CPU threads for torch: all cores, at most 4 (a fixed number, so reruns reproduce).

    Pass ``--threads 1`` on a machine that other jobs share: more intra-op threads than idle
    cores make every thread wait for the slowest one.
    """
    return max(1, min(4, os.cpu_count() or 1))


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("torch", "torchvision", "torchattacks", "numpy", "matplotlib", "tqdm", "mograd"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            if pkg == "mograd":
                try:
                    import mograd

                    out[pkg] = str(getattr(mograd, "__version__", "unknown"))
                except ImportError:
                    out[pkg] = "not importable"
            else:
                out[pkg] = "not installed"
    return out


def _device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def resolve(args: argparse.Namespace, dataset: str, name: str) -> tuple[Preset, Path]:
    """Merge the chosen preset with the command-line overrides.

    Raises:
        ValueError: Bad values (unknown method or attack, cuda without a GPU, ...).
    """
    preset = presets(dataset)[args.preset]
    cfg = preset.config
    changes: dict[str, Any] = {}
    for field in (
        "epochs",
        "beta",
        "curve_limit",
        "backbone",
        "batch_size",
        "lr",
        "kl_reduction",
        "gram",
        "schedule",
        "normalization",
        "precision",
        "eval_precision",
    ):
        value = getattr(args, field)
        if value is not None:
            changes[field] = value
    for field in ("train_limit", "test_limit"):
        if getattr(args, field) is not _UNSET:
            changes[field] = getattr(args, field)
    if args.attacks:
        changes["attacks"] = tuple(atk.canonical_attack(a) for a in args.attacks)
    if args.eps:
        changes["eps"] = tuple(dict.fromkeys(args.eps))
    if args.eps_attacks:
        changes["eps_attacks"] = tuple(atk.canonical_attack(a) for a in args.eps_attacks)
    device = device_of(args.device)
    changes["device"] = device
    changes["data_dir"] = str(args.data_dir) if args.data_dir is not None else None
    changes["verify_md5"] = not getattr(args, "no_verify_md5", False)
    cfg = replace(cfg, **changes)
    methods = tuple(dict.fromkeys(canonical_name(m) for m in (args.methods or preset.methods)))
    seeds = tuple(dict.fromkeys(args.seeds)) if args.seeds else preset.seeds
    out = args.out if args.out is not None else default_out(result_name(args, cfg, name))
    return replace(preset, config=cfg, methods=methods, seeds=seeds), out


def result_name(args: argparse.Namespace, cfg: RunConfig, name: str) -> str:
    """``<script>_<preset>[_beta<B>][_kl-mean][_gram-encoder]``: the default output directory
    under ``runs/`` and the name of the committed reference under ``benchmarks/results/``."""
    suffix = "" if cfg.beta == RunConfig.beta else f"_beta{cfg.beta:g}"
    if cfg.kl_reduction != RunConfig.kl_reduction:
        suffix += f"_kl-{cfg.kl_reduction}"
    if cfg.gram != RunConfig.gram:
        suffix += f"_gram-{cfg.gram}"
    if cfg.normalization != RunConfig.normalization:
        suffix += f"_norm-{cfg.normalization}"
    if cfg.eval_precision not in (None, cfg.precision):
        suffix += f"_eval-{cfg.eval_precision}"
    return f"{name}_{args.preset}{suffix}"


def weights_dir(args: argparse.Namespace, cfg: RunConfig, name: str, out: Path) -> Path:
    """Where the trained weights go (training) or come from (``--attack-only``).

    ``--weights-dir`` when given; otherwise ``runs/<training name>/weights`` (the training
    name is :func:`result_name` without the ``_norm-...`` and ``_eval-...`` suffixes, so an
    attack-only run finds the weights of the training run), except for a training
    run whose ``--out`` lies outside ``runs/`` and ``benchmarks/results/`` (e.g. a temporary
    directory), which keeps them in ``<out>/weights``.
    """
    if args.weights_dir is not None:
        return Path(args.weights_dir)
    plain = replace(cfg, normalization=RunConfig.normalization, eval_precision=None)
    trained = result_name(args, plain, name)
    default = RUNS / trained / "weights"
    if args.attack_only:
        return default
    resolved = Path(out).resolve()
    inside = any(resolved.is_relative_to(d.resolve()) for d in (RUNS, RESULTS))
    return default if inside else Path(out) / "weights"


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "--"
    return f"{value:.{digits}f}"


def compare_with_reference(out: Path, ref: Path | None) -> str:
    """Markdown: this run's numbers next to the committed reference's, and how they differ.

    Args:
        out: This run's output directory (with ``results.json``).
        ref: The committed reference directory, or None.

    Returns:
        Text for the console (also written to ``out/reference_comparison.md``).
    """
    if ref is None:
        return "No committed reference results for this configuration (benchmarks/results)."
    if Path(out).resolve() == Path(ref).resolve():
        return f"This run wrote the committed reference itself ({ref})."
    mine = json.loads((Path(out) / "results.json").read_text())
    theirs = json.loads((Path(ref) / "results.json").read_text())
    lines = [f"This run ({out}) next to the committed reference ({ref}):", ""]
    cfg_a, cfg_b = mine["meta"].get("config", {}), theirs["meta"].get("config", {})
    differ = sorted(k for k in set(cfg_a) | set(cfg_b) if cfg_a.get(k) != cfg_b.get(k))
    if differ:
        lines.append(
            "Settings differ from the reference's in: "
            + ", ".join(f"{k} ({cfg_a.get(k)!r} here, {cfg_b.get(k)!r} there)" for k in differ)
            + "; numbers are not expected to match."
        )
        lines.append("")
    sa, sb = mine["summary"], theirs["summary"]
    ka, kb = mine.get("test_kl", {}), theirs.get("test_kl", {})
    rows = [r for r in ("NONE", "FGSM", "PGD") if any(r in c for c in sa.values())]
    head = " | ".join(f"{r} here / ref" for r in rows)
    lines += [f"| method | {head} | test KL here / ref |", "|---|" + "---|" * (len(rows) + 1)]
    worst = (0.0, "", "")
    for m in sa:
        cells = []
        for r in rows:
            a = sa[m].get(r, {}).get("mean")
            b = sb.get(m, {}).get(r, {}).get("mean")
            cells.append(f"{_fmt(a)} / {_fmt(b)}")
            if a is not None and b is not None and abs(a - b) > worst[0]:
                worst = (abs(a - b), m, r)
        a_kl = ka.get(m, {}).get("mean")
        b_kl = kb.get(m, {}).get("mean")
        cells.append(f"{_fmt(a_kl, 1)} / {_fmt(b_kl, 1)}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    missing = [m for m in sb if m not in sa]
    if missing:
        lines += ["", "In the reference only: " + ", ".join(missing)]
    if worst[1]:
        lines += [
            "",
            f"Largest difference of a mean accuracy: {worst[0]:.2f} points ({worst[1]}, "
            f"{worst[2]}). Same settings and thread count reproduce the numbers up to "
            "floating-point reduction order (a few tenths of a point per cell).",
        ]
    return "\n".join(lines) + "\n"


def _meta(
    args: argparse.Namespace,
    preset: Preset,
    name: str,
    dataset: str,
    prog: str,
    argv: Sequence[str] | None,
    threads: int,
) -> dict[str, Any]:
    """The run's record of itself: command, settings, environment."""
    cfg = preset.config
    argv_list = list(sys.argv[1:] if argv is None else argv)
    extra = "" if cfg.schedule == RunConfig.schedule else f", {cfg.schedule} lr schedule"
    if cfg.precision != RunConfig.precision:
        extra += f", {cfg.precision} autocast"
    if cfg.evaluation_precision != cfg.precision:
        extra += f", {cfg.evaluation_precision} evaluation and attacks"
    if cfg.normalization != RunConfig.normalization:
        extra += f", normalization {cfg.normalization} the model when attacked"
    return {
        "benchmark": name,
        "dataset": dataset,
        "preset": args.preset,
        "description": (
            f"{preset.description}: {cfg.backbone}, {cfg.epochs} epochs{extra}, "
            f"beta {cfg.beta:g}, train {cfg.train_limit or 'all'}, "
            f"test {cfg.test_limit or 'all'}."
        ),
        "command": f"{prog} " + " ".join(shlex.quote(a) for a in argv_list),
        "config": cfg.fingerprint(),
        "methods": list(preset.methods),
        "seeds": list(preset.seeds),
        "attack_settings": vars(cfg.budgets()[0]),
        "budgets": [{"label": atk.eps_label(b.eps), **vars(b)} for b in cfg.budgets()],
        "device": cfg.device,
        "device_name": _device_name(cfg.device),
        "threads": threads,
        "versions": _versions(),
        "attack_only": bool(args.attack_only),
        "started_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _todo(
    parser: argparse.ArgumentParser, args: argparse.Namespace, preset: Preset, out: Path
) -> tuple[list[tuple[str, int]], int]:
    """The (method, seed) pairs still to run, and how many are stored (exits on a clash)."""
    stored = {(r["method"], r["seed"]): r for r in load_runs(out)} if out.exists() else {}
    clash = [k for k, r in stored.items() if r["config"] != preset.config.fingerprint()]
    if clash and not args.overwrite:
        parser.error(
            f"{out} holds runs made with different settings ({clash[0][0]}, seed {clash[0][1]}, "
            "...); choose another --out or pass --overwrite to retrain them"
        )
    todo = [
        (m, s)
        for m in preset.methods
        for s in preset.seeds
        if args.overwrite or (m, s) not in stored
    ]
    return todo, len(stored)


def _check_weights(wdir: Path, todo: list[tuple[str, int]], cfg: RunConfig) -> str | None:
    """For ``--attack-only``: why the saved models cannot be used (missing, or trained with
    other settings), or None when every one loads."""
    for method, seed in todo:
        try:
            load_weights(weights_file(wdir, method, seed), method, seed, cfg)
        except FileNotFoundError as err:
            return f"--attack-only: {err}, or pass --weights-dir"
        except ValueError as err:
            return f"--attack-only: {err}"
    return None


def main(
    dataset: str, name: str, argv: Sequence[str] | None = None, *, compare: bool = True
) -> int:
    """Run a benchmark from the command line.

    Args:
        dataset: ``"fashion_mnist"`` or ``"cifar10"``.
        name: Short benchmark name (``"ib_fmnist"``), used for the default output directory.
        argv: Arguments (default: ``sys.argv[1:]``).
        compare: At the end, compare with the committed reference results.

    Returns:
        Process exit status.
    """
    prog = f"python -m benchmarks.{name}"
    parser = build_parser(dataset, prog)
    args = parser.parse_args(argv)
    try:
        preset, out = resolve(args, dataset, name)
    except ValueError as err:
        parser.error(str(err))
    cfg = preset.config
    threads = args.threads or default_threads()
    torch.set_num_threads(threads)
    wdir = weights_dir(args, cfg, name, out)
    todo, n_stored = _todo(parser, args, preset, out)
    problem = _check_weights(wdir, todo, cfg) if args.attack_only else None
    if problem:
        parser.error(problem)
    verb = "to attack from saved weights" if args.attack_only else "to train"
    print(
        f"{name}: preset {args.preset}, {len(preset.methods)} methods x {len(preset.seeds)} "
        f"seeds, {len(todo)} {verb} ({n_stored} stored in {out}); device {cfg.device}, "
        f"{threads} threads; weights in {wdir}",
        flush=True,
    )
    meta = _meta(args, preset, name, dataset, prog, argv, threads)
    t0 = time.perf_counter()
    if todo:
        data = prepare_data(cfg)
        for i, (method, seed) in enumerate(todo, 1):
            if args.attack_only:
                result = attack_saved(method, seed, cfg, wdir, data=data)
            else:
                path = weights_file(wdir, method, seed)
                result = run(method, seed, cfg, data=data, progress=not args.no_progress,
                             weights_path=path)  # fmt: skip
            write_json(run_path(out, method, seed), result)
            final = " ".join(f"{k} {v:.1f}" for k, v in result["final"].items())
            print(
                f"[{i}/{len(todo)}] {method} seed {seed}: {final} ({result['duration_s']:.0f}s)",
                flush=True,
            )
            write_report(out, meta, figures=False)
    meta["finished_utc"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    meta["wall_s_this_invocation"] = time.perf_counter() - t0
    runs = load_runs(out)
    meta["total_run_s"] = sum(r["duration_s"] for r in runs)
    write_report(out, meta, figures=not args.no_figures)
    print((out / "table.md").read_text())
    summary = weights_summary(runs)
    if summary:
        print(summary)
    print(
        f"wrote {out}/results.json, table.md"
        + ("" if args.no_figures else ", info_plane.png, curves.png, ablation.png, weights.png")
        + (", eps.png" if len(cfg.budgets()) > 1 and not args.no_figures else "")
    )
    if not compare:
        return 0
    ref = reference(result_name(args, cfg, name))
    comparison = compare_with_reference(out, ref)
    if ref is None or Path(out).resolve() != ref.resolve():
        (out / "reference_comparison.md").write_text(comparison)
    print(comparison)
    return 0

"""No hidden beta: the KL's reduction over the K dimensions, and the Gram matrix's parameters.

Trains the quick preset's FashionMNIST CNN (``ib_fmnist.py``, one seed; 15 000 training and
1000 test images by default, more than the quick preset's 10 000 and 500) three times:

* ``sum_all``: KL summed over the K = 128 dimensions (the paper's and Alemi et al.'s form),
  min-norm problem on the gradients of all parameters (the default);
* ``mean_all``: the KL averaged over the dimensions instead (= sum / K). For VIB this divides
  beta by K; for MIB on raw gradients it changes the min-norm weights; for the
  gradient-normalized variants (``MIB-l2``, ``MIB-loss``, an interpretation the paper does not
  state) the step is invariant to rescaling a loss, so the training trajectory must not change
  (test KL and accuracy within 2%);
* ``sum_encoder``: the min-norm problem on the encoder's parameters only (the paper's eq. 7
  differentiates with respect to the encoder), for the multi-objective methods.

Each configuration is an ordinary, resumable ``ib_fmnist.py`` result directory under
``--out``; this script adds ``table.md``, ``results.json`` and ``invariance.png`` on top.
See docs/benchmarks.md. Run ``python -m benchmarks.ib_invariance --help``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks._common import command_line, default_out, environment, reference
from benchmarks.ibkit.cli import main as ib_main
from benchmarks.ibkit.report import load_runs

__all__ = ["CONFIGS", "main", "summarize_configs", "write_table"]

NAME = "ib_invariance"
METHODS = ("MIB-l2", "MIB-loss", "MIB", "VIB")
GRAM_METHODS = ("MIB-l2", "MIB-loss", "MIB")
# tag -> (kl reduction, gram, methods)
CONFIGS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "sum_all": ("sum", "all", METHODS),
    "mean_all": ("mean", "all", METHODS),
    "sum_encoder": ("sum", "encoder", GRAM_METHODS),
}
TOLERANCE = 0.02  # "same trajectory": test KL and clean accuracy within 2 %


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    ap = argparse.ArgumentParser(
        description="FashionMNIST quick-preset models trained with the KL summed or averaged "
        "over its K dimensions, and with the min-norm problem on all or on the encoder's "
        "parameters: which MIB variant has no hidden beta.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("--out", type=Path, default=None,
                    help=f"output folder (default runs/{NAME}; the committed reference is "
                    f"benchmarks/results/{NAME})")  # fmt: skip
    ap.add_argument("--seed", type=int, default=0, help="training seed (one for all)")
    ap.add_argument("--methods", nargs="+", default=None,
                    help=f"subset of {' '.join(METHODS)}")  # fmt: skip
    ap.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    ap.add_argument("--epochs", default=None, help="epochs (quick preset: 5)")
    ap.add_argument("--train-limit", default="15000",
                    help="training images (default 15000; the quick preset: 10000)")  # fmt: skip
    ap.add_argument("--test-limit", default="1000",
                    help="test images (default 1000; the quick preset: 500)")  # fmt: skip
    ap.add_argument("--curve-limit", default=None, help="curve images (quick preset: 200)")
    ap.add_argument(
        "--eps",
        nargs="+",
        default=["8/255"],
        help="attack budgets (the quick preset table covers 1/255 to 8/255)",
    )
    ap.add_argument("--attacks", nargs="+", default=["FGSM", "PGD"], help="attacks")
    ap.add_argument("--data-dir", default=None, help="FashionMNIST folder (default: ibkit's)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--no-figures", action="store_true", help="skip invariance.png")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    return ap.parse_args(argv)


def _ib_argv(args: argparse.Namespace, tag: str, out: Path) -> list[str]:
    reduction, gram, methods = CONFIGS[tag]
    chosen = [m for m in methods if args.methods is None or m in args.methods]
    argv = ["--preset", "quick", "--seeds", str(args.seed), "--methods", *chosen,
            "--kl-reduction", reduction, "--gram", gram, "--attacks", *args.attacks,
            "--eps", *args.eps, "--eps-attacks", *args.attacks, "--threads", str(args.threads),
            "--out", str(out / tag), "--no-figures"]  # fmt: skip
    for opt in ("epochs", "train_limit", "test_limit", "curve_limit", "data_dir"):
        value = getattr(args, opt)
        if value is not None:
            argv += [f"--{opt.replace('_', '-')}", str(value)]
    if args.no_progress:
        argv.append("--no-progress")
    return argv


def _median(run: dict[str, Any], key: str) -> float | None:
    med = run["epochs"][-1].get("optimizer_median")
    return None if med is None else med.get(key)


def summarize_configs(out: Path, tags: Sequence[str]) -> dict[str, Any]:
    """Per configuration and method: final numbers and per-epoch trajectories."""
    res: dict[str, Any] = {}
    for tag in tags:
        reduction, gram, _ = CONFIGS[tag]
        for r in load_runs(out / tag):
            k = r["config"]["bottleneck"]
            ratio = _median(r, "coef_ratio")
            budgets = {b["label"]: b["accuracy"] for b in r["budgets"]}
            res.setdefault(tag, {})[r["method"]] = {
                "kl_reduction": reduction,
                "gram": gram,
                "test_kl": r["test_kl"],
                "clean": r["final"]["NONE"],
                "budgets": budgets,
                "median_w_info": _median(r, "weights_1"),
                # effective beta of the step on the *summed* KL's gradient
                "effective_beta": None
                if ratio is None
                else ratio / (k if reduction == "mean" else 1),
                "test_kl_per_epoch": [e["test_info"] for e in r["epochs"]],
                "test_acc_per_epoch": [e["test_acc"] for e in r["epochs"]],
                "duration_s": r["duration_s"],
            }
    return res


def _rel(a: float | None, b: float | None) -> float:
    if a is None or b is None:
        return math.nan
    return abs(a - b) / max(abs(a), abs(b), 1e-12)


def _f(x: float | None, spec: str) -> str:
    return "--" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def write_table(res: dict[str, Any], meta: dict[str, Any]) -> str:
    """Markdown: the kl-reduction table and the Gram table."""
    lines = [f"FashionMNIST quick-preset models, seed {meta['seed']}: {meta['description']}", ""]
    s, m = res.get("sum_all", {}), res.get("mean_all", {})
    budget_labels: list[str] = []
    for tag in res.values():
        for v in tag.values():
            budget_labels = list(v["budgets"])
            break
    last = budget_labels[-1] if budget_labels else None
    if s and m:
        lines += [
            "KL summed over the K dimensions (`sum`) vs averaged (`mean` = sum / K), same seed. "
            f"'Same' = test KL and clean accuracy within {TOLERANCE:.0%}. Test KL is always "
            "summed; effective beta = per-step median of c_info / c_pred of the last epoch, "
            "converted to the summed KL.",
            "",
            "| method | test KL sum / mean [nats] | clean % sum / mean | "
            + (f"FGSM {last} sum / mean | PGD {last} sum / mean | " if last else "")
            + "effective beta sum / mean | same trajectory |",
            "|---|---|---|" + ("---|---|" if last else "") + "---|---|",
        ]
        for method in [x for x in METHODS if x in s and x in m]:
            a, b = s[method], m[method]
            same = (
                _rel(a["test_kl"], b["test_kl"]) <= TOLERANCE
                and _rel(a["clean"], b["clean"]) <= TOLERANCE
            )
            cells = [
                f"{_f(a['test_kl'], '.1f')} / {_f(b['test_kl'], '.1f')}",
                f"{a['clean']:.2f} / {b['clean']:.2f}",
            ]
            if last:
                for atk in ("FGSM", "PGD"):
                    cells.append(
                        f"{_f(a['budgets'][last].get(atk), '.2f')} / "
                        f"{_f(b['budgets'][last].get(atk), '.2f')}"
                    )
            cells.append(f"{_f(a['effective_beta'], '.2e')} / {_f(b['effective_beta'], '.2e')}")
            rel = max(_rel(a["test_kl"], b["test_kl"]), _rel(a["clean"], b["clean"]))
            cells.append(f"{'yes' if same else 'no'} ({rel:.1%})")
            label = method if method == "VIB" or method == "MIB" else f"{method} *"
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines += ["", "* an interpretation the paper does not state (gradient normalization).", ""]
    e = res.get("sum_encoder", {})
    if s and e:
        head = " | ".join(f"{atk} {lab}" for lab in budget_labels for atk in ("FGSM", "PGD"))
        lines += [
            "Min-norm problem on the gradients of all parameters (`all`) vs the encoder's only "
            "(`encoder`, the paper's eq. 7), KL summed, same seed.",
            "",
            f"| method | Gram on | test KL [nats] | clean % | {head} | median w*_info | "
            "effective beta |",
            "|---|---|---|---|" + "---|" * (2 * len(budget_labels)) + "---|---|",
        ]
        for method in [x for x in GRAM_METHODS if x in s and x in e]:
            for gram, row in (("all", s[method]), ("encoder", e[method])):
                accs = " | ".join(
                    _f(row["budgets"][lab].get(atk), ".2f")
                    for lab in budget_labels
                    for atk in ("FGSM", "PGD")
                )
                label = method if method == "MIB" else f"{method} *"
                lines.append(
                    f"| {label} | {gram} | {_f(row['test_kl'], '.1f')} | {row['clean']:.2f} | "
                    f"{accs} | {_f(row['median_w_info'], '.2e')} | "
                    f"{_f(row['effective_beta'], '.2e')} |"
                )
    return "\n".join(lines) + "\n"


def plot(res: dict[str, Any], path: Path) -> None:
    """Per method: test KL and test accuracy per epoch, one line per configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in METHODS if any(m in v for v in res.values())]
    fig, axes = plt.subplots(2, len(methods), figsize=(3.6 * len(methods), 6.2), squeeze=False)
    styles = {"sum_all": ("-", "o", "KL sum"), "mean_all": ("--", "s", "KL mean (sum / K)"),
              "sum_encoder": (":", "^", "KL sum, Gram on encoder")}  # fmt: skip
    for j, method in enumerate(methods):
        for tag, runs in res.items():
            if method not in runs:
                continue
            ls, marker, label = styles[tag]
            r = runs[method]
            ep = range(1, len(r["test_kl_per_epoch"]) + 1)
            axes[0][j].plot(ep, r["test_kl_per_epoch"], ls=ls, marker=marker, ms=4, label=label)
            axes[1][j].plot(ep, r["test_acc_per_epoch"], ls=ls, marker=marker, ms=4, label=label)
        star = "" if method in ("VIB", "MIB") else " *"
        axes[0][j].set_title(f"{method}{star}", fontsize=10)
        axes[0][j].set_yscale("log")
        axes[0][j].set_ylabel("test KL, summed over K [nats]")
        axes[1][j].set_ylabel("clean test accuracy [%]")
        for ax in axes[:, j]:
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Same seed, KL summed vs averaged over its dimensions "
                 "(* = gradient-normalized, not stated in the paper)", fontsize=10)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Entry point; writes results.json, table.md and invariance.png to ``--out``."""
    args = parse_args(argv)
    out = args.out if args.out is not None else default_out(NAME)
    t0 = time.perf_counter()
    for tag in args.configs:
        ib_main("fashion_mnist", "ib_fmnist", _ib_argv(args, tag, out), compare=False)
    res = summarize_configs(out, args.configs)
    some = next(iter(load_runs(out / args.configs[0])), None)
    cfg = some["config"] if some else {}
    meta = {
        "command": command_line("ib_invariance", argv),
        "environment": environment("torchvision", "torchattacks"),
        "seed": args.seed,
        "configs": {t: list(CONFIGS[t][:2]) for t in args.configs},
        "config": cfg,
        "description": (
            f"{cfg.get('backbone')}, {cfg.get('epochs')} epochs, {cfg.get('train_limit')} "
            f"training and {cfg.get('test_limit')} test images, attacks "
            f"{' '.join(args.attacks)} at eps {' '.join(args.eps)}."
        ),
        "wall_s_this_invocation": time.perf_counter() - t0,
        "total_run_s": sum(r["duration_s"] for v in res.values() for r in v.values()),
    }
    table = write_table(res, meta)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(table)
    (out / "results.json").write_text(json.dumps({"meta": meta, "results": res}, indent=1))
    if not args.no_figures:
        plot(res, out / "invariance.png")
    print(table)
    ref = reference(NAME)
    if ref is None:
        print(f"No committed reference results (benchmarks/results/{NAME}).")
    elif ref.resolve() != out.resolve():
        theirs = json.loads((ref / "results.json").read_text())["meta"]
        same = theirs.get("config") == cfg and theirs.get("seed") == args.seed
        print(f"Committed reference ({ref}, made by `{theirs.get('command')}`"
              + ("" if same else "; with other settings, so numbers differ") + "):\n")  # fmt: skip
        print((ref / "table.md").read_text())
    print(f"wrote {out}/results.json, table.md" + ("" if args.no_figures else ", invariance.png"))
    return {"meta": meta, "results": res}


if __name__ == "__main__":
    main()

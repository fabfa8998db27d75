"""The information-bottleneck front on FashionMNIST: a VIB beta sweep against MIB runs.

Every run trains the small IB CNN of ``benchmarks/ibkit`` (``ibkit.train.run``, unchanged) and
yields one information-plane point ``(I(X;Z) upper bound, I(Z;Y) lower bound)`` in nats: the
training-batch means of the last epoch (mean KL, and ``log 10 - CE``), as ``ibkit`` reports them.

- VIB: ``CE + beta KL`` for each beta of the sweep (default 8 values in [1e-6, 1e-1]) and seed;
- MIB: ``mograd.MOWrapper`` on ``(CE, KL)`` (min-norm, power 2, mu 0.2), one run per seed;
- VIB w. aw (MGDA: min-norm, power 1, no smoothing), one run per seed;
- the gradient-normalized variants MIB-l2, MIB-loss and MGDA-l2 (an interpretation the paper
  does not state: min-norm weights of the normalized gradients, update sum c_i g_i / n_i;
  docs/benchmarks.md), one run per seed: where each lands on VIB's front.

Fronts are traced with :func:`mograd.pareto.trace_front` on the minimization pair
``(I(X;Z), -I(Z;Y))``. Hypervolumes use one reference point for all methods:
``I(X;Z) = 1.1 x`` the largest value seen in the run and ``I(Z;Y) = 0``, on both a linear and a
``log10 I(X;Z)`` axis (I(X;Z) spans orders of magnitude over the beta sweep).

Run ``python -m benchmarks.ib_front --help``; CPU quick scale by default. Results go to
``runs/ib_front`` unless ``--out`` says otherwise; the committed reference is
``benchmarks/results/ib_front`` (regenerated with ``--out benchmarks/results/ib_front``).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks._common import command_line, default_out, reference
from benchmarks.ibkit.train import RunConfig, prepare_data, run
from mograd import pareto

__all__ = ["PRESETS", "main", "run_sweep"]

PRESETS: dict[str, dict[str, Any]] = {
    "quick": {
        "epochs": 4,
        "train_limit": 5000,
        "betas": [1e-6, 1e-5, 1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1],
        "vib_seeds": 2,
        "mo_seeds": 3,
    },
    "paper": {
        "epochs": 40,
        "train_limit": None,
        "betas": [1e-6, 1e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1],
        "vib_seeds": 3,
        "mo_seeds": 3,
    },
}

MO_METHODS = ("MIB", "VIB w. aw", "MIB-l2", "MIB-loss", "MGDA-l2")
NAME = "ib_front"


def run_sweep(args: argparse.Namespace) -> dict[str, Any]:
    """Trains every configuration and returns the per-method fronts and hypervolumes."""
    torch.set_num_threads(args.threads)
    p = PRESETS[args.preset]
    epochs = args.epochs or p["epochs"]
    train_limit = p["train_limit"] if args.train_limit is None else args.train_limit
    betas = args.betas or p["betas"]
    vib_seeds = list(range(args.vib_seeds or p["vib_seeds"]))
    mo_seeds = list(range(args.mo_seeds or p["mo_seeds"]))
    base = RunConfig(
        dataset="fashion_mnist", backbone="cnn", epochs=epochs, train_limit=train_limit,
        test_limit=args.test_limit, curve_limit=100, attacks=(), curve_attacks=(),
        data_dir=args.data_dir,
    )  # fmt: skip
    data = prepare_data(base)
    records: list[dict[str, Any]] = []

    def train(cfg: tuple[str, float | None, int]) -> list[float]:
        method, beta, seed = cfg
        rc = RunConfig(**{**base.__dict__, "beta": beta if beta is not None else base.beta})
        t0 = time.perf_counter()
        res = run(method, seed, rc, data=data, progress=False)
        ixz, izy = res["info_plane"][-1]
        records.append({
            "method": method, "beta": beta, "seed": seed, "i_xz": ixz, "i_zy": izy,
            "test_acc": res["epochs"][-1]["test_acc"], "seconds": time.perf_counter() - t0,
            "optimizer": res["epochs"][-1].get("optimizer"),
        })  # fmt: skip
        return [ixz, -izy]

    configs: dict[str, list[tuple[str, float | None, int]]] = {
        "VIB": [("VIB", b, s) for b in betas for s in vib_seeds],
        **{m: [(m, None, s) for s in mo_seeds] for m in args.methods},
    }
    fronts = {
        name: pareto.trace_front(train, cfgs, progress=not args.no_progress, desc=name)
        for name, cfgs in configs.items()
    }
    all_pts = np.concatenate([f.points for f in fronts.values()])
    ref_lin = np.array([1.1 * all_pts[:, 0].max(), 0.0])
    ref_log = np.array([math.log10(ref_lin[0]), 0.0])
    out: dict[str, Any] = {
        "settings": {
            "preset": args.preset, "epochs": epochs, "train_limit": train_limit,
            "test_limit": args.test_limit, "betas": betas, "vib_seeds": vib_seeds,
            "mo_seeds": mo_seeds, "n_train": len(data.train), "threads": args.threads,
        },
        "ref_linear": ref_lin.tolist(),
        "ref_log10": ref_log.tolist(),
        "runs": records,
        "methods": {},
    }  # fmt: skip
    union = np.concatenate([f.points for f in fronts.values()])
    for name, f in fronts.items():
        log_ixz = np.log10(np.maximum(f.points[:, 0], 1e-6))
        log_pts = np.stack([log_ixz, f.points[:, 1]], axis=1)
        out["methods"][name] = {
            "points": [[float(a), float(-b)] for a, b in f.points],  # (I(X;Z), I(Z;Y))
            "configs": [list(c) for c in f.configs],
            "non_dominated": f.mask.tolist(),
            "hv_linear": pareto.hypervolume(f.points, ref_lin),
            "hv_log10": pareto.hypervolume(log_pts, ref_log),
            "n_on_union_front": int(pareto.non_dominated(union)[_rows(union, f.points)].sum()),
        }
    return out


def _rows(union: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Indices in ``union`` of the rows of ``pts`` (exact matches, first occurrence)."""
    return np.array([int(np.flatnonzero(np.all(union == p, axis=1))[0]) for p in pts])


def write_table(res: dict[str, Any]) -> str:
    """Markdown summary: hypervolumes and points per method."""
    s = res["settings"]
    lines = [
        f"FashionMNIST, small IB CNN (ibkit), {s['n_train']} training images, {s['epochs']} "
        f"epochs, Adam lr 1e-3, batch 128. Points: last-epoch training means, "
        f"I(X;Z) <= mean KL, I(Z;Y) >= log 10 - CE (nats). HV reference: "
        f"I(X;Z) = {res['ref_linear'][0]:.1f}, I(Z;Y) = 0.",
        "",
        "| method | runs | non-dominated (own) | on the joint front | HV (linear I(X;Z)) | "
        "HV (log10 I(X;Z)) |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in res["methods"].items():
        lines.append(
            f"| {name} | {len(m['points'])} | {sum(m['non_dominated'])} | "
            f"{m['n_on_union_front']} | {m['hv_linear']:.2f} | {m['hv_log10']:.3f} |"
        )
    lines += [
        "",
        "| run | beta | seed | I(X;Z) | I(Z;Y) | test acc. % |",
        "|---|---|---|---|---|---|",
    ]
    for r in res["runs"]:
        beta = "-" if r["beta"] is None else f"{r['beta']:g}"
        lines.append(
            f"| {r['method']} | {beta} | {r['seed']} | {r['i_xz']:.2f} | {r['i_zy']:.3f} | "
            f"{r['test_acc']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def plot(res: dict[str, Any], path: Path) -> None:
    """Information plane: all points and each method's non-dominated front."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    style = {"VIB": ("tab:blue", "o"), "MIB": ("tab:red", "*"), "VIB w. aw": ("tab:green", "s"),
             "MIB-l2": ("tab:purple", "P"), "MIB-loss": ("tab:orange", "D"),
             "MGDA-l2": ("tab:brown", "v")}  # fmt: skip
    for name, m in res["methods"].items():
        color, marker = style.get(name, ("k", "x"))
        pts = np.asarray(m["points"])
        nd = np.asarray(m["non_dominated"])
        ax.scatter(pts[:, 0], pts[:, 1], c=color, marker=marker, s=40 if marker == "*" else 22,
                   alpha=0.8, label=f"{name} (HV {m['hv_log10']:.3f})")  # fmt: skip
        f = pts[nd][np.argsort(pts[nd][:, 0])]
        ax.step(f[:, 0], f[:, 1], where="post", c=color, lw=1, alpha=0.7)
    for name, m in res["methods"].items():
        if name != "VIB":
            continue
        for (x, y), cfg in zip(m["points"], m["configs"], strict=True):
            if cfg[2] == 0:
                ax.annotate(f"{cfg[1]:g}", (x, y), fontsize=6, xytext=(3, -8),
                            textcoords="offset points")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("I(X;Z) upper bound (nats, log scale)")
    ax.set_ylabel("I(Z;Y) lower bound (nats)")
    ax.set_title("FashionMNIST IB front: VIB beta sweep vs MIB variants (labels: beta)\n"
                 "MIB-l2, MIB-loss, MGDA-l2: gradient-normalized, not stated in the paper",
                 fontsize=9)  # fmt: skip
    ax.legend(fontsize=7, title="method (HV, log10 I(X;Z) axis)", title_fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    ap = argparse.ArgumentParser(
        description="IB front on FashionMNIST: VIB beta sweep vs MIB and MGDA (ibkit models).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    ap.add_argument("--out", type=Path, default=None,
                    help=f"output folder (default runs/{NAME}, git-ignored; the committed "
                    f"reference is benchmarks/results/{NAME})")  # fmt: skip
    ap.add_argument("--methods", nargs="+", choices=MO_METHODS, default=list(MO_METHODS),
                    help="multi-objective methods placed on VIB's front")  # fmt: skip
    ap.add_argument("--epochs", type=int, default=None, help="epochs (preset default)")
    ap.add_argument("--train-limit", type=int, default=None, help="training images (preset)")
    ap.add_argument("--test-limit", type=int, default=500, help="test images for accuracy")
    ap.add_argument("--betas", type=float, nargs="+", default=None, help="VIB betas (preset)")
    ap.add_argument("--vib-seeds", type=int, default=None, help="seeds per beta (preset)")
    ap.add_argument("--mo-seeds", type=int, default=None, help="MIB / MGDA seeds (preset)")
    ap.add_argument("--data-dir", default=None, help="FashionMNIST folder (default: ibkit's)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--no-progress", action="store_true")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Entry point; writes results.json, table.md and ib_front.png to ``--out``."""
    args = parse_args(argv)
    out = args.out if args.out is not None else default_out(NAME)
    t0 = time.perf_counter()
    res = run_sweep(args)
    out.mkdir(parents=True, exist_ok=True)
    plot(res, out / "ib_front.png")
    cmd = command_line("ib_front", argv)
    res = {
        "command": cmd,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
        },
        "duration_s": time.perf_counter() - t0,
        **res,
    }
    (out / "results.json").write_text(json.dumps(res, indent=1))
    table = write_table(res)
    (out / "table.md").write_text(table)
    print(table)
    print(compare_with_reference(res, out, reference(NAME)))
    print(f"wrote {out} in {res['duration_s']:.1f} s")
    return res


def compare_with_reference(res: dict[str, Any], out: Path, ref: Path | None) -> str:
    """This run's hypervolumes next to the committed reference's (or why there is none)."""
    if ref is None:
        return f"No committed reference results (benchmarks/results/{NAME})."
    if ref.resolve() == Path(out).resolve():
        return f"This run wrote the committed reference itself ({ref})."
    theirs = json.loads((ref / "results.json").read_text())
    same = theirs.get("settings") == res["settings"]
    lines = [
        f"Next to the committed reference ({ref}, made by `{theirs.get('command')}`"
        + ("" if same else "; other settings, so numbers differ") + "):",
        "",
        "| method | HV log10 here / ref | non-dominated here / ref |",
        "|---|---|---|",
    ]  # fmt: skip
    for name, m in res["methods"].items():
        t = theirs["methods"].get(name)
        ref_hv = f"{t['hv_log10']:.3f}" if t else "--"
        ref_nd = str(sum(t["non_dominated"])) if t else "--"
        lines.append(
            f"| {name} | {m['hv_log10']:.3f} / {ref_hv} | {sum(m['non_dominated'])} / {ref_nd} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

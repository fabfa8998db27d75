"""Aggregation of the per-run records into ``results.json``, ``table.md`` and ``front.png``.

Metrics (all on the test pairs unless said otherwise):

- task accuracies, mean +- sample std over seeds;
- ``HV (error)``: hypervolume (:func:`mograd.pareto.hypervolume`) of a method's final points of
  one seed in ``(1 - acc1, 1 - acc2)`` with the fixed reference point :data:`REF_ERROR`
  (one point for a single method, one per ray for a front), mean +- std over seeds;
- ``HV (loss)``: the same on the two test cross-entropies with :data:`REF_LOSS`;
- time per epoch relative to ``Mean``: the fastest training epoch (evaluation excluded) of
  all the method's runs divided by ``Mean``'s fastest, on the wall clock and on the process's
  CPU time (best-of-N timing: on a shared machine other jobs only ever slow an epoch down;
  the ratios of the mean epoch times per seed are in ``results.json`` too);
- for fronts, the angle (degrees) between each final loss vector and its preference ray's
  target direction (:func:`mograd.pareto.ray_angles`, EPO's convention ``r_1 l_1 = r_2 l_2``),
  on the final training losses (the optimized objectives) and on the test losses.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import read_runs as load_runs
from benchmarks._common import run_file, slug, write_json
from mograd import pareto

__all__ = [
    "REF_ERROR",
    "REF_LOSS",
    "load_runs",
    "run_path",
    "summarize",
    "table_markdown",
    "write_json",
    "write_report",
]

REF_ERROR = (0.5, 0.5)  # hypervolume reference in (1 - acc1, 1 - acc2)
REF_LOSS = (2.0, 2.0)  # hypervolume reference in (test CE 1, test CE 2)
BASELINE = "Mean"


def run_path(out: Path, label: str, seed: int) -> Path:
    """Where the record of one (run label, seed) is stored."""
    return run_file(out, slug(label), seed)


def _ms(values: Sequence[float]) -> dict[str, Any]:
    vals = [float(v) for v in values]
    return {
        "mean": statistics.fmean(vals) if vals else float("nan"),
        "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
        "values": vals,
    }


def _epoch_time(run: dict[str, Any], key: str = "epoch_s") -> float:
    return statistics.fmean(run.get(key) or run["epoch_s"])


def _best_epoch(runs: Sequence[dict[str, Any]], key: str = "epoch_s") -> float:
    """The fastest epoch of ``runs`` (best-of-N timing: other jobs on a shared machine only
    ever make an epoch slower)."""
    return min(min(r.get(key) or r["epoch_s"]) for r in runs)


def summarize(runs: Sequence[dict[str, Any]], order: Sequence[str]) -> dict[str, Any]:
    """Per method (group) statistics over seeds; see the module docstring.

    Args:
        runs: Run records (of one configuration).
        order: Method order for the output (groups not listed come last).

    Returns:
        ``{group: {...}}`` in table order.
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault(r["group"], []).append(r)
    rank = {g: i for i, g in enumerate(order)}
    base_time: dict[int, float] = {}
    base_cpu: dict[int, float] = {}
    for r in groups.get(BASELINE, []):
        base_time[r["seed"]] = _epoch_time(r)
        base_cpu[r["seed"]] = _epoch_time(r, "epoch_cpu_s")
    base = groups.get(BASELINE, [])
    base_best = (_best_epoch(base), _best_epoch(base, "epoch_cpu_s")) if base else None
    out: dict[str, Any] = {}
    for g in sorted(groups, key=lambda g: (rank.get(g, len(rank)), g)):
        rs = groups[g]
        seeds = sorted({r["seed"] for r in rs})
        is_front = any(r["ray"] is not None for r in rs)
        hv_err, hv_loss, ratio, cpu_ratio = [], [], [], []
        for s in seeds:
            rs_s = [r for r in rs if r["seed"] == s]
            err = np.array([[1.0 - r["acc"][0], 1.0 - r["acc"][1]] for r in rs_s])
            loss = np.array([r["test_loss"] for r in rs_s])
            hv_err.append(pareto.hypervolume(err, REF_ERROR))
            hv_loss.append(pareto.hypervolume(loss, REF_LOSS))
            if s in base_time:
                ratio.append(statistics.fmean(_epoch_time(r) for r in rs_s) / base_time[s])
                cpu = statistics.fmean(_epoch_time(r, "epoch_cpu_s") for r in rs_s)
                cpu_ratio.append(cpu / base_cpu[s])
        entry: dict[str, Any] = {
            "kind": "front" if is_front else "single",
            "seeds": seeds,
            "mograd_args": sorted({r["mograd_args"] for r in rs})
            if is_front
            else rs[0]["mograd_args"],
            "representation": rs[0]["representation"],
            "hv_error": _ms(hv_err),
            "hv_loss": _ms(hv_loss),
            "time_ratio_mean_epoch": _ms(ratio) if ratio else None,
            "cpu_time_ratio_mean_epoch": _ms(cpu_ratio) if cpu_ratio else None,
            "best_epoch_s": _best_epoch(rs),
            "best_epoch_cpu_s": _best_epoch(rs, "epoch_cpu_s"),
            "time_ratio": None
            if base_best is None
            else {"mean": _best_epoch(rs) / base_best[0], "std": 0.0},
            "cpu_time_ratio": None
            if base_best is None
            else {"mean": _best_epoch(rs, "epoch_cpu_s") / base_best[1], "std": 0.0},
            "epoch_s": _ms([_epoch_time(r) for r in rs]),
        }
        if is_front:
            points = []
            for ray in sorted({tuple(r["ray"]) for r in rs}, reverse=True):
                rr = [r for r in rs if tuple(r["ray"]) == ray]
                tr = np.array([r["train_loss"] for r in rr])
                te = np.array([r["test_loss"] for r in rr])
                points.append(
                    {
                        "ray": list(ray),
                        "acc1": _ms([r["acc"][0] for r in rr]),
                        "acc2": _ms([r["acc"][1] for r in rr]),
                        "train_loss": tr.mean(axis=0).tolist(),
                        "test_loss": te.mean(axis=0).tolist(),
                        "angle_train": _ms(pareto.ray_angles(tr, np.array(ray)).tolist()),
                        "angle_test": _ms(pareto.ray_angles(te, np.array(ray)).tolist()),
                        "weights": np.mean([r["weights"][-1] for r in rr], axis=0).tolist(),
                    }
                )
            entry["points"] = points
            entry["angle_train"] = _ms([p["angle_train"]["mean"] for p in points])
            entry["angle_test"] = _ms([p["angle_test"]["mean"] for p in points])
            entry["angle_train_max"] = max(max(p["angle_train"]["values"]) for p in points)
        else:
            entry["acc1"] = _ms([r["acc"][0] for r in rs])
            entry["acc2"] = _ms([r["acc"][1] for r in rs])
            entry["test_loss"] = np.mean([r["test_loss"] for r in rs], axis=0).tolist()
            entry["weights"] = np.mean([r["weights"][-1] for r in rs], axis=0).tolist()
        out[g] = entry
    if "LS" in out:
        ls = dict(zip(out["LS"]["seeds"], out["LS"]["hv_error"]["values"]))
        for entry in out.values():
            if entry["kind"] == "front":
                rel = [
                    v / ls[s]
                    for s, v in zip(entry["seeds"], entry["hv_error"]["values"])
                    if s in ls and ls[s] > 0
                ]
                entry["hv_error_vs_ls"] = _ms(rel) if rel else None
    return out


def _pm(cell: dict[str, Any] | None, scale: float = 1.0, digits: int = 2) -> str:
    if cell is None:
        return "-"
    return f"{cell['mean'] * scale:.{digits}f} ± {cell['std'] * scale:.{digits}f}"


def table_markdown(meta: dict[str, Any], summary: dict[str, Any]) -> str:
    """The ``table.md`` text: methods, fronts, front points, and what was left out."""
    lines = [
        f"# Multi-Fashion, preset `{meta['preset']}`",
        "",
        meta["description"],
        "",
        f"Command: `{meta['command']}`",
        "",
        "## Methods",
        "",
        f"Test accuracy (%) per task, mean ± std over seeds {meta['seeds']}; HV (error): "
        f"hypervolume of the final points in (1 - acc1, 1 - acc2), reference {REF_ERROR} "
        "(one point per seed for a method, one per ray for a front), ×100; HV (loss): on the "
        f"test cross-entropies, reference {REF_LOSS}; time: the method's fastest training epoch "
        "relative to Mean's fastest in the same run (best-of-N timing against other jobs on the "
        "machine), wall clock / process CPU time; w: mean weights of the last epoch (for "
        "fronts, the rays are in the next tables).",
        "",
        "| method | task 1 acc. | task 2 acc. | HV (error) ×100 | HV (loss) | time / epoch "
        "vs Mean | w1 / w2 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, e in summary.items():
        ratio = "-"
        if e["time_ratio"] is not None:
            ratio = f"{e['time_ratio']['mean']:.2f}x"
            if e.get("cpu_time_ratio") is not None:
                ratio += f" / {e['cpu_time_ratio']['mean']:.2f}x"
        if e["kind"] == "front":
            a1 = [p["acc1"]["mean"] * 100 for p in e["points"]]
            a2 = [p["acc2"]["mean"] * 100 for p in e["points"]]
            acc1 = f"{min(a1):.2f} – {max(a1):.2f}"
            acc2 = f"{min(a2):.2f} – {max(a2):.2f}"
            w = f"{len(e['points'])} rays"
            name = f"{name} (front)"
        else:
            acc1, acc2 = _pm(e["acc1"], 100), _pm(e["acc2"], 100)
            w = f"{e['weights'][0]:.3f} / {e['weights'][1]:.3f}"
        lines.append(
            f"| {name} | {acc1} | {acc2} | {_pm(e['hv_error'], 100)} | "
            f"{_pm(e['hv_loss'], 1, 3)} | {ratio} | {w} |"
        )
    fronts = {k: v for k, v in summary.items() if v["kind"] == "front"}
    if fronts:
        lines += [
            "",
            "## Fronts along preference rays",
            "",
            "One run per ray and seed. HV vs LS: the front's HV (error) divided by linear "
            "scalarization's on the same rays and seed. Angle: between the final loss vector "
            "and the ray's target direction (EPO's exact-Pareto condition r1 l1 = r2 l2), "
            "mean over rays of the per-ray mean over seeds, on the final training losses and "
            "on the test losses; max: the largest single-run angle on training losses.",
            "",
            "| front | HV (error) ×100 | HV vs LS | HV (loss) | angle train (°) | max (°) "
            "| angle test (°) |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, e in fronts.items():
            vs = e.get("hv_error_vs_ls")
            vs_text = "-" if vs is None else f"{vs['mean']:.3f}"
            lines.append(
                f"| {name} | {_pm(e['hv_error'], 100)} | "
                f"{vs_text} | {_pm(e['hv_loss'], 1, 3)} | "
                f"{_pm(e['angle_train'], 1, 1)} | {e['angle_train_max']:.1f} | "
                f"{_pm(e['angle_test'], 1, 1)} |"
            )
        lines += [
            "",
            "## Front points",
            "",
            "| front | ray r1 / r2 | task 1 acc. | task 2 acc. | train loss l1 / l2 | "
            "angle train (°) | angle test (°) | w1 / w2 |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, e in fronts.items():
            for p in e["points"]:
                lines.append(
                    f"| {name} | {p['ray'][0]:.3f} / {p['ray'][1]:.3f} | "
                    f"{_pm(p['acc1'], 100)} | {_pm(p['acc2'], 100)} | "
                    f"{p['train_loss'][0]:.3f} / {p['train_loss'][1]:.3f} | "
                    f"{_pm(p['angle_train'], 1, 1)} | {_pm(p['angle_test'], 1, 1)} | "
                    f"{p['weights'][0]:.3f} / {p['weights'][1]:.3f} |"
                )
    if meta.get("left_out"):
        lines += ["", "## Left out", ""]
        lines += [f"- {name}: {why}" for name, why in meta["left_out"].items()]
    if meta.get("failed"):
        lines += ["", "## Failed runs", ""]
        lines += [f"- {name}: {why}" for name, why in meta["failed"].items()]
    trained = [i for i in meta.get("invocations", []) if i.get("trained")]
    if trained:
        lines += [""]
        lines += [
            f"Invocation started {i['started_utc']}: {i['trained']} runs trained in "
            f"{i['wall_s'] / 60:.1f} min (wall clock, data loading and reports included)."
            for i in trained
        ]
    if meta.get("sum_run_s") is not None:
        lines += [
            "",
            f"Sum of the durations of all {meta.get('n_runs', '?')} runs reported: "
            f"{meta['sum_run_s'] / 60:.1f} min.",
        ]
    return "\n".join(lines) + "\n"


_COLORS = [
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
    "#393b79",
    "#637939",
    "#843c39",
]
_MARKERS = "os^vD<>pPX*hd"


def plot_fronts(summary: dict[str, Any], runs: Sequence[dict[str, Any]], path: Path) -> None:
    """Task-1 vs task-2 test accuracy (left) and the training losses with the rays (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(14, 7.2))
    singles = [k for k, v in summary.items() if v["kind"] == "single"]
    bases = []
    for k in singles:
        b = k.removesuffix(" (repr)")
        if b not in bases:
            bases.append(b)
    style = {
        b: (_COLORS[i % len(_COLORS)], _MARKERS[i % len(_MARKERS)]) for i, b in enumerate(bases)
    }
    for k in singles:
        e = summary[k]
        color, marker = style[k.removesuffix(" (repr)")]
        hollow = k.endswith(" (repr)")
        kw = {
            "color": color,
            "marker": marker,
            "ms": 8,
            "mfc": "none" if hollow else color,
            "ls": "none",
        }
        ax.errorbar(
            e["acc1"]["mean"] * 100,
            e["acc2"]["mean"] * 100,
            xerr=e["acc1"]["std"] * 100,
            yerr=e["acc2"]["std"] * 100,
            label=k,
            elinewidth=0.6,
            capsize=0,
            **kw,
        )
        bx.plot(*e["test_loss"], **kw)
    front_colors = ["black", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]
    fronts = [k for k, v in summary.items() if v["kind"] == "front"]
    lmax = 0.0
    for i, k in enumerate(fronts):
        pts = summary[k]["points"]
        c = front_colors[i % len(front_colors)]
        ax.plot(
            [p["acc1"]["mean"] * 100 for p in pts],
            [p["acc2"]["mean"] * 100 for p in pts],
            "-",
            color=c,
            lw=1.6,
            marker="x",
            ms=7,
            label=f"{k} (front)",
        )
        tl = np.array([p["train_loss"] for p in pts])
        bx.plot(tl[:, 0], tl[:, 1], "-", color=c, lw=1.6, marker="x", ms=7)
        lmax = max(lmax, float(tl.max()))
        if k == "LS":
            for p in pts:
                d = 1.0 / np.asarray(p["ray"])
                d = d / np.linalg.norm(d) * lmax * 1.6
                bx.plot([0, d[0]], [0, d[1]], ":", color="grey", lw=0.8)
    for k in fronts:  # seeds as small dots, to show the spread
        rs = [r for r in runs if r["group"] == k]
        ax.plot(
            [r["acc"][0] * 100 for r in rs],
            [r["acc"][1] * 100 for r in rs],
            ".",
            color="grey",
            ms=3,
            alpha=0.6,
        )
    ax.set_xlabel("task 1 (top-left item) test accuracy (%)")
    ax.set_ylabel("task 2 (bottom-right item) test accuracy (%)")
    ax.set_title("Multi-Fashion: test accuracies (mean ± std over seeds;\n"
                 "fronts: one point per ray, grey dots = single seeds)", fontsize=10)
    ax.grid(alpha=0.3)
    bx.set_xlabel("task 1 loss")
    bx.set_ylabel("task 2 loss")
    bx.set_title("losses: fronts on training losses (dotted: the rays' target directions),\n"
                 "single methods on test losses", fontsize=10)
    bx.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=7, fontsize=8, frameon=False)
    if lmax > 0:
        lo = float(np.min([p["train_loss"] for k in fronts for p in summary[k]["points"]]))
        bx.set_xlim(lo * 0.8, lmax * 1.15)
        bx.set_ylim(lo * 0.8, lmax * 1.15)
    fig.tight_layout(rect=(0, 0.13, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(
    out: Path, meta: dict[str, Any], runs: Sequence[dict[str, Any]], figures: bool = True
) -> dict[str, Any]:
    """Write ``results.json`` and ``table.md`` (and ``front.png``) for ``runs``.

    Returns:
        The summary.
    """
    summary = summarize(runs, meta["methods"])
    write_json(
        Path(out) / "results.json",
        {
            "meta": meta,
            "summary": summary,
            "runs": sorted(runs, key=lambda r: (r["seed"], r["method"])),
        },
    )
    (Path(out) / "table.md").write_text(table_markdown(meta, summary))
    if figures and summary:
        plot_fronts(summary, runs, Path(out) / "front.png")
    return summary

"""Aggregation, the Table-1-style markdown table and the figures.

Every per-(method, seed) result lives in ``<out>/runs/<method>__seed<k>.json`` (what makes a
benchmark resumable); :func:`write_report` turns all of them into ``results.json``,
``table.md``, ``info_plane.png``, ``curves.png``, ``ablation.png``, ``weights.png`` and, with
several attack budgets, ``eps.png``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks._common import read_runs, run_file, write_json

from .attacks import ATTACKS
from .methods import (
    ABLATION_FIGURE,
    INTERPRETATION_TABLE,
    KNOWN_METHODS,
    MAIN_METHODS,
    get_method,
    slug,
)

ROWS = ("NONE", *ATTACKS)


# ----------------------------------------------------------------------------- storage
def run_path(out: Path, method: str, seed: int) -> Path:
    """Where the result of one (method, seed) is stored."""
    return run_file(out, slug(method), seed)


def load_runs(out: Path) -> list[dict[str, Any]]:
    """All stored per-run results under ``out/runs`` (sorted by method order, then seed)."""
    runs = read_runs(out)
    order = {m: i for i, m in enumerate(KNOWN_METHODS)}
    runs.sort(key=lambda r: (order.get(r["method"], len(order)), r["seed"]))
    return runs


# ----------------------------------------------------------------------------- statistics
def summarize(
    runs: Sequence[dict[str, Any]], budget: int = 0
) -> dict[str, dict[str, dict[str, Any]]]:
    """Mean, standard deviation and per-seed values of every final accuracy.

    Args:
        runs: Per-run results.
        budget: Index of the attack budget (0: the first, ``final``).

    Returns:
        ``{method: {row: {"mean", "std", "values", "seeds"}}}``; ``std`` is the sample standard
        deviation (0 for a single seed).
    """
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for r in runs:
        if budget == 0:
            accuracies = r["final"]
        elif budget < len(r.get("budgets", [])):
            accuracies = r["budgets"][budget]["accuracy"]
        else:
            continue
        for row, value in accuracies.items():
            cell = out.setdefault(r["method"], {}).setdefault(row, {"values": [], "seeds": []})
            cell["values"].append(float(value))
            cell["seeds"].append(int(r["seed"]))
    for cells in out.values():
        for cell in cells.values():
            vals = cell["values"]
            cell["mean"] = statistics.fmean(vals)
            cell["std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return out


def _stats(values: list[float], seeds: list[int]) -> dict[str, Any]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "values": values,
        "seeds": seeds,
    }


def summarize_information(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Test-set information term per method: KL summed over K (VIB family) or KDE I_hat (NIB).

    Returns:
        ``{method: {"mean", "std", "values", "seeds", "estimator"}}`` (methods with a value).
    """
    grouped: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        if r.get("test_kl") is not None:
            grouped.setdefault(r["method"], []).append(r)
    out = {}
    for method, group in grouped.items():
        cell = _stats([float(r["test_kl"]) for r in group], [int(r["seed"]) for r in group])
        cell["estimator"] = group[0].get("test_info_estimator")
        out[method] = cell
    return out


def budgets_of(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The attack budgets of the runs (eps, alpha, steps, label), from the first run."""
    if not runs:
        return []
    return [{k: v for k, v in b.items() if k != "accuracy"} for b in runs[0].get("budgets", [])]


def row_ranks(values: dict[str, float]) -> dict[str, float]:
    """Ranks (1 = highest value) with ties sharing the average rank.

    Values are compared after rounding to two decimals, as printed in the table.

    Args:
        values: ``{method: value}``.

    Returns:
        ``{method: rank}``.
    """
    rounded = {m: round(v, 2) for m, v in values.items()}
    ordered = sorted(rounded.values(), reverse=True)
    ranks = {}
    for m, v in rounded.items():
        first = ordered.index(v) + 1
        last = len(ordered) - ordered[::-1].index(v)
        ranks[m] = (first + last) / 2.0
    return ranks


def average_ranks(
    summary: dict[str, dict[str, dict[str, Any]]], methods: Sequence[str], rows: Sequence[str]
) -> dict[str, float]:
    """Each method's rank averaged over ``rows`` (the table's "Rank Avg." row)."""
    totals = {m: 0.0 for m in methods}
    n = 0
    for row in rows:
        vals = {m: summary[m][row]["mean"] for m in methods if row in summary.get(m, {})}
        if len(vals) != len(methods):
            continue
        for m, r in row_ranks(vals).items():
            totals[m] += r
        n += 1
    return {m: totals[m] / n if n else math.nan for m in methods}


# ----------------------------------------------------------------------------- table
def _mark(text: str, place: int) -> str:
    if place == 1:
        return f"**{text}**"
    if place == 2:
        return f"<u>{text}</u>"
    return text


def _places(values: dict[str, float], higher_is_better: bool) -> dict[str, int]:
    """1 for the best value(s), 2 for the second-best value(s), 0 otherwise."""
    distinct = sorted({round(v, 2) for v in values.values()}, reverse=higher_is_better)
    out = {}
    for m, v in values.items():
        pos = distinct.index(round(v, 2))
        out[m] = pos + 1 if pos < 2 else 0
    return out


def table_markdown(
    summary: dict[str, dict[str, dict[str, Any]]],
    methods: Sequence[str],
    rows: Sequence[str] = ROWS,
    caption: str = "",
    information: dict[str, dict[str, Any]] | None = None,
) -> str:
    """A table in the layout of the paper's Table 1.

    Rows are NONE and the attacks, columns the methods, cells ``mean ± std`` accuracy (%); per
    row the best mean is **bold** and the second best <u>underlined</u>; the last row is each
    method's average rank across the rows (lower is better).

    Args:
        summary: Output of :func:`summarize`.
        methods: Columns, in order (methods without results are skipped).
        rows: Rows, in order.
        caption: Text printed above the table.
        information: Output of :func:`summarize_information`; adds a last row "test I(X;Z)
            bound [nats]" (not ranked): KL summed over K, or the KDE estimate (marked ``kde``).

    Returns:
        Markdown text.
    """
    methods = [m for m in methods if m in summary]
    rows = [r for r in rows if any(r in summary[m] for m in methods)]
    lines = []
    if caption:
        lines += [caption, ""]
    lines.append("| Attack | " + " | ".join(_label(m) for m in methods) + " |")
    lines.append("|---|" + "---|" * len(methods))
    for row in rows:
        means = {m: summary[m][row]["mean"] for m in methods if row in summary[m]}
        places = _places(means, higher_is_better=True)
        cells = []
        for m in methods:
            if row not in summary[m]:
                cells.append("--")
                continue
            c = summary[m][row]
            cells.append(_mark(f"{c['mean']:.2f} ± {c['std']:.2f}", places[m]))
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    ranks = average_ranks(summary, methods, rows)
    finite = {m: r for m, r in ranks.items() if not math.isnan(r)}
    places = _places(finite, higher_is_better=False) if finite else {}
    cells = [_mark(f"{ranks[m]:.2f}", places.get(m, 0)) for m in methods]
    lines.append("| Rank Avg. | " + " | ".join(cells) + " |")
    if information:
        cells = []
        for m in methods:
            c = information.get(m)
            if c is None:
                cells.append("--")
                continue
            mark = " (kde)" if c.get("estimator") == "kde" else ""
            cells.append(f"{c['mean']:.3g} ± {c['std']:.2g}{mark}")
        lines.append("| test KL [nats] | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _label(method: str) -> str:
    """Column name: interpretations the paper does not state carry a star."""
    try:
        return f"{method} *" if get_method(method).interpretation else method
    except ValueError:
        return method


# ----------------------------------------------------------------------------- figures
def _per_epoch_mean(runs: Sequence[dict[str, Any]], getter: Any) -> list[float]:
    """Mean over seeds of a per-epoch quantity (epochs common to all runs)."""
    n = min(len(r["epochs"]) for r in runs)
    out = []
    for i in range(n):
        vals = [getter(r["epochs"][i]) for r in runs]
        vals = [v for v in vals if v is not None and math.isfinite(v)]
        out.append(statistics.fmean(vals) if vals else math.nan)
    return out


def _by_method(runs: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        grouped.setdefault(r["method"], []).append(r)
    return grouped


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _integer_epochs(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def plot_info_plane(runs: Sequence[dict[str, Any]], path: Path) -> None:
    """I(X;Z) bound vs I(Z;Y) bound per epoch and method (seed means), one panel per estimator.

    The Gaussian-encoder methods use the KL upper bound, the noisy-layer methods the KDE
    estimate I_hat (bounded by log batch size); they live on different scales, hence two panels.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    panels = {"kl": axes[0], "kde": axes[1]}
    for method, group in _by_method(runs).items():
        if group[0]["info_plane"][0] is None:
            continue  # RES18 has no information term
        ax = panels["kde"] if method.startswith("NIB") else panels["kl"]
        xs = _per_epoch_mean(group, lambda e: e["i_xz"])
        ys = _per_epoch_mean(group, lambda e: e["i_zy"])
        line = ax.plot(xs, ys, marker="o", ms=3, label=method)[0]
        ax.annotate("end", (xs[-1], ys[-1]), fontsize=6, color=line.get_color())
    axes[0].set_xscale("log")
    axes[0].set_xlabel("I(X;Z) upper bound: mean KL [nats] (log scale)")
    axes[1].set_xlabel("I(X;T) estimate: KDE I_hat [nats]")
    for ax in axes:
        ax.set_ylabel("I(Z;Y) lower bound: log 10 - CE [nats]")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    axes[0].set_title("Gaussian encoder (training-epoch means)")
    axes[1].set_title("Noisy layer (training-epoch means)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_curves(runs: Sequence[dict[str, Any]], path: Path) -> None:
    """Clean and adversarial test accuracy and generalization gap per epoch and method."""
    plt = _pyplot()
    grouped = _by_method(runs)
    attacks = list(runs[0]["epochs"][0]["curve_adv"]) if runs else []
    panels = ["test_acc", *attacks, "gen_gap"]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        for method, group in grouped.items():
            if panel in ("test_acc", "gen_gap"):
                ys = _per_epoch_mean(group, lambda e, p=panel: e[p])
            else:
                ys = _per_epoch_mean(group, lambda e, p=panel: e["curve_adv"][p])
            ax.plot(range(1, len(ys) + 1), ys, marker="o", ms=3, label=method)
        title = {
            "test_acc": "clean test accuracy [%]",
            "gen_gap": "generalization gap: train - test acc [pts]",
        }.get(panel, f"{panel} accuracy [%] (curve subset)")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch")
        _integer_epochs(ax)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_ablation(summary: dict[str, dict[str, dict[str, Any]]], path: Path) -> None:
    """Grouped bars: the paper's Figure 5 methods under no attack and every attack."""
    plt = _pyplot()
    methods = [m for m in ABLATION_FIGURE if m in summary]
    fig, ax = plt.subplots(figsize=(11, 4))
    if methods:
        rows = [r for r in ROWS if all(r in summary[m] for m in methods)]
        width = 0.8 / len(methods)
        for i, m in enumerate(methods):
            xs = [j + (i - (len(methods) - 1) / 2) * width for j in range(len(rows))]
            ax.bar(
                xs,
                [summary[m][r]["mean"] for r in rows],
                width,
                yerr=[summary[m][r]["std"] for r in rows],
                capsize=2,
                label=m,
            )
        ax.set_xticks(range(len(rows)), rows)
        ax.legend(fontsize=8, ncols=len(methods))
    ax.set_ylabel("accuracy [%]")
    ax.set_title("Ablation (paper Fig. 5): mean ± std over seeds")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def mo_weight_history(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per-epoch means of the multi-objective optimizer's diagnostics, per method and seed.

    Keys ``median_<name>`` hold the per-step medians of each epoch (``median_weights_1``:
    w*_info; ``median_coef_ratio``: c_info / c_pred; ``median_grad_norm_ratio``:
    |g_info| / |g_pred|).
    """
    out: dict[str, dict[str, Any]] = {}
    for r in runs:
        if "optimizer" not in r["epochs"][0]:
            continue
        keys = r["epochs"][0]["optimizer"].keys()
        hist = {k: [e["optimizer"][k] for e in r["epochs"]] for k in keys}
        for k in r["epochs"][0].get("optimizer_median", {}):
            hist[f"median_{k}"] = [e["optimizer_median"][k] for e in r["epochs"]]
        out.setdefault(r["method"], {})[str(r["seed"])] = hist
    return out


def weights_summary(runs: Sequence[dict[str, Any]]) -> str:
    """One line per multi-objective method: the last epoch's weights and coefficients.

    Epoch means and, where recorded, per-step medians (the mean of w*_info is driven by a few
    steps; on most steps the closed form clamps it to 0).
    """
    lines = []
    for method, seeds in mo_weight_history(runs).items():

        def last(key: str, seeds: dict[str, Any] = seeds) -> float:
            vals = [h[key][-1] for h in seeds.values() if key in h]
            return sum(vals) / len(vals) if vals else math.nan

        line = (
            f"{method}: weights chosen (last epoch, mean of {len(seeds)} seed(s)): "
            f"w* = (pred {last('weights_0'):.5f}, info {last('weights_1'):.2e}), "
            f"coefficients c = (pred {last('coefficients_0'):.4f}, "
            f"info {last('coefficients_1'):.2e})"
        )
        if not math.isnan(last("median_weights_1")):
            line += (
                f"; per-step medians: w*_info {last('median_weights_1'):.2e}, "
                f"c_info/c_pred {last('median_coef_ratio'):.2e}"
            )
        lines.append(line)
    return "\n".join(lines)


def plot_weights(runs: Sequence[dict[str, Any]], path: Path) -> None:
    """Per epoch: w*_info (median and mean over steps), c_info / c_pred and c_pred.

    Seed means of the per-epoch statistics. ``c_info / c_pred`` is the effective beta of the
    step on the raw gradients (the update is ``c_pred (g_pred + (c_info / c_pred) g_info)``).
    """
    plt = _pyplot()
    grouped = {m: g for m, g in _by_method(runs).items() if "optimizer" in g[0]["epochs"][0]}
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for idx, (method, group) in enumerate(grouped.items()):
        color = f"C{idx % 10}"
        ep = list(range(1, len(group[0]["epochs"]) + 1))

        def med(e: dict[str, Any], k: str) -> float | None:
            return e.get("optimizer_median", {}).get(k)

        w_med = _per_epoch_mean(group, lambda e: med(e, "weights_1"))
        w_mean = _per_epoch_mean(group, lambda e: e["optimizer"].get("weights_1"))
        axes[0].plot(ep, w_med, marker="o", ms=3, color=color, label=method)
        axes[0].plot(ep, w_mean, ls="--", lw=1, color=color)
        ratio_med = _per_epoch_mean(group, lambda e: med(e, "coef_ratio"))
        ratio_mean = _per_epoch_mean(
            group,
            lambda e: (
                e["optimizer"]["coefficients_1"] / e["optimizer"]["coefficients_0"]
                if e["optimizer"].get("coefficients_0")
                else None
            ),
        )
        axes[1].plot(ep, ratio_med, marker="o", ms=3, color=color, label=method)
        axes[1].plot(ep, ratio_mean, ls="--", lw=1, color=color)
        c_pred = _per_epoch_mean(group, lambda e: e["optimizer"].get("coefficients_0"))
        axes[2].plot(ep, c_pred, marker="o", ms=3, color=color, label=method)
    axes[0].set_title("w*_info: per-step median (solid), epoch mean (dashed)", fontsize=9)
    axes[1].set_title(
        "c_info / c_pred (effective beta on raw gradients):\nper-step median (solid), "
        "ratio of epoch means (dashed)",
        fontsize=9,
    )
    axes[2].set_title("c_pred (epoch mean)", fontsize=9)
    axes[0].set_yscale("symlog", linthresh=1e-4)
    axes[1].set_yscale("symlog", linthresh=1e-8)
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        _integer_epochs(ax)
    if grouped:
        axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_eps(
    summaries: list[dict[str, dict[str, dict[str, Any]]]],
    budgets: list[dict[str, Any]],
    path: Path,
) -> None:
    """Accuracy vs attack budget per method: one panel per attack run at every budget.

    The clean accuracy is plotted at eps = 0.
    """
    plt = _pyplot()
    common = [
        a for a in ATTACKS if all(any(a in cells for cells in summ.values()) for summ in summaries)
    ]
    fig, axes = plt.subplots(
        1, max(len(common), 1), figsize=(5.5 * max(len(common), 1), 4.2), squeeze=False
    )
    methods = list(summaries[0]) if summaries else []
    for ax, attack in zip(axes[0], common, strict=False):
        for idx, m in enumerate(methods):
            xs = [0.0] + [b["eps"] * 255 for b in budgets]
            ys = [summaries[0][m]["NONE"]["mean"]]
            for summ in summaries:
                cell = summ.get(m, {}).get(attack)
                ys.append(cell["mean"] if cell else math.nan)
            interp = _label(m).endswith("*")
            ax.plot(xs, ys, marker="o", ms=3, ls="--" if interp else "-",
                    color=f"C{idx % 10}", label=_label(m))  # fmt: skip
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xticks([0.0] + [b["eps"] * 255 for b in budgets])
        ax.set_xticklabels(["0"] + [b["label"] for b in budgets], fontsize=7)
        ax.set_xlabel("eps (L-inf budget)")
        ax.set_ylabel("accuracy [%]")
        ax.set_title(f"{attack} accuracy vs eps (mean over seeds)", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, title="* not stated in the paper", title_fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summary_markdown(
    by_eps: list[dict[str, dict[str, dict[str, Any]]]],
    budgets: list[dict[str, Any]],
    information: dict[str, dict[str, Any]],
    runs: Sequence[dict[str, Any]],
) -> str:
    """One row per method: clean, FGSM and PGD accuracy at every budget, test KL, weights.

    The last two columns are the per-step medians of w*_info and of c_info / c_pred over the
    last epoch (mean over seeds), for the multi-objective methods.
    """
    history = mo_weight_history(runs)
    methods = [m for m in KNOWN_METHODS if m in by_eps[0]]
    cols = [(0, "NONE", "clean")]
    for i, b in enumerate(budgets):
        for attack in ("FGSM", "PGD"):
            if any(attack in by_eps[i].get(m, {}) for m in methods):
                cols.append((i, attack, f"{attack} {b['label']}"))
    head = " | ".join(c[2] for c in cols)
    lines = [
        "Summary, mean over seeds (accuracy %; test KL in nats, KDE estimate for NIB; "
        "last-epoch per-step medians of w*_info and c_info / c_pred):",
        "",
        f"| method | {head} | test KL | median w*_info | median c_info/c_pred |",
        "|---|" + "---|" * (len(cols) + 3),
    ]
    for m in methods:
        cells = []
        for i, row, _ in cols:
            cell = by_eps[i].get(m, {}).get(row)
            cells.append(f"{cell['mean']:.2f}" if cell else "--")
        kl = information.get(m)
        cells.append(f"{kl['mean']:.3g}" if kl else "--")
        for key in ("median_weights_1", "median_coef_ratio"):
            vals = [h[key][-1] for h in history.get(m, {}).values() if key in h]
            cells.append(f"{statistics.fmean(vals):.2e}" if vals else "--")
        lines.append(f"| {_label(m)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def clamp_markdown(
    summary: dict[str, dict[str, dict[str, Any]]], runs: Sequence[dict[str, Any]]
) -> str:
    """For runs attacked with the normalization outside the model: clean accuracy, accuracy
    on the normalized images clamped to [0, 1] without any perturbation ("CLAMP", what the
    attacks' final clamp alone does), and the share of normalized values the clamp changes."""
    fractions = {r["method"]: r["clamped_fraction"] for r in runs if "clamped_fraction" in r}
    methods = [m for m in KNOWN_METHODS if "CLAMP" in summary.get(m, {})]
    lines = [
        "Normalization outside the model: accuracy (%) on the normalized test images (NONE) "
        "and on the same images clamped to [0, 1] with no perturbation (CLAMP: torchattacks' "
        "final clamp alone); share of normalized pixel values outside [0, 1]:",
        "",
        "| method | NONE | CLAMP | values outside [0, 1] |",
        "|---|---|---|---|",
    ]
    for m in methods:
        share = fractions.get(m)
        lines.append(
            f"| {_label(m)} | {summary[m]['NONE']['mean']:.2f} | "
            f"{summary[m]['CLAMP']['mean']:.2f} | "
            + (f"{100 * share:.1f}%" if share is not None else "--")
            + " |"
        )
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- everything
def _budget_caption(b: dict[str, Any], first: bool) -> str:
    rule = "the paper's setting" if first else "alpha = eps / 4"
    return f"eps = {b['label']} (alpha = {b['alpha'] * 255:.3g}/255, {b['steps']} steps: {rule})"


def write_report(out: Path, meta: dict[str, Any], figures: bool = True) -> dict[str, Any]:
    """Aggregate the stored runs of ``out`` into results.json, table.md and the figures.

    Args:
        out: Output directory.
        meta: Command line, versions, device, timings ... stored under ``"meta"``.
        figures: Also draw the PNG figures.

    Returns:
        The ``results.json`` content.
    """
    out = Path(out)
    runs = load_runs(out)
    summary = summarize(runs)
    budgets = budgets_of(runs)
    by_eps = [summarize(runs, i) for i in range(len(budgets))] if budgets else [summary]
    information = summarize_information(runs)
    main = [m for m in MAIN_METHODS if m in summary]
    ablation = [m for m in ABLATION_FIGURE if m in summary]
    interp = [m for m in INTERPRETATION_TABLE if m in summary]
    results = {
        "meta": meta,
        "rows": list(ROWS),
        "summary": summary,
        "budgets": budgets,
        "summary_by_eps": {b["label"]: s for b, s in zip(budgets, by_eps, strict=False)},
        "test_kl": information,
        "rank_avg_main": average_ranks(summary, main, ROWS) if main else {},
        "rank_avg_ablation": average_ranks(summary, ablation, ROWS) if ablation else {},
        "mo_weights_per_epoch": mo_weight_history(runs),
        "runs": runs,
    }
    write_json(out / "results.json", results)
    desc = meta.get("description", "")
    first = f" {_budget_caption(budgets[0], True)}." if budgets else ""
    text = table_markdown(
        summary,
        main,
        ROWS,
        caption=f"Accuracy (%) under attack. {desc}{first}",
        information=information,
    )
    if len(ablation) > 1:
        text += "\n" + table_markdown(
            summary, ablation, ROWS, caption="Ablation (paper Fig. 5), same settings:"
        )
    if any(get_method(m).interpretation for m in interp):
        text += "\n" + table_markdown(
            summary,
            interp,
            ROWS,
            caption=(
                "Gradient-normalized variants, same settings. * = an interpretation the paper "
                "does not state (MIB-l2 / MIB-loss: MIB on g_i/|g_i| or g_i/L_i, update "
                "sum c_i g_i / n_i; MGDA-l2: plain min-norm on g_i/|g_i|):"
            ),
            information=information,
        )
    for i, b in enumerate(budgets[1:], start=1):
        methods = [m for m in KNOWN_METHODS if m in by_eps[i]]
        rows = ["NONE", *[a for a in ATTACKS if any(a in by_eps[i][m] for m in methods)]]
        text += "\n" + table_markdown(
            by_eps[i],
            methods,
            rows,
            caption=f"Accuracy (%) at {_budget_caption(b, False)}, same models:",
        )
    if runs and budgets:
        text += "\n" + summary_markdown(by_eps, budgets, information, runs)
    if any("CLAMP" in cells for cells in summary.values()):
        text += "\n" + clamp_markdown(summary, runs)
    (out / "table.md").write_text(text)
    if figures and runs:
        plot_info_plane(runs, out / "info_plane.png")
        plot_curves(runs, out / "curves.png")
        plot_ablation(summary, out / "ablation.png")
        plot_weights(runs, out / "weights.png")
        if len(budgets) > 1:
            plot_eps(by_eps, budgets, out / "eps.png")
    return results

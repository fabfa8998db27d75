"""``table.md``: Delta m %, per-task metrics +- std, epoch time, separation and conflict."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .report import BASELINE, PAIRS
from .tasks import TASKS

__all__ = ["table_markdown"]

_ARROW = {True: "↑", False: "↓"}


def _pm(cell: Mapping[str, Any] | None, digits: int = 2) -> str:
    if cell is None:
        return "-"
    return f"{cell['mean']:.{digits}f} ± {cell['std']:.{digits}f}"


def _ratio(e: Mapping[str, Any]) -> str:
    if e.get("time_ratio") is None:
        return "-"
    return f"{e['time_ratio']:.2f}x / {e['cpu_time_ratio']:.2f}x"


def _main_table(summary: Mapping[str, Any]) -> list[str]:
    heads = " | ".join(f"{t.name}: {t.metric} {_ARROW[t.higher_is_better]}" for t in TASKS)
    lines = [
        f"| method | Δm % ↓ | {heads} | epoch time vs Mean (wall / CPU) |",
        "|---|---|" + "---|" * len(TASKS) + "---|",
    ]
    methods = summary["methods"]
    singles = [k for k, e in methods.items() if e["single"] is not None]
    multi = sorted(
        (k for k, e in methods.items() if e["single"] is None),
        key=lambda k: methods[k].get("delta_m", {}).get("mean", float("inf")),
    )
    for k in singles:
        e = methods[k]
        cells = [_pm(e["metrics"][t.name]) if t.name == e["single"] else "·" for t in TASKS]
        lines.append(f"| {k} | (reference) | {' | '.join(cells)} | {_ratio(e)} |")
    for k in multi:
        e = methods[k]
        cells = [_pm(e["metrics"][t.name]) for t in TASKS]
        name = f"**{k}**" if k == BASELINE else k
        lines.append(f"| {name} | {_pm(e.get('delta_m'))} | {' | '.join(cells)} | {_ratio(e)} |")
    return lines


def _separation(summary: Mapping[str, Any]) -> list[str]:
    sep = summary["separation"]
    if not sep:
        return []
    lines = [
        "",
        "## Separation: methods against seed noise",
        "",
        "Pooled seed std: root mean of the per-method sample variances over seeds. A method is "
        "separated from Mean when |mean − Mean's| > 3 pooled std × sqrt(1/n + 1/n_Mean).",
        "",
        "| column | pooled seed std | spread of the method means | spread / std | "
        "separated from Mean (z) |",
        "|---|---|---|---|---|",
    ]
    for col, s in sep.items():
        z = s["separated_from_mean"]
        top = sorted(z.items(), key=lambda kv: -abs(kv[1]))
        shown = ", ".join(f"{k} ({v:+.0f})" for k, v in top[:8])
        more = f" and {len(top) - 8} more" if len(top) > 8 else ""
        ratio = "-" if s["spread_over_std"] is None else f"{s['spread_over_std']:.1f}"
        lines.append(
            f"| {col} | {s['pooled_std']:.3f} | {s['spread']:.3f} | {ratio} | "
            f"{len(top)}: {shown}{more} |"
        )
    return lines


def _against_single(summary: Mapping[str, Any]) -> list[str]:
    e = summary["methods"].get(BASELINE)
    single = summary["single_baselines"]
    if e is None or "relative" not in e:
        return []
    lines = [
        "",
        f"## {BASELINE} (equal weights) against the single-task models",
        "",
        "| task | single-task | Mean | relative change (%) |",
        "|---|---|---|---|",
    ]
    for t in TASKS:
        lines.append(
            f"| {t.name} ({t.metric}) | {single[t.name]:.2f} | "
            f"{_pm(e['metrics'][t.name])} | {e['relative'][t.name]:+.1f} |"
        )
    return lines


def _conflict(summary: Mapping[str, Any]) -> list[str]:
    cos = summary["cosines"]
    rows = [k for k in (BASELINE, "MGDA", "MIB") if k in cos]
    if not rows:
        return []
    pairs = [f"{TASKS[i].name}/{TASKS[j].name}" for i, j in PAIRS]
    lines = [
        "",
        "## Conflict: cosines between the task gradients on the shared trunk",
        "",
        "Mean over training (and over seeds) of each pair's cosine; in brackets the "
        "fraction of all training steps on which that cosine was negative.",
        "",
        f"| run | {' | '.join(pairs)} |",
        "|---|" + "---|" * len(pairs),
    ]
    for k in rows:
        c = cos[k]
        neg = c["pair_negative_steps"] or [float("nan")] * len(pairs)
        cells = [f"{m:+.3f} ({f:.0%})" for m, f in zip(c["pair_mean"], neg)]
        lines.append(f"| {k} | {' | '.join(cells)} |")
    gn = cos[rows[0]]["grad_norms"]
    if gn:
        first, last = gn[0], gn[-1]
        lines += [
            "",
            f"Gradient norms on the trunk under {rows[0]} (first / last trace point): "
            + ", ".join(f"{t.name} {a:.3g} / {b:.3g}" for t, a, b in zip(TASKS, first, last))
            + ".",
        ]
    return lines


def table_markdown(meta: Mapping[str, Any], summary: Mapping[str, Any]) -> str:
    """The markdown report of one invocation."""
    single = summary["single_baselines"]
    tasks = "; ".join(
        f"**{t.name}** ({t.kind}; loss {t.loss}; metric {t.metric} {_ARROW[t.higher_is_better]})"
        for t in TASKS
    )
    lines = [
        f"# Fashion tasks: preset {meta['preset']}",
        "",
        meta["description"],
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Tasks: {tasks}.",
        "",
        "Single-task baselines S_t (seed means): "
        + (", ".join(f"{t.name} {single[t.name]:.2f}" for t in TASKS if t.name in single) or "none")
        + ". Δm % = (100/T) Σ_t (−1)^{l_t} (M_t − S_t)/S_t, l_t = 1 when higher is "
        "better: lower is better. Rows sorted by Δm; mean ± sample std over seeds "
        f"{meta['seeds']}. Epoch time: fastest epoch over Mean's fastest.",
        "",
    ]
    lines += _main_table(summary)
    lines += _separation(summary) + _against_single(summary) + _conflict(summary)
    for key, title in (("left_out", "Left out"), ("failed", "Failed runs")):
        if meta.get(key):
            lines += ["", f"## {title}", ""]
            lines += [f"- {name}: {why}" for name, why in meta[key].items()]
    trained = [i for i in meta.get("invocations", []) if i.get("trained")]
    if trained:
        lines.append("")
        lines += [
            f"Invocation started {i['started_utc']}: {i['trained']} runs trained in "
            f"{i['wall_s'] / 60:.1f} min (wall clock, data and reports included; load "
            f"average at start {i.get('load', '?')})."
            for i in trained
        ]
    return "\n".join(lines) + "\n"

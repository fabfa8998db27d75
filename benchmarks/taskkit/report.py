"""Delta m %, the summary over seeds, ``results.json``, ``table.md`` and the figures.

Delta m % (Maninis et al. 2019; the convention of the multi-task tables since, e.g. NYUv2 in
Nash-MTL, FAMO, FairGrad): for a method with test metrics ``M_t`` and single-task baselines
``S_t`` (here the mean over seeds of ``single <task>``'s metric on its own task),

    Delta m = (100 / T) * sum_t (-1)^{l_t} (M_t - S_t) / S_t,

with ``l_t = 1`` when higher is better, so a lower Delta m is better and 0 means "as good as
the single-task models on average". It is computed per seed and reported as mean +- sample
std over seeds (the mean over seeds equals Delta m of the seed-mean metrics).

Time per epoch relative to ``Mean``: the fastest training epoch of all the method's runs
over the fastest of ``Mean``'s (best-of-N: other jobs on a shared machine only ever slow an
epoch down), on the wall clock and on process CPU time.

Separation: for each task (and Delta m) the pooled seed std ``s`` (root mean of the
per-method sample variances) and, per method, ``z = (mean - mean_Mean) / (s sqrt(1/n + 1/n_Mean))``;
a method is "separated" from Mean on that column when ``|z| > 3``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks._common import read_runs as load_runs
from benchmarks._common import run_file, slug, write_json

from .tasks import TASKS

__all__ = [
    "BASELINE",
    "cosine_stats",
    "delta_m",
    "load_runs",
    "run_path",
    "separation",
    "single_baselines",
    "summarize",
    "write_json",
    "write_report",
]

BASELINE = "Mean"
PAIRS = [(i, j) for i in range(len(TASKS)) for j in range(i + 1, len(TASKS))]


def delta_m(
    metrics: Mapping[str, float],
    single: Mapping[str, float],
    higher_is_better: Mapping[str, bool] | None = None,
) -> float:
    """Delta m % of one set of metrics against the single-task baselines (lower is better).

    Args:
        metrics: ``{task: M_t}``.
        single: ``{task: S_t}`` for the same tasks (non-zero).
        higher_is_better: ``{task: l_t}``; default: the directions of :data:`TASKS`.

    Example:
        >>> d = delta_m({"a": 90.0, "b": 12.0}, {"a": 100.0, "b": 10.0}, {"a": True, "b": False})
        >>> round(d, 12)  # (100 / 2) * (10 / 100 + 2 / 10)
        15.0
    """
    hib = higher_is_better or {t.name: t.higher_is_better for t in TASKS}
    if set(metrics) != set(single):
        raise ValueError(f"tasks differ: {sorted(metrics)} vs baselines {sorted(single)}")
    terms = []
    for t, m in metrics.items():
        if single[t] == 0:
            raise ValueError(f"single-task baseline of {t!r} is 0: Delta m is undefined")
        sign = -1.0 if hib[t] else 1.0
        terms.append(sign * (m - single[t]) / single[t])
    return 100.0 * statistics.fmean(terms)


def run_path(out: Path, label: str, seed: int) -> Path:
    """Where the record of one (method, seed) is stored."""
    return run_file(out, slug(label), seed)


def _ms(values: Sequence[float]) -> dict[str, Any]:
    vals = [float(v) for v in values]
    return {
        "mean": statistics.fmean(vals) if vals else float("nan"),
        "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
        "values": vals,
    }


def _best(runs: Sequence[dict[str, Any]], key: str) -> float:
    return float(min(min(r[key]) for r in runs))


def single_baselines(runs: Sequence[dict[str, Any]]) -> dict[str, float]:
    """``{task: S_t}``: the seed-mean metric of ``single <task>`` on its own task."""
    out = {}
    for t in TASKS:
        vals = [r["test"][t.name]["metric"] for r in runs if r["single"] == t.name]
        if vals:
            out[t.name] = statistics.fmean(vals)
    return out


def _entry(
    rs: list[dict[str, Any]], single: dict[str, float], base: list[dict[str, Any]]
) -> dict[str, Any]:
    names = [t.name for t in TASKS]
    e: dict[str, Any] = {
        "seeds": sorted(r["seed"] for r in rs),
        "base": rs[0]["base"],
        "single": rs[0]["single"],
        "representation": rs[0]["representation"],
        "mograd_args": rs[0]["mograd_args"],
        "metrics": {t: _ms([r["test"][t]["metric"] for r in rs]) for t in names},
        "losses": {t: _ms([r["test"][t]["loss"] for r in rs]) for t in names},
        "best_epoch_s": _best(rs, "epoch_s"),
        "best_epoch_cpu_s": _best(rs, "epoch_cpu_s"),
        "time_ratio": _best(rs, "epoch_s") / _best(base, "epoch_s") if base else None,
        "cpu_time_ratio": _best(rs, "epoch_cpu_s") / _best(base, "epoch_cpu_s") if base else None,
        "duration_s": _ms([r["duration_s"] for r in rs]),
    }
    if rs[0]["single"] is None and len(single) == len(TASKS):
        e["delta_m"] = _ms(
            [delta_m({t: r["test"][t]["metric"] for t in names}, single) for r in rs]
        )
        e["relative"] = {
            t: 100.0 * (e["metrics"][t]["mean"] - single[t]) / single[t] for t in names
        }
    if rs[0]["coefficients"]:
        last = [r["coefficients"][-1] for r in rs]
        e["coefficients_last_epoch"] = [statistics.fmean(c) for c in zip(*last)]
    return e


def summarize(runs: Sequence[dict[str, Any]], order: Sequence[str]) -> dict[str, Any]:
    """Per-method statistics over seeds (see the module docstring), in ``order``."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault(r["method"], []).append(r)
    single = single_baselines(runs)
    base = groups.get(BASELINE, [])
    rank = {g: i for i, g in enumerate(order)}
    methods = {
        g: _entry(groups[g], single, base)
        for g in sorted(groups, key=lambda g: (rank.get(g, len(rank)), g))
    }
    return {
        "single_baselines": single,
        "methods": methods,
        "separation": separation(methods),
        "cosines": cosine_stats(groups),
    }


def _column(entry: Mapping[str, Any], name: str) -> Any:
    """A method's ``{mean, std, values}`` for a task's metric or for ``"delta_m"``."""
    return entry.get("delta_m") if name == "delta_m" else entry["metrics"][name]


def separation(methods: Mapping[str, Any]) -> dict[str, Any]:
    """Pooled seed std, spread of the means and the methods separated from Mean, per column."""
    multi = {k: v for k, v in methods.items() if v["single"] is None}
    out: dict[str, Any] = {}
    for name in [*(t.name for t in TASKS), "delta_m"]:
        cells = {k: _column(e, name) for k, e in multi.items() if _column(e, name) is not None}
        var = [statistics.variance(c["values"]) for c in cells.values() if len(c["values"]) > 1]
        if not var or BASELINE not in cells:
            continue
        sp = math.sqrt(statistics.fmean(var))
        ref = cells[BASELINE]
        sep = {}
        for k, c in cells.items():
            scale = sp * math.sqrt(1 / len(c["values"]) + 1 / len(ref["values"]))
            z = (c["mean"] - ref["mean"]) / scale if scale > 0 else 0.0
            if abs(z) > 3 and k != BASELINE:
                sep[k] = round(z, 1)
        means = [c["mean"] for c in cells.values()]
        out[name] = {
            "pooled_std": sp,
            "spread": max(means) - min(means),
            "spread_over_std": (max(means) - min(means)) / sp if sp > 0 else None,
            "separated_from_mean": sep,
        }
    return out


def cosine_stats(groups: Mapping[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per method: the seed-mean traces of each pair's cosine and of the gradient norms, the
    mean cosine over training and the fraction of all steps whose cosine was negative
    (cosines on the trunk's parameters, or on ``z`` in representation mode)."""
    out: dict[str, Any] = {}
    for g, rs in groups.items():
        traces = [r["trace"] for r in rs if r.get("trace") and r["trace"]["step"]]
        if not traces:
            continue
        n = min(len(t["step"]) for t in traces)

        def mean_of(key: str, width: int, traces: list[Any] = traces, n: int = n) -> list[Any]:
            return [
                [statistics.fmean(t[key][i][p] for t in traces) for p in range(width)]
                for i in range(n)
            ]

        cos = mean_of("cosines", len(PAIRS))
        neg = mean_of("negative", len(PAIRS)) if "negative" in traces[0] else None
        out[g] = {
            "step": traces[0]["step"][:n],
            "cosines": cos,
            "grad_norms": mean_of("grad_norms", len(TASKS)),
            "pair_mean": [statistics.fmean(c[p] for c in cos) for p in range(len(PAIRS))],
            "pair_negative_steps": None
            if neg is None
            else [statistics.fmean(v[p] for v in neg) for p in range(len(PAIRS))],
        }
    return out


def _pm(cell: Mapping[str, Any] | None, digits: int = 2) -> str:
    if cell is None:
        return "-"
    return f"{cell['mean']:.{digits}f} ± {cell['std']:.{digits}f}"


def write_report(
    out: Path, meta: dict[str, Any], runs: Sequence[dict[str, Any]], figures: bool = True
) -> dict[str, Any]:
    """Write ``results.json``, ``table.md`` and (unless ``figures`` is False) ``delta_m.png``
    and ``cosines.png``; returns the summary."""
    from .figures import plot_cosines, plot_delta_m
    from .table import table_markdown

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
    if figures and summary["methods"]:
        plot_delta_m(summary, Path(out) / "delta_m.png")
        plot_cosines(summary, Path(out) / "cosines.png")
    return summary

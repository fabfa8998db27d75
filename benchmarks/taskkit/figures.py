"""The figures: ``delta_m.png`` (Delta m % of every method) and ``cosines.png`` (pairwise
gradient cosines and gradient norms on the shared trunk over training)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .report import BASELINE, PAIRS
from .tasks import TASKS

__all__ = ["plot_cosines", "plot_delta_m"]


def _family(label: str) -> tuple[str, str]:
    if label.endswith(" (repr)"):
        return "representation mode", "#9467bd"
    if label.startswith("MIB"):
        return "MIB", "#d62728"
    if label.endswith("-l2"):
        return "normalize='l2'", "#2ca02c"
    if label.endswith("-loss"):
        return "normalize='loss'", "#ff7f0e"
    return "raw gradients", "#1f77b4"


def plot_delta_m(summary: Mapping[str, Any], path: Path) -> None:
    """Horizontal bars of Delta m % (mean, seed std as error bars), best at the top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(k, e["delta_m"]) for k, e in summary["methods"].items() if "delta_m" in e]
    rows.sort(key=lambda kv: kv[1]["mean"])
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.22 * len(rows)))
    seen: set[str] = set()
    for i, (k, d) in enumerate(rows):
        fam, color = _family(k)
        ax.barh(
            i,
            d["mean"],
            xerr=d["std"],
            color=color,
            edgecolor="black" if k == BASELINE else color,
            lw=1.5 if k == BASELINE else 0,
            error_kw={"lw": 0.8},
            label=None if fam in seen else fam,
        )
        seen.add(fam)
    ax.set_yticks(range(len(rows)), [k for k, _ in rows], fontsize=7)
    ax.set_ylim(len(rows) - 0.4, -0.6)  # best at the top, no empty margins
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("Δm % against the single-task models (lower is better)")
    ax.set_title("Fashion tasks: Δm % (mean ± std over seeds)", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _shown(summary: Mapping[str, Any]) -> list[str]:
    """Mean, then the best exact-mode method by Delta m, then MGDA and MIB if present."""
    cos = summary["cosines"]
    ranked = sorted(
        (
            k
            for k, e in summary["methods"].items()
            if "delta_m" in e and not e["representation"] and k in cos
        ),
        key=lambda k: summary["methods"][k]["delta_m"]["mean"],
    )
    out = [k for k in (BASELINE, *ranked[:1], "MGDA", "MIB") if k in cos]
    return list(dict.fromkeys(out))


def plot_cosines(summary: Mapping[str, Any], path: Path) -> None:
    """One panel per task pair (cosine over training steps) and one of the gradient norms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = _shown(summary)
    if not shown:
        return
    cos = summary["cosines"]
    fig, axes = plt.subplots(2, 4, figsize=(15, 7))
    colors = ["black", "#1f77b4", "#d62728", "#2ca02c"]
    for p, (i, j) in enumerate(PAIRS):
        ax = axes.flat[p]
        for k, c in zip(shown, colors):
            ax.plot(
                cos[k]["step"],
                [v[p] for v in cos[k]["cosines"]],
                color=c,
                lw=1.6 if k == BASELINE else 1.0,
                label=k,
            )
        ax.axhline(0, color="grey", lw=0.8, ls=":")
        ax.set_title(f"cos({TASKS[i].name}, {TASKS[j].name})", fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    ax = axes.flat[len(PAIRS)]
    base = cos[shown[0]]
    for q, t in enumerate(TASKS):
        ax.semilogy(base["step"], [v[q] for v in base["grad_norms"]], label=t.name)
    ax.set_title(f"gradient norms on the trunk ({shown[0]})", fontsize=10)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    axes.flat[-1].axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    axes.flat[-1].legend(handles, labels, loc="center", fontsize=10, title="run (mean over seeds)")
    fig.suptitle(
        "Pairwise cosines of the task gradients on the shared trunk over training "
        "(each point: mean over trace_every steps)",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

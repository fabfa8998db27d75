"""The parts of a step that ``benchmarks/step_overhead.py`` measures besides whole steps.

* :func:`pass_costs`: per model and k, the forward pass F and the two parts of a backward
  pass, the activation gradients B_a (a backward pass to the outputs of the modules that
  hold parameters, no weight gradient) and the weight gradients B_w (a full backward pass
  minus that), timed in interleaved rounds. They give the pass-count floors of
  :func:`pass_floors`: the hand-written exact step costs ``F + k (B_a + B_w)``, a step that
  forms ``G`` and the update from the records at least ``F + k B_a + B_w``.
* :func:`solver_times`: the weightings alone (MinNorm, UPGrad, DualProj, CAGrad, Nash-MTL)
  on the Gram matrix of the benchmark MLP's per-loss gradients at each k.

Both are library functions of the ``step_overhead`` entry point (no command line of
their own).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["pass_costs", "pass_floors", "pass_table", "solver_table", "solver_times"]

Forward = Callable[[nn.Module], tuple[list[torch.Tensor], list[torch.Tensor]]]


def _owners(model: nn.Module) -> list[nn.Module]:
    """The modules that hold parameters themselves."""
    return [m for m in model.modules() if any(True for _ in m.parameters(recurse=False))]


def pass_costs(
    model: nn.Module,
    forward: Forward,
    rounds: int,
    sync: Callable[[], None] = lambda: None,
) -> dict[str, float]:
    """Median milliseconds of F, B_a and B_w (from paired rounds) for ``model``.

    Each round times, in alternating order, the forward pass alone, the forward pass and
    a backward pass of the summed losses to the outputs of every module holding
    parameters (activation gradients only), and the forward pass and a full backward pass
    to every parameter. ``B_a = median(act - F)`` and ``B_w = median(full - act)`` over
    the rounds.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    owners = _owners(model)

    def fwd() -> None:
        forward(model)

    def act() -> None:
        outs: list[torch.Tensor] = []
        hooks = [m.register_forward_hook(lambda _m, _a, o: outs.append(o)) for m in owners]
        try:
            losses, _ = forward(model)
        finally:
            for h in hooks:
                h.remove()
        targets = [o for o in outs if isinstance(o, torch.Tensor) and o.requires_grad]
        torch.autograd.grad(torch.stack(losses).sum(), targets, allow_unused=True)

    def full() -> None:
        losses, _ = forward(model)
        torch.autograd.grad(torch.stack(losses).sum(), params, allow_unused=True)

    fns = {"forward": fwd, "act": act, "full": full}
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(rounds + 2):
        for name in list(fns) if r % 2 == 0 else list(reversed(fns)):
            sync()
            t0 = time.perf_counter()
            fns[name]()
            sync()
            if r >= 2:  # two warm-up rounds
                times[name].append(time.perf_counter() - t0)
    ms = {n: [v * 1e3 for v in t] for n, t in times.items()}
    return {
        "F_ms": statistics.median(ms["forward"]),
        "B_a_ms": statistics.median([a - f for a, f in zip(ms["act"], ms["forward"])]),
        "B_w_ms": statistics.median([b - a for b, a in zip(ms["full"], ms["act"])]),
    }


def pass_floors(costs: dict[str, float], k: int) -> dict[str, float]:
    """The pass-count model: the hand-written exact step ``F + k (B_a + B_w)``, the floor of
    a step from the records ``F + k B_a + B_w`` (Gram products not counted), their ratio."""
    f, ba, bw = costs["F_ms"], costs["B_a_ms"], costs["B_w_ms"]
    exact = f + k * (ba + bw)
    records = f + k * ba + bw
    return {"exact_ms": exact, "records_ms": records, "records_over_exact": records / exact}


def pass_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown: the measured pass costs and the pass-count floors per (model, k)."""
    lines = [
        "Pass costs (median ms over paired rounds; F: forward, B_a: the activation "
        "gradients of a backward pass, B_w: its weight gradients) and the pass-count "
        "floors: exact = F + k (B_a + B_w), from records = F + k B_a + B_w (no Gram "
        "products).",
        "",
        "| model | k | F | B_a | B_w | exact | from records | records / exact |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        c = row["passes"]
        fl = pass_floors(c, int(row["k"]))
        lines.append(
            f"| {row['model']} | {row['k']} | {c['F_ms']:.2f} | {c['B_a_ms']:.2f} | "
            f"{c['B_w_ms']:.2f} | {fl['exact_ms']:.1f} | {fl['records_ms']:.1f} | "
            f"{fl['records_over_exact']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def solver_times(
    grams: dict[int, tuple[torch.Tensor, torch.Tensor]],
    rounds: int,
    names: Sequence[str],
    progress: Callable[[], None] | None = None,
) -> dict[str, dict[int, float]]:
    """Median milliseconds of each weighting ``names`` on ``grams`` (k -> (G, loss values)),
    interleaved over ``rounds`` rounds after one untimed call each."""
    from mograd.weightings import WEIGHTINGS

    out: dict[str, dict[int, float]] = {n: {} for n in names}
    for k, (gram, values) in grams.items():
        weightings = {n: WEIGHTINGS[n]() for n in names}
        for w in weightings.values():
            w(gram, values)
        times: dict[str, list[float]] = {n: [] for n in names}
        for r in range(rounds):
            for n in names if r % 2 == 0 else list(reversed(names)):
                t0 = time.perf_counter()
                weights = weightings[n](gram, values)
                float(weights.sum())  # the host has the weights (the step reads them too)
                times[n].append(time.perf_counter() - t0)
            if progress is not None:
                progress()
        for n in names:
            out[n][k] = statistics.median(times[n]) * 1e3
    return out


def solver_table(
    solvers: dict[str, dict[int, float]], exact_ms: dict[int, float] | None = None
) -> str:
    """Markdown: solver milliseconds per k, and (``exact_ms``: k -> the exact step's
    median ms) the share of the exact step."""
    ks = sorted({k for per in solvers.values() for k in per})
    lines = [
        "Weighting alone on the MLP's Gram matrix (float64, median ms)"
        + ("; in brackets its share of the exact step at that k." if exact_ms else "."),
        "",
        "| weighting | " + " | ".join(f"k = {k}" for k in ks) + " |",
        "|---|" + "---|" * len(ks),
    ]
    for name, per in solvers.items():
        cells = []
        for k in ks:
            ms = per.get(k)
            if ms is None:
                cells.append("--")
                continue
            share = (exact_ms or {}).get(k)
            cells.append(f"{ms:.2f}" + (f" ({100 * ms / share:.0f} %)" if share else ""))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"

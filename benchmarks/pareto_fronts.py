"""Does MIB reach non-convex Pareto fronts? Measures it on problems with known fronts.

Problems (see ``mo_problems.py``): ZDT1 (convex), ZDT2, VLMOP2 and Fonseca-Fleming n=10
(concave), ZDT3 (disconnected). Methods, all with the same inner optimizer (Adam), learning
rate, step budget and the same random starts:

- ``linear``: linear scalarization ``w f1 + (1 - w) f2``, one weight per start, weights
  ``w_i = (i + 1/2) / N`` for ``i = 0..N-1``;
- ``mgda``: min-norm weights, power 1, no smoothing (``MOWrapper(weights="min_norm", power=1,
  mu=None)``);
- ``mib``: MIB defaults (min-norm weights, power 2, Smooth-IB with mu = 0.2);
- ``mib_wo_s``: MIB without smoothing (mu=None);
- ``mib_wo_aw``: MIB without automatic weights (fixed equal weights through power and smoothing).

All starts of a method are optimized as one batch: row ``b`` of the parameters only affects row
``b`` of the objectives, so per-row gradients, Gram matrices, weights and (element-wise) Adam
states are exactly those of independent ``mograd.MOWrapper`` runs (checked by
``tests/benchmarks/test_pareto_fronts_bench.py``).

Metrics, per method and seed (mean +- std over seeds in ``table.md``):

- ``hv``: hypervolume of the final points w.r.t. the fixed reference point (1.1, 1.1);
- ``igd``: inverted generational distance to the dense true front;
- ``gd``: mean distance of the final points to the true front (convergence check);
- ``on_front``: share of final points within ``delta`` of the true front;
- ``concave_pts``: share of final points that *reached the concave part*: within ``delta`` of
  the true front, with the nearest front sample in the concave part (front samples that no
  linear weighting can reach, farther than ``delta`` from any supported sample);
- ``concave_cov``: share of the concave part within ``delta`` of a point that reached it.

Run ``python -m benchmarks.pareto_fronts --help``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks._common import command_line, default_out, reference
from benchmarks.mo_problems import PROBLEMS, Problem, front_partition, get_problem
from mograd import pareto

__all__ = [
    "METHODS",
    "PRESETS",
    "Config",
    "MethodSpec",
    "evaluate",
    "main",
    "optimize_batch",
    "run_benchmark",
]


@dataclass(frozen=True)
class MethodSpec:
    """How a method combines the two gradients.

    Attributes:
        label: Name in tables and figures.
        kind: ``"linear"`` (per-start weight sweep) or ``"mo"`` (MOWrapper-style step).
        weights: ``"min_norm"`` or a fixed pair (``kind == "mo"`` only).
        power: Reweighting exponent ``w~ = w ** power``.
        mu: Smooth-IB temperature, ``None`` for no smoothing.
    """

    label: str
    kind: str
    weights: str | tuple[float, float] = "min_norm"
    power: float = 1.0
    mu: float | None = None


METHODS: dict[str, MethodSpec] = {
    "linear": MethodSpec("Linear", "linear"),
    "mgda": MethodSpec("MGDA", "mo", "min_norm", 1.0, None),
    "mib": MethodSpec("MIB", "mo", "min_norm", 2.0, 0.2),
    "mib_wo_s": MethodSpec("MIB w.o. s", "mo", "min_norm", 2.0, None),
    "mib_wo_aw": MethodSpec("MIB w.o. aw", "mo", (0.5, 0.5), 2.0, 0.2),
}


METRICS = ("hv", "igd", "gd", "on_front", "concave_cov", "concave_pts", "n_nondominated")


@dataclass(frozen=True)
class Config:
    """One benchmark configuration (a preset, possibly overridden on the command line)."""

    preset: str
    problems: tuple[str, ...]
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    starts: int
    steps: int
    lr: float
    delta: float
    front_samples: int


PRESETS: dict[str, dict[str, Any]] = {
    "quick": {"seeds": 5, "starts": 32, "steps": 2000, "lr": 0.02},
    "paper": {"seeds": 10, "starts": 64, "steps": 5000, "lr": 0.01},
}


def _min_norm_2(gram: torch.Tensor) -> torch.Tensor:
    """Batched closed-form min-norm weights for two gradients, ``gram`` ``(B, 2, 2)`` -> ``(B, 2)``.

    Same formula and degenerate-case rule as ``mograd.min_norm_weights`` for k = 2:
    ``w1 = clamp((G22 - G12) / (G11 + G22 - 2 G12), 0, 1)``, and ``w = (1/2, 1/2)`` when the two
    gradients coincide (denominator below ``4 eps (G11 + G22)``).
    """
    g11, g22, g12 = gram[:, 0, 0], gram[:, 1, 1], gram[:, 0, 1]
    den = g11 + g22 - 2.0 * g12
    safe = den > (g11 + g22) * torch.finfo(gram.dtype).eps * 4.0
    ratio = (g22 - g12) / torch.where(safe, den, torch.ones_like(den))
    w1 = torch.where(safe, ratio.clamp(0.0, 1.0), torch.full_like(den, 0.5))
    return torch.stack([w1, 1.0 - w1], dim=1)


def mo_coefficients(
    spec: MethodSpec, g1: torch.Tensor, g2: torch.Tensor, losses: torch.Tensor
) -> torch.Tensor:
    """Per-start gradient coefficients ``c`` ``(B, 2)`` of an MOWrapper-style step.

    Args:
        spec: The method (``kind == "mo"``).
        g1: Per-start gradients of objective 1, ``(B, P)``.
        g2: Per-start gradients of objective 2, ``(B, P)``.
        losses: Per-start objective values (detached), ``(B, 2)``.

    Returns:
        ``c`` with ``grad = c[:, :1] * g1 + c[:, 1:] * g2`` per start.
    """
    if spec.weights == "min_norm":
        gram = torch.empty(g1.shape[0], 2, 2, dtype=g1.dtype)
        gram[:, 0, 0] = (g1 * g1).sum(dim=1)
        gram[:, 1, 1] = (g2 * g2).sum(dim=1)
        gram[:, 0, 1] = gram[:, 1, 0] = (g1 * g2).sum(dim=1)
        w = _min_norm_2(gram)
    else:
        fixed = torch.as_tensor(spec.weights, dtype=g1.dtype)
        w = fixed.expand(g1.shape[0], 2)
    wt = w if spec.power == 1.0 else w**spec.power
    if spec.mu is None:
        return wt
    a = torch.softmax(wt * losses / spec.mu, dim=1)
    return wt * (1.0 + a)


def optimize_batch(
    problem: Problem,
    spec: MethodSpec,
    theta0: torch.Tensor,
    steps: int,
    lr: float,
    linear_w: torch.Tensor | None = None,
) -> torch.Tensor:
    """Runs ``steps`` Adam steps of one method from a batch of independent starts.

    Args:
        problem: The test problem.
        spec: The method.
        theta0: Starting parameters ``(B, n_var)`` (float64).
        steps: Number of optimizer steps.
        lr: Adam learning rate.
        linear_w: Weights of objective 1 ``(B,)`` for ``spec.kind == "linear"``.

    Returns:
        Final parameters ``(B, n_var)`` (detached).
    """
    theta = theta0.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=lr)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        f = problem.objectives(theta)
        if spec.kind == "linear":
            assert linear_w is not None
            (linear_w * f[:, 0] + (1.0 - linear_w) * f[:, 1]).sum().backward()
        else:
            g1 = torch.autograd.grad(f[:, 0].sum(), theta, retain_graph=True)[0]
            g2 = torch.autograd.grad(f[:, 1].sum(), theta)[0]
            c = mo_coefficients(spec, g1, g2, f.detach())
            theta.grad = c[:, :1] * g1 + c[:, 1:] * g2
        opt.step()
    return theta.detach()


def linear_weights(n: int) -> torch.Tensor:
    """The linear-scalarization sweep ``w_i = (i + 1/2) / n`` (weight of objective 1)."""
    return (torch.arange(n, dtype=torch.float64) + 0.5) / n


def _dist_to_set(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For each row of ``a``, the Euclidean distance to the nearest row of ``b``."""
    if len(b) == 0:
        return np.full(len(a), np.inf)
    return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(axis=2)).min(axis=1)


def evaluate(
    points: np.ndarray,
    front: np.ndarray,
    concave: np.ndarray,
    ref: Sequence[float],
    delta: float,
) -> dict[str, float]:
    """Metrics of one method's final points on one problem (one seed).

    Args:
        points: Final objective values ``(N, 2)``.
        front: Dense true front ``(S, 2)``.
        concave: Boolean mask ``(S,)`` of the front's concave part.
        ref: Hypervolume reference point.
        delta: Coverage distance.

    Returns:
        ``hv``, ``igd``, ``gd``, ``on_front`` (share of points within ``delta`` of the front),
        ``concave_cov``, ``concave_pts`` (both NaN when the front has no concave part) and
        ``n_nondominated``.
    """
    cpart = front[concave]
    diff = points[:, None, :] - front[None, :, :]
    d2 = (diff**2).sum(axis=2)
    nearest = d2.argmin(axis=1)
    to_front = np.sqrt(d2[np.arange(len(points)), nearest])
    # A point "reached the concave part" when it is within delta of the front and its nearest
    # front sample belongs to the concave part.
    reached = (to_front <= delta) & concave[nearest]
    out = {
        "hv": pareto.hypervolume(points, ref),
        "igd": pareto.igd(points, front),
        "gd": float(to_front.mean()),
        "on_front": float((to_front <= delta).mean()),
        "concave_cov": math.nan,
        "concave_pts": math.nan,
        "n_nondominated": int(pareto.non_dominated(points).sum()),
    }
    if len(cpart):
        out["concave_cov"] = float((_dist_to_set(cpart, points[reached]) <= delta).mean())
        out["concave_pts"] = float(reached.mean())
    return out


def _versions() -> dict[str, str]:
    import matplotlib

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "matplotlib": matplotlib.__version__,
        "platform": platform.platform(),
    }


def run_benchmark(cfg: Config, progress: bool = True) -> dict[str, Any]:
    """Runs every method on every problem from the same starts; returns the results dict.

    All seeds of one (problem, method) pair run as one batch of ``len(seeds) * starts``
    independent rows; row block ``s`` uses starts drawn from ``torch.Generator`` seeded with
    ``seeds[s]`` (identical across methods).
    """
    from tqdm.auto import tqdm

    torch.set_num_threads(1)
    results: dict[str, Any] = {"problems": {}}
    bar = tqdm(
        total=len(cfg.problems) * len(cfg.methods), desc="pareto_fronts", disable=not progress
    )
    for pname in cfg.problems:
        prob = get_problem(pname)
        front = prob.true_front(cfg.front_samples)
        part = front_partition(front, cfg.delta)
        starts = torch.cat(
            [prob.sample_theta(cfg.starts, torch.Generator().manual_seed(s)) for s in cfg.seeds]
        )
        lin_w = linear_weights(cfg.starts).repeat(len(cfg.seeds))
        pres: dict[str, Any] = {
            "title": prob.title,
            "shape": prob.shape,
            "ref": list(prob.ref),
            "true_front_hv": pareto.hypervolume(front, prob.ref),
            "concave_share_of_front": float(part["concave"].mean()),
            "methods": {},
        }
        for mname in cfg.methods:
            spec = METHODS[mname]
            bar.set_postfix_str(f"{pname}/{mname}")
            t0 = time.perf_counter()
            theta = optimize_batch(prob, spec, starts, cfg.steps, cfg.lr, lin_w)
            seconds = time.perf_counter() - t0
            with torch.no_grad():
                pts = prob.objectives(theta).numpy()
            per_seed = []
            for i, s in enumerate(cfg.seeds):
                block = pts[i * cfg.starts : (i + 1) * cfg.starts]
                m = evaluate(block, front, part["concave"], prob.ref, cfg.delta)
                per_seed.append({"seed": s, **m, "points": block.round(6).tolist()})
            summary = {}
            for key in METRICS:
                vals = np.array([r[key] for r in per_seed], dtype=float)
                summary[key] = {"mean": float(vals.mean()), "std": float(vals.std(ddof=0))}
            pres["methods"][mname] = {
                "label": spec.label,
                "spec": asdict(spec),
                "seconds": seconds,
                "summary": summary,
                "per_seed": per_seed,
            }
            bar.update(1)
        results["problems"][pname] = pres
    bar.close()
    return results


def _fmt(stat: dict[str, float], digits: int) -> str:
    if math.isnan(stat["mean"]):
        return "n/a"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def write_table(results: dict[str, Any], cfg: Config) -> str:
    """Markdown table of the summaries (mean ± std over seeds)."""
    lines = [
        f"Preset `{cfg.preset}`: {len(cfg.seeds)} seeds x {cfg.starts} starts, {cfg.steps} Adam "
        f"steps (lr {cfg.lr}), delta = {cfg.delta}, ref = (1.1, 1.1). "
        "HV: higher is better (true front's HV in the problem row); IGD, GD: lower is better; "
        "on front: share of found points within delta of the true front; "
        "concave pts: share of found points that reached the front's concave part (within delta "
        "of the front, nearest front sample in the concave part, i.e. unreachable by linear "
        "weighting and farther than delta from its reachable part); concave cov.: share of the "
        "concave part within delta of such points.",
        "",
        "| problem | method | HV | IGD | GD | on front | concave pts | concave cov. |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for pname, pres in results["problems"].items():
        lines.append(
            f"| **{pres['title']}** | true front | {pres['true_front_hv']:.4f} | 0 | 0 | 1 | "
            f"(concave part = {pres['concave_share_of_front']:.0%} of front) | 1 |"
        )
        for _mname, mres in pres["methods"].items():
            s = mres["summary"]
            lines.append(
                f"| {pname} | {mres['label']} | {_fmt(s['hv'], 4)} | {_fmt(s['igd'], 4)} | "
                f"{_fmt(s['gd'], 4)} | {_fmt(s['on_front'], 2)} | {_fmt(s['concave_pts'], 3)} | "
                f"{_fmt(s['concave_cov'], 3)} |"
            )
    return "\n".join(lines) + "\n"


def plot_problem(pname: str, pres: dict[str, Any], cfg: Config, path: Path) -> None:
    """One figure per problem: true front, its concave part and each method's final points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    prob = get_problem(pname)
    front = prob.true_front(cfg.front_samples)
    part = front_partition(front, cfg.delta)
    methods = list(pres["methods"])
    fig, axes = plt.subplots(
        1, len(methods), figsize=(3.2 * len(methods), 3.4), sharex=True, sharey=True
    )
    axes = np.atleast_1d(axes)
    for ax, mname in zip(axes, methods, strict=True):
        mres = pres["methods"][mname]
        ax.scatter(front[:, 0], front[:, 1], s=1, c="0.6", label="true front")
        cp = front[part["concave"]]
        ax.scatter(cp[:, 0], cp[:, 1], s=2, c="tab:orange", label="concave part")
        top = float(front[:, 1].max()) + 0.5  # points above are drawn clipped at the top
        n_above = 0
        for j, rec in enumerate(mres["per_seed"]):
            p = np.asarray(rec["points"])
            above = p[:, 1] > top
            n_above += int(above.sum())
            ax.scatter(
                p[~above, 0], p[~above, 1], s=12 if j == 0 else 6, marker="o" if j == 0 else ".",
                c="tab:blue", alpha=0.9 if j == 0 else 0.35,
                label="found (seed 0)" if j == 0 else None,
            )  # fmt: skip
            ax.scatter(p[above, 0], np.full(int(above.sum()), top - 0.02), marker="^", s=10,
                       c="tab:red", alpha=0.5)  # fmt: skip
        if n_above:
            ax.text(0.98, 0.97, f"{n_above} points with f2 > {top:.1f} (^)", fontsize=7,
                    ha="right", va="top", transform=ax.transAxes, color="tab:red")  # fmt: skip
        s = mres["summary"]
        cov = s["concave_cov"]["mean"]
        cov_txt = "" if math.isnan(cov) else f", cov {cov:.2f}"
        ax.set_title(f"{mres['label']}\nHV {s['hv']['mean']:.3f}{cov_txt}", fontsize=9)
        ax.set_xlabel("f1")
        lo = float(min(front[:, 1].min(), 0.0)) - 0.05
        ax.set_xlim(-0.05, 1.15)
        ax.set_ylim(lo, top)
    axes[0].set_ylabel("f2")
    axes[0].legend(fontsize=6, loc="lower left")
    fig.suptitle(f"{pres['title']}: final points from {cfg.starts} starts x {len(cfg.seeds)} seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def build_config(args: argparse.Namespace) -> Config:
    """Merges a preset with command-line overrides."""
    p = PRESETS[args.preset]
    n_seeds = args.seeds if args.seeds is not None else p["seeds"]
    return Config(
        preset=args.preset,
        problems=tuple(args.problems),
        methods=tuple(args.methods),
        seeds=tuple(range(args.seed0, args.seed0 + n_seeds)),
        starts=args.starts if args.starts is not None else p["starts"],
        steps=args.steps if args.steps is not None else p["steps"],
        lr=args.lr if args.lr is not None else p["lr"],
        delta=args.delta,
        front_samples=args.front_samples,
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    ap = argparse.ArgumentParser(
        description="Pareto-front coverage of linear scalarization, MGDA, MIB and its ablations "
        "on ZDT1/2/3, VLMOP2 and Fonseca-Fleming (do they reach concave regions?).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("--preset", choices=sorted(PRESETS), default="quick",
                    help=f"size preset: {PRESETS}")  # fmt: skip
    ap.add_argument("--out", type=Path, default=None,
                    help="output folder (results.json, table.md, figures); default "
                    "runs/pareto_fronts[_paper] (git-ignored); the committed reference is "
                    "benchmarks/results/pareto_fronts[_paper]")  # fmt: skip
    ap.add_argument("--problems", nargs="+", choices=list(PROBLEMS), default=list(PROBLEMS))
    ap.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    ap.add_argument("--seeds", type=int, default=None, help="number of seeds (preset default)")
    ap.add_argument("--seed0", type=int, default=0, help="first seed")
    ap.add_argument("--starts", type=int, default=None, help="random starts (= linear weights)")
    ap.add_argument("--steps", type=int, default=None, help="Adam steps per run")
    ap.add_argument("--lr", type=float, default=None, help="Adam learning rate")
    ap.add_argument("--delta", type=float, default=0.05, help="coverage distance")
    ap.add_argument("--front-samples", type=int, default=2000, help="true-front samples")
    ap.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    ap.add_argument("--no-figures", action="store_true", help="skip the figures")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Entry point; returns the results dict it wrote to ``--out/results.json``."""
    args = parse_args(argv)
    cfg = build_config(args)
    name = "pareto_fronts" if args.preset == "quick" else f"pareto_fronts_{args.preset}"
    args.out = args.out if args.out is not None else default_out(name)
    t0 = time.perf_counter()
    results = run_benchmark(cfg, progress=not args.no_progress)
    bench_seconds = time.perf_counter() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    figures = []
    if not args.no_figures:
        for pname, pres in results["problems"].items():
            path = args.out / f"front_{pname}.png"
            plot_problem(pname, pres, cfg, path)
            figures.append(path.name)
    results = {
        "command": command_line("pareto_fronts", argv),
        "config": asdict(cfg),
        "versions": _versions(),
        "seeds": list(cfg.seeds),
        "duration_s": {"benchmark": bench_seconds, "total": time.perf_counter() - t0},
        "figures": figures,
        **results,
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    table = write_table(results, cfg)
    (args.out / "table.md").write_text(table)
    if not args.no_progress:
        print(table)
        print(f"wrote {args.out}/results.json, table.md, {len(figures)} figures "
              f"in {results['duration_s']['total']:.1f} s")  # fmt: skip
        print(reference_note(results, args.out, reference(name)))
    return results


def reference_note(results: dict[str, Any], out: Path, ref: Path | None) -> str:
    """The committed reference's table next to this run's, or why there is none."""
    if ref is None:
        return "No committed reference results for this preset (benchmarks/results)."
    if ref.resolve() == Path(out).resolve():
        return f"This run wrote the committed reference itself ({ref})."
    theirs = json.loads((ref / "results.json").read_text())
    same = theirs.get("config") == results["config"]
    return (
        f"Committed reference ({ref}, made by `{theirs.get('command')}`"
        + ("; same settings: the tables should agree up to floating-point order" if same
           else "; other settings, so numbers differ")
        + "):\n\n" + (ref / "table.md").read_text()
    )  # fmt: skip


if __name__ == "__main__":
    main()

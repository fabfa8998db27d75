"""Two-objective test problems with known Pareto fronts, as differentiable torch functions.

Every problem maps an unconstrained parameter batch ``theta`` of shape ``(B, n_var)`` to the
objective batch ``(B, 2)`` (both minimized), so many random starts can be optimized at once as
independent problems: row ``b`` of the objectives depends only on row ``b`` of ``theta``.

Problems (standard definitions: Zitzler, Deb & Thiele 2000 for ZDT; Fonseca & Fleming 1995 /
Van Veldhuizen 1999 for VLMOP2):

- ``zdt1`` (convex front ``f2 = 1 - sqrt(f1)``),
- ``zdt2`` (concave front ``f2 = 1 - f1^2``),
- ``zdt3`` (disconnected front, pieces of ``f2 = 1 - sqrt(f1) - f1 sin(10 pi f1)``),
- ``vlmop2`` (Fonseca-Fleming with two variables, box ``[-2, 2]^2``; concave front),
- ``fonseca10`` (Fonseca-Fleming with ten variables; the same concave front).

Box constraints. ZDT problems live in ``[0, 1]^n``. We optimize ``theta in R^n`` and decode
``x = sigmoid(theta)``: the box is satisfied exactly, every start is feasible and there are no
projection steps that would alter the methods' update directions. The Pareto set (``x_2..n = 0``)
is then reached only asymptotically (``theta_i -> -inf``); with Adam, ``theta_i`` keeps moving
at about ``lr`` per step while the gradient sign is constant. A side effect matters for
gradient-balancing methods: ``d f1 / d theta_1 = sigmoid'(theta_1)`` vanishes as ``x_1 -> 0``,
and every point with ``x_1 = 0`` is weakly Pareto-optimal (it minimizes ``f1``), so min-norm
methods can stall on the edge ``f1 = 0`` with ``g > 1`` (the benchmark's GD and on-front columns
show how often). Clamping instead of the sigmoid behaves the same way (the gradient of ``f1`` is
exactly 0 once ``x_1`` is clamped at 0), which we checked before choosing the sigmoid.

Fonseca-Fleming problems are optimized without constraints (``theta = x``): the Pareto set
``x_1 = ... = x_n in [-1/sqrt n, 1/sqrt n]`` is interior. VLMOP2 starts are uniform in its usual
box ``[-2, 2]^2``. For ``n = 10`` the usual box ``[-4, 4]^10`` puts almost all starts where both
objectives equal 1 to machine precision (gradients ~ exp(-50)), so starts are uniform in
``[-1, 1]^10`` instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from mograd.pareto import non_dominated

__all__ = ["PROBLEMS", "Problem", "front_partition", "get_problem"]


@dataclass(frozen=True)
class Problem:
    """A two-objective problem with a known front.

    Attributes:
        name: Short identifier.
        title: Human-readable name for tables and figures.
        n_var: Number of decision variables.
        shape: ``"convex"``, ``"concave"`` or ``"disconnected"`` (of the true front).
        ref: Hypervolume reference point (fixed for all methods).
        objectives_x: ``f(x) -> (B, 2)`` in the original decision space.
        decode: ``theta -> x`` (sigmoid for box-constrained problems, identity otherwise).
        encode: ``x -> theta`` (inverse of ``decode``).
        sample_x: ``(B, generator) -> x`` random starting points in the feasible box.
        front_fn: ``n -> (n, 2)`` numpy array of dense true-front samples (non-dominated,
            sorted by ``f1``).
        pareto_x: ``t in [0, 1] -> x`` points of the Pareto set (for tests).
    """

    name: str
    title: str
    n_var: int
    shape: str
    ref: tuple[float, float]
    objectives_x: Callable[[torch.Tensor], torch.Tensor]
    decode: Callable[[torch.Tensor], torch.Tensor]
    encode: Callable[[torch.Tensor], torch.Tensor]
    sample_x: Callable[[int, torch.Generator], torch.Tensor]
    front_fn: Callable[[int], np.ndarray]
    pareto_x: Callable[[torch.Tensor], torch.Tensor]

    def objectives(self, theta: torch.Tensor) -> torch.Tensor:
        """Objectives ``(B, 2)`` of the unconstrained parameters ``theta`` ``(B, n_var)``."""
        return self.objectives_x(self.decode(theta))

    def sample_theta(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        """Random starting parameters ``(batch, n_var)``, float64."""
        return self.encode(self.sample_x(batch, generator))

    def true_front(self, n: int = 2000) -> np.ndarray:
        """Dense samples of the true Pareto front, shape ``(<= n, 2)``, sorted by ``f1``."""
        return self.front_fn(n)


# ----------------------------------------------------------------------------------- ZDT family


def _zdt_g(x: torch.Tensor) -> torch.Tensor:
    n = x.shape[1]
    return 1.0 + 9.0 * x[:, 1:].sum(dim=1) / (n - 1)


def _zdt1(x: torch.Tensor) -> torch.Tensor:
    f1 = x[:, 0]
    g = _zdt_g(x)
    return torch.stack([f1, g * (1.0 - torch.sqrt(f1 / g))], dim=1)


def _zdt2(x: torch.Tensor) -> torch.Tensor:
    f1 = x[:, 0]
    g = _zdt_g(x)
    return torch.stack([f1, g * (1.0 - (f1 / g) ** 2)], dim=1)


def _zdt3(x: torch.Tensor) -> torch.Tensor:
    f1 = x[:, 0]
    g = _zdt_g(x)
    h = 1.0 - torch.sqrt(f1 / g) - (f1 / g) * torch.sin(10.0 * math.pi * f1)
    return torch.stack([f1, g * h], dim=1)


def _logit(x: torch.Tensor) -> torch.Tensor:
    return torch.log(x) - torch.log1p(-x)


def _zdt_sample(n_var: int) -> Callable[[int, torch.Generator], torch.Tensor]:
    def sample(batch: int, generator: torch.Generator) -> torch.Tensor:
        u = torch.rand(batch, n_var, generator=generator, dtype=torch.float64)
        return u.clamp(1e-3, 1.0 - 1e-3)

    return sample


def _zdt_pareto_x(n_var: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def pareto_x(t: torch.Tensor) -> torch.Tensor:
        x = torch.zeros(t.shape[0], n_var, dtype=torch.float64)
        x[:, 0] = t
        return x

    return pareto_x


def _front_zdt1(n: int) -> np.ndarray:
    f1 = np.linspace(0.0, 1.0, n)
    return np.stack([f1, 1.0 - np.sqrt(f1)], axis=1)


def _front_zdt2(n: int) -> np.ndarray:
    f1 = np.linspace(0.0, 1.0, n)
    return np.stack([f1, 1.0 - f1**2], axis=1)


def _front_zdt3(n: int) -> np.ndarray:
    # Sample the g = 1 curve densely, keep the non-dominated pieces, then thin to about n points.
    f1 = np.linspace(0.0, 1.0, 50 * n)
    pts = np.stack([f1, 1.0 - np.sqrt(f1) - f1 * np.sin(10.0 * math.pi * f1)], axis=1)
    pts = pts[non_dominated(pts)]
    step = max(1, len(pts) // n)
    return pts[::step]


# ------------------------------------------------------------------- Fonseca-Fleming / VLMOP2


def _fonseca(n: int) -> Callable[[torch.Tensor], torch.Tensor]:
    a = 1.0 / math.sqrt(n)

    def objectives(x: torch.Tensor) -> torch.Tensor:
        f1 = 1.0 - torch.exp(-((x - a) ** 2).sum(dim=1))
        f2 = 1.0 - torch.exp(-((x + a) ** 2).sum(dim=1))
        return torch.stack([f1, f2], dim=1)

    return objectives


def _fonseca_sample(n: int, half_width: float) -> Callable[[int, torch.Generator], torch.Tensor]:
    def sample(batch: int, generator: torch.Generator) -> torch.Tensor:
        u = torch.rand(batch, n, generator=generator, dtype=torch.float64)
        return half_width * (2.0 * u - 1.0)

    return sample


def _fonseca_pareto_x(n: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def pareto_x(t: torch.Tensor) -> torch.Tensor:
        s = (2.0 * t.to(torch.float64) - 1.0) / math.sqrt(n)  # x_i = s in [-1/sqrt n, 1/sqrt n]
        return s[:, None].expand(-1, n).clone()

    return pareto_x


def _front_fonseca(n: int) -> np.ndarray:
    # The front does not depend on the number of variables: with u = sqrt(n) s in [-1, 1],
    # f1 = 1 - exp(-(u - 1)^2), f2 = 1 - exp(-(u + 1)^2).
    u = np.linspace(1.0, -1.0, n)  # f1 increasing
    return np.stack([1.0 - np.exp(-((u - 1.0) ** 2)), 1.0 - np.exp(-((u + 1.0) ** 2))], axis=1)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


_ZDT_N = 30
_REF = (1.1, 1.1)

PROBLEMS: dict[str, Problem] = {
    "zdt1": Problem(
        "zdt1", "ZDT1 (convex)", _ZDT_N, "convex", _REF, _zdt1, torch.sigmoid, _logit,
        _zdt_sample(_ZDT_N), _front_zdt1, _zdt_pareto_x(_ZDT_N),
    ),
    "zdt2": Problem(
        "zdt2", "ZDT2 (concave)", _ZDT_N, "concave", _REF, _zdt2, torch.sigmoid, _logit,
        _zdt_sample(_ZDT_N), _front_zdt2, _zdt_pareto_x(_ZDT_N),
    ),
    "zdt3": Problem(
        "zdt3", "ZDT3 (disconnected)", _ZDT_N, "disconnected", _REF, _zdt3, torch.sigmoid,
        _logit, _zdt_sample(_ZDT_N), _front_zdt3, _zdt_pareto_x(_ZDT_N),
    ),
    "vlmop2": Problem(
        "vlmop2", "VLMOP2 (concave)", 2, "concave", _REF, _fonseca(2), _identity, _identity,
        _fonseca_sample(2, 2.0), _front_fonseca, _fonseca_pareto_x(2),
    ),
    "fonseca10": Problem(
        "fonseca10", "Fonseca-Fleming n=10 (concave)", 10, "concave", _REF, _fonseca(10),
        _identity, _identity, _fonseca_sample(10, 1.0), _front_fonseca, _fonseca_pareto_x(10),
    ),
}  # fmt: skip


def get_problem(name: str) -> Problem:
    """Returns the problem called ``name``.

    Raises:
        ValueError: For an unknown name (the message lists the known ones).
    """
    try:
        return PROBLEMS[name]
    except KeyError:
        raise ValueError(f"unknown problem {name!r}; known: {sorted(PROBLEMS)}") from None


def _lower_hull(points: np.ndarray) -> np.ndarray:
    """Vertices of the lower-left convex hull of a 2-D front sorted by ``f1`` (monotone chain)."""
    hull: list[np.ndarray] = []
    for p in points:
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            cross = (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0])
            if cross <= 0.0:  # b is not strictly below the chord a-p: drop it
                hull.pop()
            else:
                break
        hull.append(p)
    return np.asarray(hull)


def front_partition(front: np.ndarray, delta: float, tol: float = 1e-6) -> dict[str, np.ndarray]:
    """Splits a dense front into the part linear weighting can reach and its concave part.

    A front point is *supported* when it minimizes some positive weighting ``w . f`` over the
    front, i.e. it lies on the lower-left convex hull of the front (gap to the hull <= ``tol``).
    Linear scalarization can only converge to supported points. The *concave part* is the set of
    unsupported samples farther than ``delta`` from every supported sample, so a point found
    within ``delta`` of it cannot be explained as a near-miss of a supported point.

    Args:
        front: Dense front samples ``(n, 2)`` sorted by ``f1`` (``f2`` decreasing).
        delta: Distance used by the coverage metric.
        tol: Gap below which a sample counts as on the hull.

    Returns:
        Dict with boolean masks ``supported`` and ``concave`` and the float array ``gap`` (vertical
        distance from each sample to the hull, >= 0).
    """
    hull = _lower_hull(front)
    hull_f2 = np.interp(front[:, 0], hull[:, 0], hull[:, 1])
    gap = np.maximum(front[:, 1] - hull_f2, 0.0)
    supported = gap <= tol
    if supported.all():
        concave = np.zeros(len(front), dtype=bool)
    else:
        sup = front[supported]
        d = np.sqrt(((front[:, None, :] - sup[None, :, :]) ** 2).sum(axis=2)).min(axis=1)
        concave = (~supported) & (d > delta)
    return {"supported": supported, "concave": concave, "gap": gap}

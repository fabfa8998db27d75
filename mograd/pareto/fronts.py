"""Front tracing: :func:`trace_front` trains once per configuration or preference ray and
collects a :class:`Front` (the points, the non-dominated ones, the hypervolume, the angles to
the rays). The metrics it uses live in :mod:`mograd.pareto.metrics`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np
import torch

from .metrics import (
    _RAY_TARGETS,
    ArrayLike,
    _as_points,
    _as_rays,
    _as_ref,
    _to_numpy,
    hypervolume,
    non_dominated,
    preference_rays,
    ray_angles,
)

__all__ = ["Front", "trace_front"]

C = TypeVar("C")


@dataclass(frozen=True, eq=False)
class Front(Generic[C]):
    """A set of trained points, their non-dominated subset and (for 2 objectives) hypervolume.

    Attributes:
        points: Objective values, shape ``(n, m)``, float64, in the order of ``configs``.
        configs: The configuration each point came from.
        mask: Boolean ``(n,)``; ``True`` for the non-dominated points.
        ref: The reference point used for ``hypervolume``, or ``None``.
        hypervolume: Hypervolume of ``points`` w.r.t. ``ref`` (two objectives), or ``None``
            when no ``ref`` was given.
        seconds: Wall time of each training call, shape ``(n,)`` (zeros for ``from_points``).
        rays: The preference ray of each point, shape ``(n, m)``, when the front was traced
            along rays; else ``None``.
        angles: Angle in degrees between each point and its ray's target direction
            (:func:`ray_angles`), shape ``(n,)``; ``None`` without rays.
        ray_target: The convention of ``angles`` (``"inverse"`` or ``"direct"``), or ``None``.
    """

    points: np.ndarray
    configs: list[C]
    mask: np.ndarray
    ref: np.ndarray | None = None
    hypervolume: float | None = None
    seconds: np.ndarray = field(default_factory=lambda: np.zeros(0))
    rays: np.ndarray | None = None
    angles: np.ndarray | None = None
    ray_target: str | None = None

    @classmethod
    def from_points(
        cls,
        points: ArrayLike,
        configs: Sequence[C] | None = None,
        *,
        ref: ArrayLike | None = None,
        rays: ArrayLike | None = None,
        ray_target: str = "inverse",
    ) -> Front[C]:
        """Builds a front from already computed objective values.

        Args:
            points: Objective values, shape ``(n, m)``; finite.
            configs: One configuration per point (default: the indices ``0..n-1``).
            ref: Optional reference point of shape ``(2,)`` for the hypervolume.
            rays: Optional preference ray of each point, shape ``(n, m)`` (or one ray ``(m,)``
                for all); fills ``rays`` and ``angles`` (see :func:`ray_angles`).
            ray_target: ``"inverse"`` or ``"direct"``, see :func:`ray_angles`.

        Returns:
            The ``Front``.

        Raises:
            ValueError: On bad shapes, non-finite values or a ``configs`` length mismatch.
        """
        p = _as_points(points, "points")
        cfg: list[Any] = list(range(p.shape[0])) if configs is None else list(configs)
        if len(cfg) != p.shape[0]:
            raise ValueError(f"configs has {len(cfg)} entries but points has {p.shape[0]} rows")
        r = None if ref is None else _as_ref(ref, p.shape[1])
        if r is not None and p.shape[1] != 2:
            raise ValueError(f"hypervolume needs 2 objectives, points has {p.shape[1]}")
        hv = None if r is None else hypervolume(p, r)
        if rays is None:
            return cls(p, cfg, non_dominated(p), r, hv, np.zeros(p.shape[0]))
        ra = _as_rays(rays, p.shape[1], p.shape[0])
        angles = ray_angles(p, ra, target=ray_target)
        return cls(p, cfg, non_dominated(p), r, hv, np.zeros(p.shape[0]), ra, angles, ray_target)

    @property
    def pareto_points(self) -> np.ndarray:
        """The non-dominated points, sorted by the first objective, shape ``(k, m)``."""
        pts = self.points[self.mask]
        ordered: np.ndarray = pts[np.argsort(pts[:, 0], kind="stable")]
        return ordered

    @property
    def pareto_configs(self) -> list[C]:
        """The configurations of the non-dominated points, in the order of ``pareto_points``."""
        idx = np.flatnonzero(self.mask)
        idx = idx[np.argsort(self.points[idx, 0], kind="stable")]
        return [self.configs[i] for i in idx]

    def __len__(self) -> int:
        return int(self.points.shape[0])


def _objective_vector(out: Any, index: int, config: Any) -> np.ndarray:
    """Converts one train_fn result (sequence of scalars, tensor or array) to a 1-D vector."""
    if isinstance(out, (list, tuple)):
        out = [v.detach().to("cpu", torch.float64).numpy() if isinstance(v, torch.Tensor) else v
               for v in out]  # fmt: skip
    v = _to_numpy(out, f"train_fn result for config {index} ({config!r})")
    if v.ndim != 1 or v.shape[0] < 1:
        raise ValueError(
            f"train_fn must return a 1-D sequence of objective values; config {index} "
            f"({config!r}) returned shape {tuple(v.shape)}"
        )
    if not np.all(np.isfinite(v)):
        raise ValueError(
            f"train_fn returned non-finite objectives {v.tolist()} for config {index} ({config!r})"
        )
    return v


def trace_front(
    train_fn: Callable[[C], ArrayLike],
    configs: Iterable[C] | None = None,
    *,
    rays: ArrayLike | int | None = None,
    ray_target: str = "inverse",
    ref: ArrayLike | None = None,
    progress: bool = True,
    seed: int | None = None,
    desc: str = "trace_front",
) -> Front[C]:
    """Traces a Pareto front by training once per configuration or preference ray.

    ``train_fn`` is your training routine: given one configuration (a starting point, a
    preference vector, a beta, a dict of hyper-parameters...) it trains and returns the final
    objective values, all to be minimized. ``trace_front`` calls it for every configuration,
    collects the points and marks the non-dominated ones.

    **Preference rays.** With ``rays=`` the front is traced along preference rays: one run
    per ray, meant to end at the point of the front in that ray's direction (for instance
    ``MOWrapper(opt, weights=UPGrad(pref_vector=ray))``, or a linear scalarization
    ``weights=Constant(ray)`` as the baseline). Without ``configs`` each ray itself (a numpy
    array of shape ``(m,)``) is passed to ``train_fn``; with ``configs`` (one per ray, e.g.
    dicts holding the ray and more settings) those are passed instead. The returned front then
    has ``rays`` and ``angles``: how far, in degrees, each final point is from the direction
    its ray asks for (:func:`ray_angles`; ``ray_target`` picks EPO's ``"inverse"`` convention,
    $r_i f_i$ equal, or ``"direct"``, $f$ parallel to $r$; NaN for a point with a negative
    objective, where no angle is defined).

    Args:
        train_fn: ``train_fn(config) -> objectives``; a sequence of floats or 0-d tensors, or a
            1-D array/tensor of length ``m`` (the same ``m`` for every call), all finite.
        configs: The configurations to train; consumed once, must not be empty. Optional when
            ``rays`` is given.
        rays: Preference rays, shape ``(n, m)``, or an int ``n`` for
            :func:`preference_rays` ``(n)`` (two objectives); finite, ``>= 0``.
        ray_target: ``"inverse"`` (default) or ``"direct"``, see :func:`ray_angles`.
        ref: Reference point ``(2,)`` for the hypervolume (two objectives only); ``None`` skips
            the hypervolume.
        progress: Show a progress bar on stderr (``tqdm`` if installed, else one line per call).
        seed: If given, ``torch.manual_seed(seed + i)`` runs before the ``i``-th call, so each
            run is reproducible on its own.
        desc: Label of the progress bar.

    Returns:
        A :class:`Front` with the points in the order of ``configs``.

    Raises:
        ValueError: If ``configs`` is empty (or neither ``configs`` nor ``rays`` is given),
            ``ref`` or ``rays`` is malformed, ``configs`` and ``rays`` differ in length, or a
            call returns a non-finite, wrongly shaped or differently sized objective vector
            (the message names the configuration).

    Example:
        Trace the front of $f_1 = x^2$, $f_2 = (x - 2)^2$ by sweeping a linear weight:

        >>> import torch
        >>> from mograd.pareto import trace_front
        >>> def train(w: float) -> list[float]:
        ...     x = torch.zeros(1, requires_grad=True)
        ...     opt = torch.optim.SGD([x], lr=0.1)
        ...     for _ in range(200):
        ...         opt.zero_grad()
        ...         f1, f2 = (x**2).sum(), ((x - 2) ** 2).sum()
        ...         (w * f1 + (1 - w) * f2).backward()
        ...         opt.step()
        ...     return [(x**2).item(), ((x - 2) ** 2).item()]
        >>> front = trace_front(train, [0.0, 0.25, 0.5, 0.75, 1.0], ref=[5.0, 5.0], progress=False)
        >>> front.mask.tolist()
        [True, True, True, True, True]
        >>> print(f"{front.hypervolume:.3f}")
        20.625
        >>> [round(float(p[0]), 2) for p in front.pareto_points]
        [0.0, 0.25, 1.0, 2.25, 4.0]

        Along three preference rays, linear scalarization with the ray as weights ends on
        the front but off the rays except the middle one (EPO's convention):

        >>> def scalarized(ray) -> list[float]:
        ...     w = ray / ray.sum()
        ...     return train(float(w[0]))
        >>> front = trace_front(scalarized, rays=3, progress=False)
        >>> front.angles.round(1).tolist()
        [10.9, 0.0, 10.9]
    """
    ray_arr, cfgs = _configs_and_rays(configs, rays, ray_target)
    r = None if ref is None else _as_ref(ref, 2)
    pts, seconds = _train_all(train_fn, cfgs, r is not None, progress, seed, desc)
    hv = None if r is None else hypervolume(pts, r)
    if ray_arr is None:
        return Front(pts, cfgs, non_dominated(pts), r, hv, seconds)
    if ray_arr.shape[1] != pts.shape[1]:
        raise ValueError(
            f"rays have {ray_arr.shape[1]} components but train_fn returned {pts.shape[1]} "
            "objectives"
        )
    # Angles need non-negative objective vectors; a point without one gets NaN rather than
    # an error that would throw away the trained front.
    angles = np.full(pts.shape[0], np.nan)
    ok = np.all(pts >= 0, axis=1) & np.any(pts > 0, axis=1)
    if ok.any():
        angles[ok] = ray_angles(pts[ok], ray_arr[ok], target=ray_target)
    return Front(pts, cfgs, non_dominated(pts), r, hv, seconds, ray_arr, angles, ray_target)


def _configs_and_rays(
    configs: Iterable[C] | None, rays: ArrayLike | int | None, ray_target: str
) -> tuple[np.ndarray | None, list[Any]]:
    """The rays (``None`` without) and the configurations handed to ``train_fn``."""
    ray_arr = None
    if rays is not None:
        ray_arr = _as_rays(preference_rays(rays) if isinstance(rays, (int, np.integer)) else rays)
        if ray_target not in _RAY_TARGETS:
            raise ValueError(f"ray_target must be one of {_RAY_TARGETS}, got {ray_target!r}")
    if configs is None:
        if ray_arr is None:
            raise ValueError("trace_front needs configs or rays")
        cfgs: list[Any] = [row.copy() for row in ray_arr]
    else:
        cfgs = list(configs)
    if not cfgs:
        raise ValueError("configs is empty: trace_front needs at least one configuration")
    if ray_arr is not None and len(cfgs) != ray_arr.shape[0]:
        raise ValueError(f"configs has {len(cfgs)} entries but {ray_arr.shape[0]} rays were given")
    return ray_arr, cfgs


def _train_all(
    train_fn: Callable[[Any], ArrayLike],
    cfgs: list[Any],
    two_objectives: bool,
    progress: bool,
    seed: int | None,
    desc: str,
) -> tuple[np.ndarray, np.ndarray]:
    """One ``train_fn`` call per configuration: the ``(n, m)`` points and the seconds of each."""
    bar = _progress_bar(len(cfgs), desc) if progress else None
    rows: list[np.ndarray] = []
    seconds: list[float] = []
    try:
        for i, cfg in enumerate(cfgs):
            if seed is not None:
                torch.manual_seed(seed + i)
            t0 = time.perf_counter()
            v = _objective_vector(train_fn(cfg), i, cfg)
            seconds.append(time.perf_counter() - t0)
            if rows and v.shape != rows[0].shape:
                raise ValueError(
                    f"train_fn returned {v.shape[0]} objectives for config {i} ({cfg!r}) but "
                    f"{rows[0].shape[0]} for config 0"
                )
            if two_objectives and v.shape[0] != 2:
                raise ValueError(
                    f"ref was given but train_fn returned {v.shape[0]} objectives; hypervolume "
                    "is implemented for 2 objectives"
                )
            rows.append(v)
            if bar is not None:
                bar.update(1)
            elif progress:
                print(f"{desc}: {i + 1}/{len(cfgs)} {v.tolist()}", file=sys.stderr)
    finally:
        if bar is not None:
            bar.close()
    return np.stack(rows), np.asarray(seconds)


def _progress_bar(total: int, desc: str) -> Any:
    """A tqdm bar on stderr, or ``None`` without tqdm (then one line per call is printed)."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, file=sys.stderr)

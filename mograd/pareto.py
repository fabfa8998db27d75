"""Pareto-front utilities: dominance filtering, 2-D hypervolume, IGD and front tracing.

All objectives are **minimized**. To use an objective that should be maximized (for example the
information-plane term I(Z;Y)), pass its negative.

Inputs may be ``numpy`` arrays, ``torch`` tensors (any device, any float dtype) or nested lists;
they are converted to ``float64`` numpy arrays. Results are numpy arrays or Python floats.

Example:
    >>> import numpy as np
    >>> from mograd.pareto import hypervolume, non_dominated
    >>> pts = np.array([[0.0, 1.0], [0.5, 0.5], [1.0, 0.0], [0.8, 0.8]])
    >>> non_dominated(pts).tolist()
    [True, True, True, False]
    >>> hypervolume(pts, ref=[1.0, 1.0])
    0.25
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np
import torch

__all__ = [
    "ArrayLike",
    "Front",
    "hypervolume",
    "igd",
    "non_dominated",
    "trace_front",
]

ArrayLike = np.ndarray | torch.Tensor | Sequence[Any]
"""Anything accepted as a set of points: numpy array, torch tensor or nested sequence."""

C = TypeVar("C")

_CHUNK = 1024  # rows compared at once in non_dominated (memory: _CHUNK * n * m booleans)


def _to_numpy(x: Any, name: str) -> np.ndarray:
    """Converts a tensor, array or sequence to a float64 numpy array, naming ``name`` on failure."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"{name} must be numeric array-like, got {type(x).__name__}: {exc}"
        ) from exc
    return arr


def _as_points(x: Any, name: str, m: int | None = None) -> np.ndarray:
    """Validates an (n, m) point set: 2-D, at least one objective, all values finite."""
    arr = _to_numpy(x, name)
    if arr.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D array of shape (n_points, n_objectives), got shape "
            f"{tuple(arr.shape)}; for a single point use reshape(1, -1)"
        )
    if arr.shape[1] < 1:
        raise ValueError(f"{name} must have at least one objective column, got shape {arr.shape}")
    if m is not None and arr.shape[1] != m:
        raise ValueError(f"{name} must have {m} objective columns, got shape {tuple(arr.shape)}")
    if not np.all(np.isfinite(arr)):
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise ValueError(
            f"{name} must be finite; entry {tuple(int(i) for i in bad)} is {arr[tuple(bad)]}"
        )
    return arr


def _as_ref(ref: Any, m: int = 2) -> np.ndarray:
    """Validates a reference point of shape (m,) with finite entries."""
    r = _to_numpy(ref, "ref")
    if r.shape != (m,):
        raise ValueError(f"ref must have shape ({m},), got shape {tuple(r.shape)}")
    if not np.all(np.isfinite(r)):
        raise ValueError(f"ref must be finite, got {r.tolist()}")
    return r


def _non_dominated_2d(p: np.ndarray) -> np.ndarray:
    """O(n log n) sweep for two objectives: sort by (f1, f2), compare to earlier minima."""
    n = p.shape[0]
    if n == 0:
        return np.zeros(0, dtype=bool)
    order = np.lexsort((p[:, 1], p[:, 0]))
    f1, f2 = p[order, 0], p[order, 1]
    # Groups of equal f1; within a group f2 is ascending, so its first entry is the group's min.
    _, group_start, group_size = np.unique(f1, return_index=True, return_counts=True)
    group_of = np.repeat(np.arange(group_start.size), group_size)
    group_min = f2[group_start]
    # Min f2 over all groups with strictly smaller f1 (inf for the first group).
    prev_min = np.concatenate(([np.inf], np.minimum.accumulate(group_min)[:-1]))
    dominated = (prev_min[group_of] <= f2) | (group_min[group_of] < f2)
    mask = np.empty(n, dtype=bool)
    mask[order] = ~dominated
    return mask


def non_dominated(points: ArrayLike) -> np.ndarray:
    """Marks the points that no other point Pareto-dominates (minimization).

    Point ``q`` dominates ``p`` when ``q <= p`` in every objective and ``q < p`` in at least
    one. Identical points do not dominate each other, so duplicates of a non-dominated point are
    all kept. Works for any number of objectives: O(n log n) for two objectives, O(n^2 m)
    (in chunks of 1024 rows) otherwise.

    Args:
        points: Objective values, shape ``(n_points, n_objectives)``; finite.

    Returns:
        Boolean numpy array of shape ``(n_points,)``; ``True`` where the point is non-dominated.

    Raises:
        ValueError: If ``points`` is not 2-D or holds NaN/inf.

    Example:
        >>> non_dominated([[1, 2], [2, 1], [2, 2], [1, 2]]).tolist()
        [True, True, False, True]
    """
    p = _as_points(points, "points")
    if p.shape[1] == 2:
        return _non_dominated_2d(p)
    n = p.shape[0]
    mask = np.ones(n, dtype=bool)
    for start in range(0, n, _CHUNK):
        block = p[start : start + _CHUNK]  # (b, m): candidates that may be dominated
        # le[i, j]: point j <= block point i in all objectives; lt: strictly better in one.
        le = np.all(p[None, :, :] <= block[:, None, :], axis=2)
        lt = np.any(p[None, :, :] < block[:, None, :], axis=2)
        mask[start : start + block.shape[0]] = ~np.any(le & lt, axis=1)
    return mask


def hypervolume(points: ArrayLike, ref: ArrayLike, *, strict: bool = False) -> float:
    """Exact hypervolume of a two-objective point set with respect to a reference point.

    The hypervolume is the area of the union of the boxes ``[p1, ref1] x [p2, ref2]`` over the
    points ``p`` (minimization): the larger, the better the set covers the front. Points that do
    not strictly dominate ``ref`` (some coordinate ``>= ref``) span an empty box and add nothing,
    unless ``strict=True``, which rejects them. Dominated points and duplicates are allowed.

    Args:
        points: Objective values, shape ``(n_points, 2)``; finite. ``n_points`` may be 0.
        ref: Reference point, shape ``(2,)``; finite. Keep it fixed when comparing methods.
        strict: If ``True``, raise when a point does not strictly dominate ``ref``.

    Returns:
        The dominated area as a Python float (0.0 when no point dominates ``ref``).

    Raises:
        ValueError: If shapes are wrong, values are not finite, or (with ``strict``) a point does
            not strictly dominate ``ref``.

    Example:
        >>> hypervolume([[0.0, 0.5], [0.5, 0.0]], ref=[1.0, 1.0])
        0.75
        >>> hypervolume([[2.0, 0.0]], ref=[1.0, 1.0])  # outside the reference box
        0.0
    """
    p = _as_points(points, "points", m=2)
    r = _as_ref(ref, 2)
    inside = np.all(p < r, axis=1)
    if strict and not np.all(inside):
        i = int(np.flatnonzero(~inside)[0])
        raise ValueError(
            f"ref {r.tolist()} is not strictly dominated by point {i} {p[i].tolist()} "
            f"({int((~inside).sum())} of {len(p)} points are outside the reference box)"
        )
    p = p[inside]
    if p.shape[0] == 0:
        return 0.0
    p = np.unique(p[non_dominated(p)], axis=0)  # sorted by f1 ascending, so f2 descending
    x_next = np.append(p[1:, 0], r[0])
    return float(np.sum((x_next - p[:, 0]) * (r[1] - p[:, 1])))


def igd(points: ArrayLike, front: ArrayLike) -> float:
    """Inverted generational distance: mean distance from each true-front point to the set.

    Args:
        points: The approximation set, shape ``(n_points, m)``; at least one point.
        front: Dense samples of the true front, shape ``(n_front, m)``; at least one point.

    Returns:
        ``mean_j min_i ||front_j - points_i||_2``; 0 means every front sample is matched exactly.

    Raises:
        ValueError: On wrong shapes, mismatched objective counts, empty sets or non-finite values.

    Example:
        >>> igd([[0.0, 1.0]], [[0.0, 1.0], [1.0, 1.0]])
        0.5
    """
    p = _as_points(points, "points")
    f = _as_points(front, "front", m=p.shape[1])
    if p.shape[0] == 0 or f.shape[0] == 0:
        raise ValueError(f"igd needs non-empty sets, got points {p.shape} and front {f.shape}")
    total = 0.0
    for start in range(0, f.shape[0], _CHUNK):
        block = f[start : start + _CHUNK]
        d = np.sqrt(((block[:, None, :] - p[None, :, :]) ** 2).sum(axis=2))
        total += float(d.min(axis=1).sum())
    return total / f.shape[0]


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
    """

    points: np.ndarray
    configs: list[C]
    mask: np.ndarray
    ref: np.ndarray | None = None
    hypervolume: float | None = None
    seconds: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @classmethod
    def from_points(
        cls,
        points: ArrayLike,
        configs: Sequence[C] | None = None,
        *,
        ref: ArrayLike | None = None,
    ) -> Front[C]:
        """Builds a front from already computed objective values.

        Args:
            points: Objective values, shape ``(n, m)``; finite.
            configs: One configuration per point (default: the indices ``0..n-1``).
            ref: Optional reference point of shape ``(2,)`` for the hypervolume.

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
        return cls(p, cfg, non_dominated(p), r, hv, np.zeros(p.shape[0]))

    @property
    def pareto_points(self) -> np.ndarray:
        """The non-dominated points, sorted by the first objective, shape ``(k, m)``."""
        pts = self.points[self.mask]
        return pts[np.argsort(pts[:, 0], kind="stable")]

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
    configs: Iterable[C],
    *,
    ref: ArrayLike | None = None,
    progress: bool = True,
    seed: int | None = None,
    desc: str = "trace_front",
) -> Front[C]:
    """Traces a Pareto front by training once per configuration.

    ``train_fn`` is your training routine: given one configuration (a starting point, a
    preference vector, a beta, a dict of hyper-parameters...) it trains and returns the final
    objective values, all to be minimized. ``trace_front`` calls it for every configuration,
    collects the points and marks the non-dominated ones.

    Args:
        train_fn: ``train_fn(config) -> objectives``; a sequence of floats or 0-d tensors, or a
            1-D array/tensor of length ``m`` (the same ``m`` for every call), all finite.
        configs: The configurations to train; consumed once, must not be empty.
        ref: Reference point ``(2,)`` for the hypervolume (two objectives only); ``None`` skips
            the hypervolume.
        progress: Show a progress bar on stderr (``tqdm`` if installed, else one line per call).
        seed: If given, ``torch.manual_seed(seed + i)`` runs before the ``i``-th call, so each
            run is reproducible on its own.
        desc: Label of the progress bar.

    Returns:
        A :class:`Front` with the points in the order of ``configs``.

    Raises:
        ValueError: If ``configs`` is empty, ``ref`` is malformed, or a call returns a
            non-finite, wrongly shaped or differently sized objective vector (the message names
            the configuration).

    Example:
        Trace the front of ``f1 = x^2, f2 = (x - 2)^2`` by sweeping a linear weight:

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
    """
    cfgs = list(configs)
    if not cfgs:
        raise ValueError("configs is empty: trace_front needs at least one configuration")
    r = None if ref is None else _as_ref(ref, 2)
    bar: Any = None
    if progress:
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(cfgs), desc=desc, file=sys.stderr)
        except ImportError:
            bar = None
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
            if r is not None and v.shape[0] != 2:
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
    pts = np.stack(rows)
    hv = None if r is None else hypervolume(pts, r)
    return Front(pts, cfgs, non_dominated(pts), r, hv, np.asarray(seconds))

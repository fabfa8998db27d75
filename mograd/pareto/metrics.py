"""Metrics of objective vectors, all minimized: dominance, 2-D hypervolume, IGD, preference
rays and the angle of a point to its ray. Nothing here trains; :mod:`mograd.pareto.fronts`
traces fronts with these.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "ArrayLike",
    "hypervolume",
    "igd",
    "non_dominated",
    "preference_rays",
    "ray_angles",
]

ArrayLike = np.ndarray | torch.Tensor | Sequence[Any]
"""Anything accepted as a set of points: numpy array, torch tensor or nested sequence."""

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
    r"""Marks the points that no other point Pareto-dominates (minimization).

    Point $q$ dominates $p$ when $q \le p$ in every objective and $q < p$ in at least
    one. Identical points do not dominate each other, so duplicates of a non-dominated point are
    all kept. Works for any number of objectives: $O(n \log n)$ for two objectives,
    $O(n^2 m)$ (in chunks of 1024 rows) otherwise.

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
    r"""Exact hypervolume of a two-objective point set with respect to a reference point.

    The hypervolume is the area of the union of the boxes $[p_1, r_1] \times [p_2, r_2]$ over
    the points $p$, with $r$ = ``ref`` (minimization): the larger, the better the set covers
    the front. Points that do not strictly dominate ``ref`` (some coordinate $\ge r$) span an
    empty box and add nothing,
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
    r"""Inverted generational distance: mean distance from each true-front point to the set.

    Args:
        points: The approximation set, shape ``(n_points, m)``; at least one point.
        front: Dense samples of the true front, shape ``(n_front, m)``; at least one point.

    Returns:
        $\frac{1}{n_f} \sum_j \min_i \lVert f_j - p_i \rVert_2$ over the front samples $f_j$
        and the points $p_i$; 0 means every front sample is matched exactly.

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
    return float(total / f.shape[0])


_RAY_TARGETS = ("inverse", "direct")


def preference_rays(n: int, *, endpoints: bool = False) -> np.ndarray:
    r"""``n`` unit preference rays for two objectives, evenly spaced in angle.

    Ray $i$ is $(\cos t_i, \sin t_i)$. By default the angles are the midpoints
    $t_i = (i + \frac12) \frac{\pi}{2 n}$, so every ray weighs both objectives (a linear
    scalarization on an end ray would ignore one objective); ``endpoints=True`` gives
    $t_i = i \frac{\pi}{2 (n - 1)}$, the evenly distributed preference vectors of Pareto MTL
    (Lin et al., NeurIPS 2019), end rays included. Component ``j`` of a ray is how much
    objective ``j`` matters.

    Args:
        n: Number of rays, ``>= 1`` (``>= 2`` with ``endpoints``).
        endpoints: Include the two axis rays ``(1, 0)`` and ``(0, 1)``.

    Returns:
        Array of shape ``(n, 2)``, unit L2 norm rows, ordered from objective 1's side.

    Raises:
        ValueError: If ``n`` is too small.

    Example:
        >>> preference_rays(3).round(3).tolist()
        [[0.966, 0.259], [0.707, 0.707], [0.259, 0.966]]
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < (2 if endpoints else 1):
        raise ValueError(
            f"n must be an int >= {2 if endpoints else 1}"
            f"{' with endpoints=True' if endpoints else ''}, got {n!r}"
        )
    n = int(n)
    t = np.linspace(0.0, np.pi / 2, n) if endpoints else (np.arange(n) + 0.5) * (np.pi / 2) / n
    return np.stack([np.cos(t), np.sin(t)], axis=1)


def _as_rays(rays: Any, m: int | None = None, n: int | None = None) -> np.ndarray:
    """Validates rays: ``(n, m)`` (or one ``(m,)`` ray, broadcast), finite, >= 0, none zero."""
    r = _to_numpy(rays, "rays")
    if r.ndim == 1:
        r = r.reshape(1, -1)
        if n is not None:
            r = np.repeat(r, n, axis=0)
    if r.ndim != 2 or r.shape[1] < 1:
        raise ValueError(f"rays must have shape (n_rays, n_objectives), got {tuple(r.shape)}")
    if m is not None and r.shape[1] != m:
        raise ValueError(f"rays have {r.shape[1]} components but the points have {m} objectives")
    if n is not None and r.shape[0] != n:
        raise ValueError(f"{r.shape[0]} rays were given for {n} points")
    if not np.all(np.isfinite(r)) or np.any(r < 0) or np.any(r.sum(axis=1) <= 0):
        raise ValueError(f"rays must be finite, >= 0 and not all zero, got {r.tolist()}")
    return r


def ray_angles(points: ArrayLike, rays: ArrayLike, *, target: str = "inverse") -> np.ndarray:
    r"""Angle (degrees) between each objective vector and the direction its ray asks for.

    A preference ray $r$ says how much each objective matters. Two conventions name the
    point of the front "in that direction":

    - ``"inverse"`` (default): the exact-Pareto-optimal point of EPO (Mahapatra & Rajan,
      ICML 2020), where $r_1 f_1 = r_2 f_2 = \dots$, i.e. $f$ is parallel to
      $(1/r_1, \dots, 1/r_m)$: the objective that matters more ends lower. Rays must be
      positive.
    - ``"direct"``: $f$ parallel to $r$ (the sub-region of Pareto MTL, Lin et al.
      NeurIPS 2019, is the cone of loss vectors closest in angle to $r$).

    The angle is only meaningful for non-negative objectives (losses, error rates), measured
    from the origin.

    Args:
        points: Objective values, shape ``(n, m)``; finite, non-negative, no zero row.
        rays: One ray per point ``(n, m)``, or one ray ``(m,)`` for all; finite, ``>= 0``.
        target: ``"inverse"`` or ``"direct"``.

    Returns:
        Angles in degrees, shape ``(n,)``, in ``[0, 90]``.

    Raises:
        ValueError: On bad shapes, negative or non-finite values, a zero point, a zero ray
            component with ``target="inverse"``, or an unknown ``target``.

    Example:
        >>> ray_angles([[1.0, 3.0], [2.0, 2.0]], [[0.75, 0.25], [0.5, 0.5]]).round(6).tolist()
        [0.0, 0.0]
        >>> float(ray_angles([[1.0, 0.0]], [0.5, 0.5])[0])
        45.0
    """
    if target not in _RAY_TARGETS:
        raise ValueError(f"target must be one of {_RAY_TARGETS}, got {target!r}")
    p = _as_points(points, "points")
    r = _as_rays(rays, p.shape[1], p.shape[0])
    if np.any(p < 0) or np.any(np.linalg.norm(p, axis=1) == 0):
        raise ValueError("ray_angles needs non-negative points with at least one nonzero entry")
    if target == "inverse":
        if np.any(r == 0):
            raise ValueError(f"target='inverse' needs positive rays, got {r.tolist()}")
        d = 1.0 / r
    else:
        d = r
    a = p / np.linalg.norm(p, axis=1, keepdims=True)
    b = d / np.linalg.norm(d, axis=1, keepdims=True)
    # 2 atan2(|a - b|, |a + b|): accurate for small angles, where arccos(cos) is not.
    ang = 2.0 * np.arctan2(np.linalg.norm(a - b, axis=1), np.linalg.norm(a + b, axis=1))
    out: np.ndarray = np.degrees(ang)
    return out

r"""Min-norm point of the convex hull of k gradients, from their k x k Gram matrix.

This module is the first of mograd's three layers: a pure solver. It sees only the Gram
matrix $G = J J^\top$ of the per-loss gradients and returns the weights
$w^* = \arg\min_{w \in \Delta} w^\top G w$ over the simplex $\Delta$ (paper eq. 8). It never
touches parameters or autograd.

* $k = 1$: $w^* = [1]$.
* $k = 2$: the closed form
  $w_1 = \operatorname{clamp}\big((G_{22} - G_{12}) / (G_{11} + G_{22} - 2 G_{12}), 0, 1\big)$,
  computed with tensor operations only, so it runs on the Gram matrix's device without any
  device-to-host synchronization.
* $k \ge 3$: Frank-Wolfe on the simplex (paper eqs. 9-10) in its fully-corrective variant
  (Wolfe's min-norm-point method): the Frank-Wolfe vertex is added to the active set and the
  step of eq. 11 is replaced by the exact minimizer over that set's convex hull. Started from
  the best pair, stopped on the Frank-Wolfe duality gap relative to the scale of $G$ or
  after ``max_iter`` iterations. It runs in float64 on the host: the matrix is tiny.

Accuracy (measured by ``tests/unit/test_solver.py``): relative objective gap
$(f(w) - f^*) / \max_i G_{ii}$ at most ``1e-6`` in float64 for $k \le 8$, and at most ``1e-4``
for float32 input with $k = 2$ (the closed form runs in the input's precision there).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from ._checks import check_gram, check_int, check_number

__all__ = ["MinNormResult", "min_norm_solve", "min_norm_weights"]

DEFAULT_MAX_ITER = 1000
DEFAULT_TOL = 1e-10


class MinNormResult(NamedTuple):
    r"""Result of :func:`min_norm_solve`.

    Attributes:
        weights: The min-norm weights, shape ``(k,)``, on the simplex, on the Gram matrix's
            device and dtype.
        iterations: Frank-Wolfe iterations run (``0`` for $k = 1$, ``1`` for the closed
            form of $k = 2$).
        gap: Frank-Wolfe duality gap $w^\top G w - \min_j (G w)_j$ at the returned point,
            relative to $\max_i G_{ii}$ (``0.0`` where it was not computed on the host, i.e.
            $k \le 2$).
    """

    weights: torch.Tensor
    iterations: int
    gap: float


def _validate(gram: torch.Tensor, max_iter: int, tol: float) -> None:
    check_gram(gram)
    if not bool(torch.isfinite(gram).all()):
        raise ValueError("gram has non-finite entries (nan or inf)")
    check_int("max_iter", max_iter)
    check_number("tol", tol, nonnegative=True)


def _closed_form_2(gram: torch.Tensor) -> torch.Tensor:
    """Exact min-norm weights for two gradients: tensor ops only (no host sync), or, for a
    float64 Gram matrix on the CPU (nothing to synchronize), the same float64 arithmetic on
    the host, bit for bit, without a dozen small kernels."""
    if gram.device.type == "cpu" and gram.dtype == torch.float64:
        return _closed_form_2_host(gram)
    return _closed_form_2_tensor(gram)


def _closed_form_2_tensor(gram: torch.Tensor) -> torch.Tensor:
    g = gram if gram.dtype in (torch.float32, torch.float64) else gram.float()
    g11, g22, g12 = g[0, 0], g[1, 1], g[0, 1]
    den = g11 + g22 - 2.0 * g12  # = ||g1 - g2||^2 >= 0
    scale = g11 + g22
    # Identical (or all-zero) gradients: every point is optimal; return the midpoint.
    safe = den > scale * torch.finfo(g.dtype).eps * 4.0
    ratio = (g22 - g12) / torch.where(safe, den, torch.ones_like(den))
    w1 = torch.where(safe, ratio.clamp(0.0, 1.0), torch.full_like(den, 0.5))
    return torch.stack((w1, 1.0 - w1)).to(gram.dtype)


def _closed_form_2_host(gram: torch.Tensor) -> torch.Tensor:
    (g11, g12), (_, g22) = gram.tolist()
    den = g11 + g22 - 2.0 * g12
    scale = g11 + g22
    if den > scale * torch.finfo(torch.float64).eps * 4.0:
        w1 = min(max((g22 - g12) / den, 0.0), 1.0)  # NaN stays NaN, as with clamp
    else:
        w1 = 0.5
    return torch.tensor([w1, 1.0 - w1], dtype=torch.float64)


def _best_pair_start(g: np.ndarray) -> np.ndarray:
    """Best point over all vertices and all pairs (each pair by its closed form)."""
    k = g.shape[0]
    diag = np.diag(g)
    i, j = np.triu_indices(k, 1)
    den = diag[i] + diag[j] - 2.0 * g[i, j]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(den > 0, (diag[j] - g[i, j]) / np.where(den > 0, den, 1.0), 0.5)
    t = np.clip(t, 0.0, 1.0)
    vals = t * t * diag[i] + (1 - t) ** 2 * diag[j] + 2 * t * (1 - t) * g[i, j]
    w = np.zeros(k)
    best_vertex = int(np.argmin(diag))
    if vals.size and vals.min() < diag[best_vertex]:
        p = int(np.argmin(vals))
        w[i[p]], w[j[p]] = t[p], 1.0 - t[p]
    else:
        w[best_vertex] = 1.0
    return w


def _affine_minimizer(g: np.ndarray, support: np.ndarray) -> np.ndarray:
    """argmin of w^T G w over the affine hull {w : supp(w) in S, sum(w) = 1} (KKT solve)."""
    m = support.size
    kkt = np.zeros((m + 1, m + 1))
    kkt[:m, :m] = g[np.ix_(support, support)]
    kkt[:m, m] = 1.0
    kkt[m, :m] = 1.0
    rhs = np.zeros(m + 1)
    rhs[m] = 1.0
    try:
        sol = np.linalg.solve(kkt, rhs)
    except np.linalg.LinAlgError:
        sol = np.linalg.lstsq(kkt, rhs, rcond=None)[0]
    return sol[:m]


def _frank_wolfe(g: np.ndarray, max_iter: int, tol: float) -> tuple[np.ndarray, int, float]:
    """Fully-corrective Frank-Wolfe (Wolfe's min-norm-point method) on the simplex.

    Each iteration takes the Frank-Wolfe vertex ``s = argmin_j (G w)_j`` (paper eqs. 9-10)
    and, instead of the fixed step of eq. 11, moves to the best point of the convex hull of
    the vertices used so far: the affine minimizer on that set, pulled back into the simplex
    by the largest feasible step and dropping vertices whose weight reaches zero. The vertex
    set stays affinely independent, so every KKT solve is well posed and the method is exact
    after finitely many iterations; ``max_iter`` caps it anyway. float64, on the host.
    """
    k = g.shape[0]
    scale = float(np.max(np.diag(g)))
    if scale <= 0.0:  # all gradients are zero: every point is optimal
        return np.full(k, 1.0 / k), 0, 0.0
    g = g / scale  # objective scale 1: tolerances below are relative
    w = _best_pair_start(g)
    # Ties: when the uniform point is as good (all gradients identical, or a symmetric
    # configuration), start there, so that identical gradients get equal weights for every
    # k, as the k = 2 closed form gives the midpoint.
    uniform = np.full(k, 1.0 / k)
    if float(uniform @ g @ uniform) <= float(w @ g @ w) * (1.0 + 1e-12) + 1e-15:
        w = uniform
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 - the count is reported
        d = g @ w
        s = int(np.argmin(d))
        if float(w @ d) - d[s] <= tol:  # Frank-Wolfe duality gap (half of it)
            break
        support = np.flatnonzero(w > 0)
        if s not in support:
            support = np.append(support, s)
        for _ in range(k + 1):  # minor cycles: at most one removal per vertex
            alpha = _affine_minimizer(g, support)
            current = w[support]
            if np.all(np.isfinite(alpha)) and alpha.min() > 1e-15:
                w = np.zeros(k)
                w[support] = alpha / alpha.sum()
                break
            if not np.all(np.isfinite(alpha)):
                break
            neg = alpha <= 1e-15
            with np.errstate(divide="ignore", invalid="ignore"):
                ratios = current[neg] / (current[neg] - alpha[neg])
            theta = float(np.clip(np.min(ratios), 0.0, 1.0))
            new = current + theta * (alpha - current)
            new[new <= 1e-15] = 0.0
            w = np.zeros(k)
            w[support] = new
            total = w.sum()
            w /= total
            support = np.flatnonzero(w > 0)
            if support.size <= 1:
                break
    d = g @ w
    gap = float(w @ d - d.min())
    return w, it, max(gap, 0.0)


def min_norm_solve(
    gram: torch.Tensor,
    *,
    max_iter: int = DEFAULT_MAX_ITER,
    tol: float = DEFAULT_TOL,
    validate: bool = True,
) -> MinNormResult:
    r"""Solve $\min_{w \in \Delta} w^\top G w$ and report the solver's work.

    Args:
        gram: Symmetric positive semi-definite ``(k, k)`` Gram matrix $G = J J^\top$.
        max_iter: Iteration cap of Frank-Wolfe ($k \ge 3$); the loop never runs longer.
        tol: Stop when the duality gap $w^\top G w - \min_j (G w)_j$ is at most
            ``tol`` $\cdot \max_i G_{ii}$.
        validate: Check shape, dtype and finiteness first (one host synchronization).
            mograd's optimizer passes ``False`` on its hot path.

    Returns:
        A :class:`MinNormResult`.

    Raises:
        TypeError: If ``gram`` is not a tensor.
        ValueError: If ``gram`` is not a finite non-empty square floating matrix, or the
            options are out of range.

    Example:
        >>> import torch
        >>> from mograd import min_norm_solve
        >>> res = min_norm_solve(torch.tensor([[4.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]))
        >>> [round(x, 4) for x in res.weights.tolist()]
        [0.1111, 0.4444, 0.4444]
    """
    if validate:
        _validate(gram, max_iter, tol)
    k = gram.shape[0]
    if k == 1:
        return MinNormResult(torch.ones(1, dtype=gram.dtype, device=gram.device), 0, 0.0)
    if k == 2:
        return MinNormResult(_closed_form_2(gram), 1, 0.0)
    g = gram.detach().to("cpu", torch.float64).numpy()
    g = 0.5 * (g + g.T)
    w, iters, gap = _frank_wolfe(g, max_iter, float(tol))
    weights = torch.from_numpy(w).to(device=gram.device, dtype=gram.dtype)
    return MinNormResult(weights, iters, gap)


def min_norm_weights(
    gram: torch.Tensor, *, max_iter: int = DEFAULT_MAX_ITER, tol: float = DEFAULT_TOL
) -> torch.Tensor:
    r"""Min-norm weights of the convex hull of k gradients (paper eq. 8).

    $w^* = \arg\min_{w \ge 0,\, \sum_i w_i = 1} \lVert \sum_i w_i g_i \rVert^2
    = \arg\min_w w^\top G w$.

    Args:
        gram: Symmetric positive semi-definite ``(k, k)`` Gram matrix of the gradients.
        max_iter: Frank-Wolfe iteration cap (used for $k \ge 3$).
        tol: Duality-gap tolerance relative to $\max_i G_{ii}$ (used for $k \ge 3$).

    Returns:
        Weights of shape ``(k,)`` on the simplex, finite, on ``gram``'s device and dtype.

    Raises:
        TypeError: If ``gram`` is not a tensor.
        ValueError: If ``gram`` is not a finite non-empty square floating matrix, or the
            options are out of range.

    Example:
        >>> import torch
        >>> from mograd import min_norm_weights
        >>> g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])
        >>> J = torch.stack([g1, g2])
        >>> min_norm_weights(J @ J.T)
        tensor([0.8000, 0.2000])
    """
    return min_norm_solve(gram, max_iter=max_iter, tol=tol).weights

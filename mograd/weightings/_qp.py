r"""A small exact quadratic-program solver for $k \times k$ problems (numpy float64, host).

Solves $\min_x \frac{1}{2} x^\top Q x + c^\top x$ subject to $x \ge l$ ($l$ = ``lower``) and,
optionally, $\sum_i x_i = 1$, with $Q$ symmetric positive definite, by the primal active-set method
(Nocedal & Wright, *Numerical Optimization*, 2nd ed., Algorithm 16.3). Each iteration solves
one equality-constrained problem on the free variables (a linear system of size at most
$k + 1$); the method terminates after finitely many iterations with the exact optimum up to
rounding, unlike first-order methods. The callers replace the Gram matrix by its positive
semi-definite part (:func:`psd_part`: a float32 Gram matrix of linearly dependent gradients
has eigenvalues slightly below zero, around $-10^{-8} \operatorname{tr}(G)$, which no small
ridge makes convex), normalize it by its trace and add a ridge of :data:`RIDGE` (relative to
that trace), which keeps $Q$ positive definite on rank-deficient Gram matrices and changes the
objective by at most $r \lVert x \rVert^2$, $r$ = ``RIDGE``.

Used by :class:`~mograd.weightings.UPGrad` and :class:`~mograd.weightings.DualProj`
(projection onto the dual cone, $\min_v v^\top G v$ s.t. $v \ge u$) and
:class:`~mograd.weightings.CAGrad` (a sequence of QPs on the simplex). Both try the faster
primal-dual active-set method first (on the dual cone only for a well-conditioned $G$) and keep
its answer only when it passes the KKT check.
"""

from __future__ import annotations

import numpy as np

from ._dual_set import dual_active_set, gram_factor

__all__ = [
    "RIDGE",
    "WELL_CONDITIONED",
    "normalized",
    "project_dual_cone",
    "psd_normalized",
    "psd_normalized_min",
    "psd_part",
    "ridge",
    "solve_qp",
]

#: Ridge added to the trace-normalized Gram matrix inside the QPs (see the module docstring).
RIDGE = 1e-12

#: Smallest eigenvalue of the trace-normalized Gram matrix (plus the caller's ridge) from which
#: :func:`project_dual_cone` tries the primal-dual active-set method on $G + $ ``RIDGE`` $I$
#: first: the ridge then moves the minimizer by about ``RIDGE / WELL_CONDITIONED`` $= 10^{-6}$
#: of its size at most (measured: $4 \cdot 10^{-10}$ on the benchmark MLP's $k = 128$ Gram matrix).
WELL_CONDITIONED = 1e-6


def normalized(g: np.ndarray) -> tuple[np.ndarray, float]:
    r"""$G / \operatorname{tr}(G)$ and the trace (``(zeros, 0.0)`` for a zero matrix)."""
    tr = float(np.trace(g))
    if not tr > 0:
        return np.zeros_like(g), 0.0
    return g / tr, tr


def psd_part(g: np.ndarray) -> np.ndarray:
    """The nearest positive semi-definite matrix to the symmetric ``g`` (Frobenius norm).

    The negative eigenvalues are set to zero (Higham 1988); ``g`` is returned as it is when it
    has none, so that a well-conditioned Gram matrix is solved bit-identically.
    """
    return _psd_eigh(g)[0]


def _psd_eigh(g: np.ndarray) -> tuple[np.ndarray, float]:
    """:func:`psd_part` of ``g`` and its smallest eigenvalue."""
    lam, vec = np.linalg.eigh(g)
    if lam.min() >= 0.0:
        return g, float(lam.min())
    out: np.ndarray = (vec * np.clip(lam, 0.0, None)) @ vec.T
    sym: np.ndarray = 0.5 * (out + out.T)
    return sym, 0.0


def psd_normalized(g: np.ndarray) -> tuple[np.ndarray, float]:
    r""":func:`normalized` of :func:`psd_part`: $G_+ / \operatorname{tr}(G_+)$ and that trace."""
    return normalized(psd_part(g))


def psd_normalized_min(g: np.ndarray) -> tuple[np.ndarray, float, float]:
    r""":func:`psd_normalized` and the smallest eigenvalue of $G_+ / \operatorname{tr}(G_+)$."""
    gp, low = _psd_eigh(g)
    gn, tr = normalized(gp)
    return gn, tr, (low / tr if tr > 0 else 0.0)


def solve_qp(
    Q: np.ndarray,
    c: np.ndarray,
    lower: np.ndarray,
    *,
    simplex: bool = False,
    x0: np.ndarray | None = None,
    max_iter: int | None = None,
) -> np.ndarray:
    r"""Exact solution of $\min_x \frac{1}{2} x^\top Q x + c^\top x$ s.t. $x \ge l$ (and
    $\sum_i x_i = 1$).

    Args:
        Q: Symmetric positive definite ``(k, k)`` matrix $Q$.
        c: Linear term $c$, shape ``(k,)``.
        lower: Lower bounds $l$, shape ``(k,)``; with ``simplex`` they must be zeros.
        simplex: Add the constraint $\sum_i x_i = 1$.
        x0: A feasible starting point (a warm start); default ``lower`` (box) or the
            uniform point (simplex).
        max_iter: Iteration cap (default $20 k + 50$; reached only through rounding
            cycles, in which case the last feasible iterate is returned).

    Returns:
        The minimizer, shape ``(k,)``, float64, feasible.
    """
    if simplex:
        fast = _simplex_primal_dual(Q, c, x0)
        if fast is not None:
            return fast
    return _primal_active_set(Q, c, lower, simplex, x0, max_iter)


def _primal_active_set(
    Q: np.ndarray,
    c: np.ndarray,
    lower: np.ndarray,
    simplex: bool,
    x0: np.ndarray | None,
    max_iter: int | None,
) -> np.ndarray:
    """The primal active-set method of :func:`solve_qp` (same arguments)."""
    k = c.shape[0]
    if x0 is None:
        x = np.full(k, 1.0 / k) if simplex else lower.astype(np.float64).copy()
    else:
        x = np.maximum(x0.astype(np.float64), lower)
        if simplex:
            s = x.sum()
            x = x / s if s > 0 else np.full(k, 1.0 / k)
    active = x <= lower
    if simplex and active.all():
        active[:] = False
    if max_iter is None:
        max_iter = 20 * k + 50
    scale = 1.0 + float(np.max(np.abs(c))) + float(np.max(np.abs(np.diag(Q))))
    tol = 1e-13 * scale
    for _ in range(max_iter):
        grad = Q @ x + c
        free = np.flatnonzero(~active)
        p_free, nu = _face_step(Q, grad, free, simplex)
        if _stalled(Q, c, x, free, p_free):
            idx = np.flatnonzero(active)
            if idx.size == 0:
                return x
            lam = grad[idx] - nu
            j = int(np.argmin(lam))
            if lam[j] >= -tol:
                return x
            active[idx[j]] = False
            continue
        step, block = 1.0, -1
        for pos, i in enumerate(free):
            if p_free[pos] < 0:
                a = (lower[i] - x[i]) / p_free[pos]
                if a < step:
                    step, block = a, int(i)
        x[free] += step * p_free
        if block >= 0:
            x[block] = lower[block]
            active[block] = True
        np.maximum(x, lower, out=x)
    return x


def _simplex_primal_dual(
    Q: np.ndarray, c: np.ndarray, x0: np.ndarray | None, max_iter: int = 12
) -> np.ndarray | None:
    r"""Fast path of :func:`solve_qp` on the simplex: the primal-dual active-set method.

    The KKT conditions are $Q x + c + \nu \mathbf{1} = \lambda$, $\mathbf{1}^\top x = 1$,
    $x \ge 0$, $\lambda \ge 0$, $x_i \lambda_i = 0$. Each iteration fixes $x = 0$ on the
    guessed active set (first the zeros of the warm start ``x0``), solves the equality-constrained
    problem on the others and guesses again $\{i : \lambda_i > s x_i\}$ ($s$ the scale of the
    problem; Hintermueller, Ito & Kunisch 2002). CAGrad's sequence of QPs changes the support
    little from one to the next, so one or two linear solves usually suffice. The answer is
    returned only when it satisfies the KKT conditions to rounding level (it is then the exact
    minimizer); otherwise ``None``, and the caller runs the primal active-set method.
    """
    k = c.shape[0]
    active = np.zeros(k, dtype=bool) if x0 is None else x0 <= 0
    if active.all():
        active[:] = False
    scale = 1.0 + float(np.max(np.abs(c))) + float(np.max(np.abs(np.diag(Q))))
    tol = 1e-12 * scale
    for _ in range(max_iter):
        free = np.flatnonzero(~active)
        n = free.size
        kkt = np.zeros((n + 1, n + 1))
        kkt[:n, :n] = Q[np.ix_(free, free)]
        kkt[:n, n] = 1.0
        kkt[n, :n] = 1.0
        try:
            sol = np.linalg.solve(kkt, np.concatenate([-c[free], [1.0]]))
        except np.linalg.LinAlgError:
            return None
        x = np.zeros(k)
        x[free] = sol[:n]
        lam = Q @ x + c + sol[n]
        lam[free] = 0.0
        new_active = lam > scale * x
        if new_active.all():
            return None
        if np.array_equal(new_active, active):
            if x.min() >= -tol and lam.min() >= -tol:
                x = np.maximum(x, 0.0)
                out: np.ndarray = x / x.sum()
                return out
            return None
        active = new_active
    return None


def _face_step(
    Q: np.ndarray, grad: np.ndarray, free: np.ndarray, simplex: bool
) -> tuple[np.ndarray, float]:
    r"""The minimizing step on the free variables (and the simplex multiplier $\nu$)."""
    if free.size == 0:
        return np.zeros(0), 0.0
    if not simplex:
        return np.linalg.solve(Q[np.ix_(free, free)], -grad[free]), 0.0
    n = free.size
    kkt = np.zeros((n + 1, n + 1))
    kkt[:n, :n] = Q[np.ix_(free, free)]
    kkt[:n, n] = 1.0
    kkt[n, :n] = 1.0
    sol = np.linalg.solve(kkt, np.concatenate([-grad[free], [0.0]]))
    # stationarity on the free set: Q_FF p + grad_F + nu' 1 = 0, multiplier -nu'
    return sol[:n], -float(sol[n])


def _stalled(
    Q: np.ndarray, c: np.ndarray, x: np.ndarray, free: np.ndarray, p_free: np.ndarray
) -> bool:
    r"""The step is zero on this face: tiny or, on an ill-conditioned $Q$, with a decrease
    of the objective ($p^\top Q p / 2$ at a full step) at rounding level."""
    if p_free.size == 0 or np.max(np.abs(p_free)) <= 1e-14 * (1.0 + np.max(np.abs(x))):
        return True
    qff = Q[np.ix_(free, free)]
    f_scale = 0.5 * abs(float(x @ Q @ x)) + abs(float(c @ x)) + 1e-300
    return 0.5 * float(p_free @ qff @ p_free) <= 1e-15 * f_scale


def ridge(gn: np.ndarray, reg: float = 0.0) -> np.ndarray:
    """``gn`` plus ``reg + RIDGE`` on its diagonal: the matrix of the ridged QPs."""
    q: np.ndarray = gn + (reg + RIDGE) * np.eye(gn.shape[0])
    return q


def project_dual_cone(
    gn: np.ndarray,
    u: np.ndarray,
    reg: float = 0.0,
    factor: np.ndarray | None = None,
    *,
    well_conditioned: bool = False,
    ridged: np.ndarray | None = None,
) -> np.ndarray:
    r"""Weights $v$ with $J^\top v$ the projection of $J^\top u$ onto the dual cone of the rows.

    Solves $\min_v v^\top G v$ s.t. $v \ge u$ (Quinton & Rey 2024, Proposition 1) on the
    trace-normalized positive semi-definite ``gn`` plus ``reg`` on its diagonal. With
    ``well_conditioned`` (the smallest eigenvalue of ``gn`` plus ``reg`` is at least
    :data:`WELL_CONDITIONED`) the primal-dual active-set method on ``gn`` plus ``RIDGE`` on its
    diagonal goes first: two to four small linear solves, its answer kept only when it passes
    the KKT check. Otherwise, or when it fails, the answer is exact (up to rounding) by
    :func:`~mograd.weightings._dual_set.dual_active_set` on a factor of that matrix
    (``factor``, computed when not given): no ridge, so that it stays exact for linearly
    dependent gradients. The primal active-set method is the last fallback. ``ridged`` is
    :func:`ridge` of ``gn`` and ``reg``, when the caller has it already.
    """
    k = u.shape[0]
    q = ridge(gn, reg) if ridged is None else ridged
    if well_conditioned:
        fast = _primal_dual_active_set(q, u)
        if fast is not None:
            return fast
    f = gram_factor(gn, reg) if factor is None else factor
    v, ok = dual_active_set(f, u)
    if ok and np.all(np.isfinite(v)):
        return v
    fast = None if well_conditioned else _primal_dual_active_set(q, u)
    return fast if fast is not None else solve_qp(q, np.zeros(k), u)


def _primal_dual_active_set(Q: np.ndarray, u: np.ndarray, max_iter: int = 12) -> np.ndarray | None:
    r"""Fast path of :func:`project_dual_cone`: the primal-dual active-set method.

    With $x = v - u \ge 0$ and $\lambda = Q v$ the KKT conditions are $x \ge 0$,
    $\lambda \ge 0$, $x_i \lambda_i = 0$. Each iteration guesses the active set
    $\{i : \lambda_i > x_i\}$ (Hintermueller, Ito & Kunisch 2002), fixes $x = 0$ there and
    solves for the free variables; it usually stops after two or three linear solves.
    The result is returned only if it satisfies the KKT conditions to rounding level
    (then it is the same exact minimizer the primal active-set method finds); otherwise
    ``None``, and the caller falls back to :func:`solve_qp`.
    """
    k = u.shape[0]
    x = np.zeros(k)
    qu = Q @ u
    active = qu > x
    tol = 1e-12 * (1.0 + float(np.max(np.abs(qu))))
    for _ in range(max_iter):
        free = np.flatnonzero(~active)
        x = np.zeros(k)
        if free.size:
            x[free] = np.linalg.solve(Q[np.ix_(free, free)], -qu[free])
        v = u + x
        qv = Q @ v
        lam = qv.copy()
        lam[free] = 0.0
        new_active = lam > x
        if np.array_equal(new_active, active):
            if x.min() >= -tol and qv[active].min(initial=0.0) >= -tol:
                out: np.ndarray = np.maximum(v, u)
                return out
            return None
        active = new_active
    return None

r"""The dual active-set method of Goldfarb & Idnani (1983) for a nearest-point problem.

$\min_d \lVert d - J^\top u \rVert^2 / 2$ subject to $g_j^\top d \ge b_j$ for the
constrained $j$: the projection onto the dual cone of UPGrad and DualProj ($b = 0$, Quinton &
Rey 2024, Proposition 1) and the QP of PCD. Its stationarity condition
$d = J^\top (u + \mu)$, with multipliers $\mu \ge 0$ (zero off the constrained set), holds
at every iteration; each
iteration adds the most violated constraint, dropping active ones whose multiplier reaches
zero, so that the active gradients stay linearly independent and the multipliers bounded,
even for linearly dependent gradients, where a ridge on $G$ would bias the answer.

The weightings only have $G$: the method runs on a factor $F$ with $F F^\top = G_+$ (the
positive semi-definite part; :func:`gram_factor`), whose rows are the gradients in an
orthonormal basis of their span. Working on the rows, not on $G$, computes the
component of a gradient orthogonal to the active ones directly instead of as the difference
$G_{pp} - G_{pA} G_{AA}^{-1} G_{Ap}$, which cancels catastrophically when gradients are nearly
dependent.
"""

from __future__ import annotations

import numpy as np

__all__ = ["dual_active_set", "gram_factor"]

_EPS = float(np.finfo(np.float64).eps)


def gram_factor(g: np.ndarray, reg: float = 0.0) -> np.ndarray:
    r"""$F$ ($k \times r$) with $F F^\top = G_+ + \text{reg} \, I$, $G_+$ the PSD part of the
    symmetric ``g``."""
    lam, vec = np.linalg.eigh(g)
    keep = lam > 0
    f: np.ndarray = vec[:, keep] * np.sqrt(lam[keep])
    if reg > 0:
        f = np.hstack([f, np.sqrt(reg) * np.eye(g.shape[0])])
    return f


def dual_active_set(
    f: np.ndarray,
    u: np.ndarray,
    b: np.ndarray | None = None,
    constrained: np.ndarray | None = None,
    *,
    dependence_tol: float = 1e-12,
    tol: float = 1e-12,
) -> tuple[np.ndarray, bool]:
    r"""The weights $v = u + \mu$ of the nearest point $d = F^\top v$ (see the module docstring).

    Args:
        f: The gradients' rows $F$ ($k \times r$), e.g. :func:`gram_factor` of $G$.
        u: The starting weights, shape ``(k,)``.
        b: Right-hand sides, shape ``(k,)`` (default zeros).
        constrained: Boolean mask of the constrained indices (default all).
        dependence_tol: A gradient whose component orthogonal to the active ones has a
            squared norm below ``dependence_tol`` times its own counts as dependent.
        tol: A constraint counts as satisfied when violated by at most ``tol`` times the
            largest squared gradient norm (plus the rounding error of its slack).

    Returns:
        ``(v, feasible)``; ``feasible`` is ``False`` when the constraints are infeasible
        (then ``v`` is the last iterate).
    """
    k = u.shape[0]
    b = np.zeros(k) if b is None else b
    cons = np.ones(k, dtype=bool) if constrained is None else constrained.copy()
    mu = np.zeros(k)
    active: list[int] = []
    norms = np.sqrt(np.einsum("ij,ij->i", f, f))
    atol = tol * max(float(np.max(norms)) ** 2, 1e-300)
    for _ in range(10 * k + 10):
        d = f.T @ (u + mu)
        slack = f @ d - b
        margin = slack + atol + 16.0 * f.shape[1] * _EPS * (norms * np.linalg.norm(d) + abs(b))
        margin[~cons] = np.inf
        margin[active] = np.inf  # the active constraints hold with equality
        p = int(np.argmin(margin))
        if margin[p] >= 0:
            return u + mu, True
        if not _add_constraint(f, d, b, mu, active, p, dependence_tol):
            # g_p depends on the active gradients with r <= 0: no step can fix it. At
            # rounding level (1e-9 of its terms) that is not an infeasibility.
            if slack[p] >= -1e-9 * (norms[p] * np.linalg.norm(d) + abs(b[p])):
                cons[p] = False
                continue
            return u + mu, False
    return u + mu, True


def _add_constraint(
    f: np.ndarray,
    d: np.ndarray,
    b: np.ndarray,
    mu: np.ndarray,
    active: list[int],
    p: int,
    dependence_tol: float,
) -> bool:
    """Make the violated constraint $p$ active (``mu``, ``active`` in place); ``False`` if
    no step can ($g_p$ depends on the active gradients with non-positive coefficients)."""
    d = d.copy()
    fp = f[p]
    for _ in range(len(active) + 1):
        if active:
            fa = f[active]
            r = np.linalg.lstsq(fa.T, fp, rcond=None)[0]
            z = fp - fa.T @ r  # the component of g_p orthogonal to the active gradients
        else:
            r, z = np.zeros(0), fp
        z2 = float(z @ z)
        slack_p = float(fp @ d - b[p])
        full = -slack_p / z2 if z2 > dependence_tol * float(fp @ fp) else np.inf
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios = np.where(r > 0, mu[active] / np.where(r > 0, r, 1.0), np.inf)
        j = int(np.argmin(ratios)) if active else -1
        partial = float(ratios[j]) if active else np.inf
        step = min(full, partial)
        if step == np.inf:
            return False
        if active:
            mu[active] -= step * r
        mu[p] += step
        d = d + step * z
        if full <= partial:
            active.append(p)
            return True
        mu[active[j]] = 0.0
        del active[j]
    return True

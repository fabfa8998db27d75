"""CAGrad: the update that maximizes the worst loss improvement near the mean gradient.

Liu et al., "Conflict-Averse Gradient Descent for Multi-task Learning", NeurIPS 2021
(Algorithm 1 and its dual, eq. 4). See ``docs/weightings.md``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .._checks import check_number
from ._base import Weighting
from ._qp import RIDGE, psd_normalized, solve_qp
from ._util import check_bool, from_host, nan_weights, to_host

__all__ = ["CAGrad"]


class CAGrad(Weighting):
    r"""Conflict-averse gradient descent (CAGrad; Liu et al. 2021).

    CAGrad looks for the update $d$ within a ball around the mean gradient $g_0 = J^\top a$
    ($a_i = 1/k$) that maximizes the smallest improvement,
    $\max_d \min_i g_i^\top d$ s.t. $\lVert d - g_0 \rVert \le c \lVert g_0 \rVert$. Its dual
    (the paper's eq. 4) is

    $$
    w^* = \arg\min_{w \in \Delta} \; w^\top G a + c \lVert g_0 \rVert \sqrt{w^\top G w},
    $$

    $\Delta$ the simplex, and the update is
    $d = g_0 + (c \lVert g_0 \rVert / \lVert g_w \rVert) \, g_w$ with $g_w = J^\top w^*$, that
    is the weights $a + (c \lVert g_0 \rVert / \lVert g_w \rVert) \, w^*$ (divided by
    $1 + c^2$ with ``rescale=True``, as the paper's code does by default). The dual is solved
    without a generic cone solver: with $\sqrt{q} = \min_t (q / t + t) / 2$, each fixed $t$ is
    a QP on the simplex (solved exactly by an active-set method), and the optimal
    $t = \lVert g_w \rVert$ is found by a bisection safeguarding an exact root on the current
    support ($\lvert t - \lVert g_w \rVert \rvert \le 5 \cdot 10^{-11} \, t$), in float64 on
    the host. $c = 0$ gives the mean gradient.
    When $\lVert g_w \rVert < \epsilon \sqrt{\operatorname{tr} G}$ with $\epsilon$ =
    ``norm_eps`` (zero is, up to ``norm_eps``, in the convex hull of the gradients: a
    Pareto-stationary point) the weights are zero, as in TorchJD.

    When to use it: conflicting losses where the mean gradient should be kept as the anchor
    while improving the worst loss; $c$ interpolates between the mean gradient ($c = 0$)
    and MGDA-like behaviour (large $c$).

    Host round trip: yes (a few small QPs on the host per step).

    Args:
        c: Radius of the ball around the mean gradient, relative to $\lVert g_0 \rVert$
            ($\ge 0$).
        rescale: Divide the weights by $1 + c^2$.
        norm_eps: Relative norm under which $g_w$ counts as zero.

    Example:
        >>> import torch
        >>> from mograd.weightings import CAGrad
        >>> gram = torch.tensor([[1.0, -0.5], [-0.5, 4.0]], dtype=torch.float64)
        >>> w = CAGrad(c=0.5)(gram)
        >>> w.shape, bool((gram @ w > 0).all())
        (torch.Size([2]), True)
    """

    host_sync = True

    def __init__(self, c: float = 0.5, rescale: bool = False, norm_eps: float = 1e-4) -> None:
        self.c = check_number("c", c, nonnegative=True)
        self.rescale = check_bool("rescale", rescale)
        self.norm_eps = check_number("norm_eps", norm_eps, positive=True)

    def weigh(self, gram: torch.Tensor, losses: torch.Tensor | None) -> torch.Tensor:
        g = to_host(gram)
        if g is None:
            return nan_weights(gram)
        return from_host(self.solve(g), gram)

    def solve(self, g: np.ndarray) -> np.ndarray:
        """The CAGrad weights of a float64 Gram matrix (see the class docstring)."""
        k = g.shape[0]
        a = np.full(k, 1.0 / k)
        gn, tr = psd_normalized(g)
        rho = self.c * math.sqrt(max(float(a @ gn @ a), 0.0))
        if tr == 0.0 or rho == 0.0:
            return a / (1.0 + self.c**2) if self.rescale else a
        b = gn @ a
        # the ridge regularizes the norm: sqrt(w^T (G + RIDGE I) w), consistently everywhere
        gr = gn + RIDGE * np.eye(k)
        zeros = np.zeros(k)

        def inner(t: float, x0: np.ndarray | None) -> tuple[np.ndarray, float]:
            # min_w b^T w + rho/2 (w^T G w / t + t) on the simplex, for fixed t
            w = solve_qp((rho / t) * gr, b, zeros, simplex=True, x0=x0)
            return w, max(float(w @ gr @ w), 0.0)

        lo = 0.5 * self.norm_eps
        hi = math.sqrt(float(np.max(np.diag(gn)))) * (1.0 + 1e-9) + lo
        w, q = inner(lo, None)
        if lo * lo >= q:  # the optimal |g_w| is below lo < norm_eps
            return np.zeros(k)
        t = math.sqrt(lo * hi)
        for _ in range(200):
            w, q = inner(t, w)
            phi = t * t - q
            if abs(phi) <= 1e-10 * t * t:  # |t - |g_w|| <= 5e-11 t
                break
            if phi > 0:
                hi = t
            else:
                lo = t
            if hi <= lo * (1.0 + 1e-13):
                t = math.sqrt(lo * hi)
                w, q = inner(t, w)
                break
            cand = _face_root(gr, b, rho, w)
            t = cand if lo < cand < hi else math.sqrt(lo * hi)
        norm = math.sqrt(max(float(w @ gn @ w), 0.0))  # |g_w| itself, without the ridge
        if norm < self.norm_eps:
            return np.zeros(k)
        out = a + (rho / norm) * w
        return out / (1.0 + self.c**2) if self.rescale else out

    def __repr__(self) -> str:
        return f"CAGrad(c={self.c:g}, rescale={self.rescale}, norm_eps={self.norm_eps:g})"


def _face_root(gn: np.ndarray, b: np.ndarray, rho: float, w: np.ndarray) -> float:
    r"""The fixed point $t = \lVert g_w(t) \rVert$ if the support of $w$ stays optimal (else NaN).

    On a fixed support $S$ the inner QP's solution is affine in $t$:
    $w_S = \alpha + t \beta$ (from its KKT system), so $t^2 = w^\top G w$ is a quadratic
    equation in $t$; its positive root is the exact answer when the support is right,
    and a Newton-like next guess otherwise (the caller keeps it inside the bisection bracket).
    """
    s = np.flatnonzero(w > 0)
    gs = gn[np.ix_(s, s)]
    try:
        sol = np.linalg.solve(gs, np.stack([np.ones(s.size), b[s]], axis=1))
    except np.linalg.LinAlgError:
        return float("nan")
    a1, ab = sol[:, 0], sol[:, 1]
    s1, sb = float(a1.sum()), float(ab.sum())
    if not abs(s1) > 0:
        return float("nan")
    alpha = a1 / s1
    beta = (a1 * (sb / s1) - ab) / rho
    qa, qb, qc = 1.0 - float(beta @ gs @ beta), float(alpha @ gs @ beta), float(alpha @ gs @ alpha)
    disc = qb * qb + qa * qc
    if not (qa > 0 and disc >= 0):
        return float("nan")
    return (qb + math.sqrt(disc)) / qa

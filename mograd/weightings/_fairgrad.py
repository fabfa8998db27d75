r"""FairGrad: the alpha-fair allocation of the descent between the losses, $G w = w^{-1/\alpha}$.

Ban & Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024 (arXiv:2402.15638),
Section 3, eq. 4 and Algorithm 1. See ``docs/weightings.md``.
"""

from __future__ import annotations

import numpy as np
import torch

from .._checks import check_number
from ._base import Weighting
from ._qp import psd_part
from ._util import check_int, from_host, nan_weights, to_host

__all__ = ["FairGrad"]


class FairGrad(Weighting):
    r"""Alpha-fair multi-task gradient (FairGrad; Ban & Ji 2024).

    The update $d = J^\top w$ maximizes the $\alpha$-fair utility of the losses' first-order
    improvements $g_i^\top d$ in a ball; its optimality condition (the paper's eq. 4) is

    $$
    (G w)_i = w_i^{-1/\alpha} \quad \text{for every } i, \qquad w > 0,
    $$

    the stationary point of the strictly convex $w^\top G w / 2 - \sum_i h(w_i)$ with
    $h'(w) = w^{-1/\alpha}$. $\alpha = 1$ is proportional fairness (the equation of
    Nash-MTL, without its normalization), $\alpha \to \infty$ approaches $G w = \mathbf{1}$
    (max-min fairness), and $\alpha = 0$ is defined as the mean (linear scalarization). The
    equation is solved by a damped Newton method in float64 on the host, on
    $G_+ / \operatorname{tr}(G_+)$ ($G_+$ the positive semi-definite part) plus a ridge
    ``reg_eps`` that keeps it solvable when the gradients are linearly dependent (e.g. two
    opposed gradients, where no exact solution exists), then rescaled exactly: if $G$ is
    scaled by $s$, the weights are scaled by $s^{-\alpha / (\alpha + 1)}$.

    When to use it: conflicting losses where the trade-off between the average and the worst
    improvement should be chosen ($\alpha$); a generalization of Nash-MTL.

    Host round trip: yes (Newton iterations on the host).

    Args:
        alpha: Fairness $\alpha \ge 0$ (1: proportional fairness; large: max-min).
        reg_eps: Ridge on the trace-normalized $G$ ($\ge 0$).
        max_iter: Newton iteration cap.

    Example:
        >>> import torch
        >>> from mograd.weightings import FairGrad
        >>> gram = torch.tensor([[4.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
        >>> w = FairGrad(alpha=2.0, reg_eps=0.0)(gram)
        >>> torch.allclose(gram @ w, w ** -0.5)
        True
    """

    host_sync = True

    def __init__(self, alpha: float = 1.0, reg_eps: float = 1e-8, max_iter: int = 100) -> None:
        self.alpha = check_number("alpha", alpha, nonnegative=True)
        self.reg_eps = check_number("reg_eps", reg_eps, nonnegative=True)
        self.max_iter = check_int("max_iter", max_iter)

    def weigh(self, gram: torch.Tensor, losses: torch.Tensor | None) -> torch.Tensor:
        g = to_host(gram)
        if g is None:
            return nan_weights(gram)
        return from_host(self.solve(g), gram)

    def solve(self, g: np.ndarray) -> np.ndarray:
        """The FairGrad weights of a float64 Gram matrix."""
        k = g.shape[0]
        if self.alpha == 0.0:
            return np.full(k, 1.0 / k)
        g = psd_part(g)
        tr = float(np.trace(g))
        if not tr > 0:
            return np.ones(k)
        h = g / tr + self.reg_eps * np.eye(k)
        x = _newton(h, 1.0 / self.alpha, self.max_iter)
        out: np.ndarray = x * tr ** (-self.alpha / (self.alpha + 1.0))
        return out

    def __repr__(self) -> str:
        return f"FairGrad(alpha={self.alpha:g}, reg_eps={self.reg_eps:g}, max_iter={self.max_iter})"


def _newton(h: np.ndarray, q: float, max_iter: int) -> np.ndarray:
    r"""Solve $h x = x^{-q}$, $x > 0$: minimize $x^\top h x / 2 - \sum_i H(x_i)$, $H' = x^{-q}$."""

    def f(y: np.ndarray) -> float:
        prim = np.log(y) if q == 1.0 else y ** (1.0 - q) / (1.0 - q)
        return 0.5 * float(y @ h @ y) - float(np.sum(prim))

    diag = np.clip(np.diag(h), 1e-300, None)
    x = diag ** (-1.0 / (1.0 + q))  # the solution for a diagonal h
    fx = f(x)
    for _ in range(max_iter):
        hx = h @ x
        if np.max(np.abs(hx * x**q - 1.0)) <= 1e-13:  # (h x)_i = x_i^(-q), relative
            break
        grad = hx - x ** (-q)
        step = np.linalg.solve(h + np.diag(q * x ** (-q - 1.0)), -grad)
        dec = -float(grad @ step)
        t = 1.0
        while np.any(x + t * step <= 0):
            t *= 0.5
        while t > 1e-14:
            y = x + t * step
            fy = f(y)
            if fy <= fx - 0.25 * t * dec or dec < 1e-12 * (1.0 + abs(fx)):
                break
            t *= 0.5
        else:
            break
        x, fx = y, fy
    return x

"""IMTL-G: the update with equal projections onto every gradient's direction.

Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021 (the gradient part, IMTL-G),
in the pseudo-inverse form of Quinton & Rey, "Jacobian Descent for Multi-Objective
Optimization", 2024, which also covers linearly dependent gradients. See
``docs/weightings.md``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ._base import Weighting
from ._util import from_host, nan_weights, to_host

__all__ = ["IMTLG"]


class IMTLG(Weighting):
    r"""Impartial multi-task learning, gradient balancing (IMTL-G; Liu et al. 2021).

    IMTL-G picks the combination $d = J^\top w$ ($\sum_i w_i = 1$) whose projections onto the
    unit gradient directions are all equal: $d^\top g_i / \lVert g_i \rVert$ is the same for
    every $i$. In Gram form, $(G w)_i = \lambda \sqrt{G_{ii}}$, hence

    $$
    v = G^+ \sqrt{\operatorname{diag} G}, \qquad w = v \Big/ \sum_i v_i,
    $$

    with the pseudo-inverse $G^+$ (eigenvalues below $k \, \varepsilon$ times the largest
    count as zero, $\varepsilon$ the machine epsilon of the dtype). When $\sum_i v_i$
    vanishes (e.g. two opposed gradients) no such combination exists and the weights are
    zero. "Vanishes" means: at the level of the rounding error of the sum,
    $\lvert \sum_i v_i \rvert \le 4 k \varepsilon \big(\sum_i \lvert v_i \rvert +
    \sqrt{k} / \sqrt{\max_i G_{ii}}\big)$, a relative test that does not depend on the scale
    of $G$ and keeps the answer of a float32 Gram matrix the same as that of its float64 copy
    (a fixed cut-off such as $k \sqrt{\varepsilon}$ sits far above rounding and flips the
    answer with the dtype).

    When to use it: losses whose gradients differ a lot in magnitude, none of which should
    dominate; the weights are invariant to the scale of the Gram matrix.

    Host round trip: yes (an eigendecomposition in float64 on the host).

    Example:
        >>> import torch
        >>> from mograd.weightings import IMTLG
        >>> gram = torch.tensor([[4.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
        >>> w = IMTLG()(gram)
        >>> w
        tensor([0.3333, 0.6667], dtype=torch.float64)
        >>> (gram @ w) / gram.diagonal().sqrt()
        tensor([0.6667, 0.6667], dtype=torch.float64)
    """

    host_sync = True

    def weigh(self, gram: torch.Tensor, losses: torch.Tensor | None) -> torch.Tensor:
        g = to_host(gram)
        if g is None:
            return nan_weights(gram)
        k = g.shape[0]
        eps = torch.finfo(gram.dtype).eps
        d = np.sqrt(np.clip(np.diag(g), 0.0, None))
        lam, vec = np.linalg.eigh(g)
        top = float(lam.max()) if k else 0.0
        if not top > 0:
            return from_host(np.zeros(k), gram)
        keep = lam > k * eps * top
        inv = np.where(keep, 1.0 / np.where(keep, lam, 1.0), 0.0)
        v = vec @ (inv * (vec.T @ d))
        # scale-free: v ~ 1/sqrt(s), d ~ sqrt(s); the rounding error of sum(v) is about
        # k eps sum|v_i| (plus the absolute error of a v that is zero up to rounding)
        vn = v * float(d.max())
        bound = 4.0 * k * eps * (float(np.abs(vn).sum()) + math.sqrt(k))
        if not abs(float(vn.sum())) > bound:
            return from_host(np.zeros(k), gram)
        return from_host(v / v.sum(), gram)

    def __repr__(self) -> str:
        return "IMTLG()"

"""UPGrad: the sum of each gradient's projection onto the dual cone of all the gradients.

Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024 (arXiv:2406.16232),
Section 4 and Proposition 1. See ``docs/weightings.md``.
"""

from __future__ import annotations

import numpy as np

from ._dualproj import _DualCone
from ._qp import project_dual_cone, ridge

__all__ = ["UPGrad"]


class UPGrad(_DualCone):
    r"""Unconflicting projection of gradients (UPGrad; Quinton & Rey 2024).

    Each gradient $p_i g_i$ is projected onto the dual cone
    $\{x : g_j^\top x \ge 0 \text{ for all } j\}$ of the gradients and the projections are
    summed. In weight space (the paper's Proposition 1) the projection of $J^\top u$ is
    $J^\top v$ with

    $$
    v(u) = \arg\min_v \; v^\top G v \quad \text{subject to} \quad v \ge u,
    $$

    so $w = \sum_i v(p_i e_i)$. The update never conflicts with any loss:
    $(G w)_i = g_i^\top (J^\top w) \ge 0$ for every $i$, and it equals the mean gradient when
    no two gradients conflict. The $k$ QPs are solved exactly by an active-set method on the
    host (float64), on $G_+ / \operatorname{tr}(G_+)$ plus a ridge of $10^{-12}$, $G_+$ being
    the positive semi-definite part of $G$ (rounding leaves the float32 Gram matrix of
    dependent gradients slightly indefinite); ``reg_eps=1e-4`` reproduces TorchJD's default
    regularization (``reg_eps`` times $I$ added to the trace-normalized matrix).

    When to use it: a parameter-free default for several losses that may conflict, whose
    update is non-conflicting, invariant to the scale of the Gram matrix, and reduces to
    the (weighted) mean when the gradients agree.

    Host round trip: yes (the QPs run on the host).

    Args:
        pref_vector: Preference weights $p$ ($k$ finite values $\ge 0$, not all zero);
            default $1/k$ each.
        reg_eps: Extra ridge on the trace-normalized Gram matrix (default 0: exact).

    Example:
        >>> import torch
        >>> from mograd.weightings import UPGrad
        >>> gram = torch.tensor([[1.0, -0.5], [-0.5, 1.0]], dtype=torch.float64)
        >>> w = UPGrad()(gram)
        >>> w
        tensor([0.7500, 0.7500], dtype=torch.float64)
        >>> bool((gram @ w >= 0).all())
        True
    """

    def _project(self, gn: np.ndarray, p: np.ndarray, well_conditioned: bool) -> np.ndarray:
        k = gn.shape[0]
        f = None if well_conditioned else self._factor(gn)
        q = ridge(gn, self.reg_eps)  # one matrix for the k QPs
        w = np.zeros(k)
        for i in range(k):
            if p[i] > 0:
                u = np.zeros(k)
                u[i] = p[i]
                w += project_dual_cone(
                    gn, u, self.reg_eps, f, well_conditioned=well_conditioned, ridged=q
                )
        return w

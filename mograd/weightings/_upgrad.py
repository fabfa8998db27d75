"""UPGrad: the sum of each gradient's projection onto the dual cone of all the gradients.

Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024 (arXiv:2406.16232),
Section 4 and Proposition 1. See ``docs/weightings.md``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ._base import Weighting
from ._qp import normalized, project_dual_cone
from ._util import check_number, check_pref, from_host, nan_weights, pref_array, to_host

__all__ = ["UPGrad"]


class UPGrad(Weighting):
    r"""Unconflicting projection of gradients (UPGrad; Quinton & Rey 2024).

    Each gradient ``p_i g_i`` is projected onto the dual cone ``{x : g_j^T x >= 0 for all j}``
    of the gradients and the projections are summed. In weight space (the paper's
    Proposition 1) the projection of ``J^T u`` is ``J^T v`` with

    ``v = argmin_v v^T G v  subject to  v >= u``,

    so ``w = sum_i v(p_i e_i)``. The update never conflicts with any loss:
    ``(G w)_i = g_i^T (J^T w) >= 0`` for every ``i``, and it equals the mean gradient when no
    two gradients conflict. The k QPs are solved exactly by an active-set method on the host
    (float64), on ``G / trace(G)`` plus a ridge of 1e-12; ``reg_eps=1e-4`` reproduces TorchJD's
    default regularization (``reg_eps * I`` added to the trace-normalized matrix).

    When to use it: a parameter-free default for several losses that may conflict, whose
    update is non-conflicting, invariant to the scale of the Gram matrix, and reduces to
    the (weighted) mean when the gradients agree.

    Host round trip: yes (the QPs run on the host).

    Args:
        pref_vector: Preference weights ``p`` (k finite values >= 0, not all zero); default
            ``1/k`` each.
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

    host_sync = True

    def __init__(
        self, pref_vector: Sequence[float] | torch.Tensor | None = None, reg_eps: float = 0.0
    ) -> None:
        self.pref_vector = check_pref(pref_vector)
        self.reg_eps = check_number("reg_eps", reg_eps)

    def weigh(self, gram: torch.Tensor, losses: torch.Tensor | None) -> torch.Tensor:
        g = to_host(gram)
        if g is None:
            return nan_weights(gram)
        k = g.shape[0]
        p = pref_array(self.pref_vector, k, "UPGrad")
        gn, tr = normalized(g)
        if tr == 0.0:
            return from_host(p, gram)
        w = np.zeros(k)
        for i in range(k):
            if p[i] > 0:
                u = np.zeros(k)
                u[i] = p[i]
                w += project_dual_cone(gn, u, self.reg_eps)
        return from_host(w, gram)

    def __repr__(self) -> str:
        pref = None if self.pref_vector is None else list(self.pref_vector)
        return f"UPGrad(pref_vector={pref!r}, reg_eps={self.reg_eps:g})"

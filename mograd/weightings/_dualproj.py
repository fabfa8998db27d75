"""DualProj: the projection of the mean gradient onto the dual cone of the gradients.

Lopez-Paz & Ranzato, "Gradient Episodic Memory for Continual Learning", NeurIPS 2017 (eq. 11,
the projection of GEM); as an aggregator in Quinton & Rey, "Jacobian Descent for
Multi-Objective Optimization", 2024. See ``docs/weightings.md``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .._checks import check_number
from ._base import Weighting
from ._dual_set import gram_factor
from ._qp import WELL_CONDITIONED, project_dual_cone, psd_normalized_min
from ._util import check_pref, from_host, nan_weights, pref_array, to_host

__all__ = ["DualProj"]


class _DualCone(Weighting):
    """What DualProj and UPGrad share: the options, the host copy of $G$ and the
    degenerate cases; subclasses give the projection on the trace-normalized $G$."""

    host_sync = True

    def __init__(
        self, pref_vector: Sequence[float] | torch.Tensor | None = None, reg_eps: float = 0.0
    ) -> None:
        self.pref_vector = check_pref(pref_vector)
        self.reg_eps = check_number("reg_eps", reg_eps, nonnegative=True)

    def _project(self, gn: np.ndarray, p: np.ndarray, well_conditioned: bool) -> np.ndarray:
        raise NotImplementedError

    def _factor(self, gn: np.ndarray) -> np.ndarray:
        return gram_factor(gn, self.reg_eps)

    def weigh(self, gram: torch.Tensor, losses: torch.Tensor | None) -> torch.Tensor:
        g = to_host(gram)
        if g is None:
            return nan_weights(gram)
        p = pref_array(self.pref_vector, g.shape[0], type(self).__name__)
        gn, tr, low = psd_normalized_min(g)
        if tr == 0.0:
            return from_host(p, gram)
        well = low + self.reg_eps >= WELL_CONDITIONED
        return from_host(self._project(gn, p, well), gram)

    def __repr__(self) -> str:
        pref = None if self.pref_vector is None else list(self.pref_vector)
        return f"{type(self).__name__}(pref_vector={pref!r}, reg_eps={self.reg_eps:g})"


class DualProj(_DualCone):
    r"""Projection of the preference-weighted gradient onto the dual cone (DualProj).

    With preference weights $p$, $J^\top p$ is projected onto the dual cone
    $\{x : g_j^\top x \ge 0 \text{ for all } j\}$; in weight space (Quinton & Rey 2024,
    Proposition 1)

    $$
    w = \arg\min_v \; v^\top G v \quad \text{subject to} \quad v \ge p.
    $$

    The update does not conflict with any loss ($(G w)_i \ge 0$) and equals $J^\top p$ when
    that one conflicts with none. Solved exactly by an active-set method on the host
    (float64) on $G_+ / \operatorname{tr}(G_+)$ plus a ridge of $10^{-12}$, $G_+$ being the
    positive semi-definite part of $G$ (rounding leaves the float32 Gram matrix of dependent
    gradients slightly indefinite); ``reg_eps=1e-4`` reproduces TorchJD's default
    regularization.

    When to use it: the smallest change of the mean gradient that removes every conflict
    (one QP per step instead of UPGrad's k).

    Host round trip: yes (the QP runs on the host).

    Args:
        pref_vector: Preference weights $p$ ($k$ finite values $\ge 0$, not all zero);
            default $1/k$ each.
        reg_eps: Extra ridge on the trace-normalized Gram matrix (default 0: exact).

    Example:
        >>> import torch
        >>> from mograd.weightings import DualProj
        >>> gram = torch.tensor([[1.0, -0.8], [-0.8, 1.0]], dtype=torch.float64)
        >>> w = DualProj()(gram)
        >>> bool((gram @ w >= -1e-12).all()), bool((w >= 0.5).all())
        (True, True)
    """

    def _project(self, gn: np.ndarray, p: np.ndarray, well_conditioned: bool) -> np.ndarray:
        f = None if well_conditioned else self._factor(gn)
        return project_dual_cone(gn, p, self.reg_eps, f, well_conditioned=well_conditioned)

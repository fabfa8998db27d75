"""Aligned-MTL: weights that make the gradient system orthogonal with equal magnitudes.

Senushkin et al., "Independent Component Alignment for Multi-Task Learning", CVPR 2023
(Algorithm 1). See ``docs/weightings.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from ._base import Weighting
from ._util import check_pref, from_host, nan_weights, pref_array, to_host

__all__ = ["AlignedMTL"]

ScaleMode = Literal["min", "median", "rmse"]
_SCALE_MODES = ("min", "median", "rmse")


class AlignedMTL(Weighting):
    r"""Aligned-MTL (Senushkin et al. 2023): align the principal components of the gradients.

    With the eigendecomposition $G = V \operatorname{diag}(\lambda) V^\top$ restricted to the
    $r$ eigenvalues above $k \, \varepsilon \max_i \lambda_i$ ($\varepsilon$ the machine
    epsilon of the dtype; $r$ is the rank), the balance transformation
    $B = \sqrt{s} \, V \operatorname{diag}(\lambda)^{-1/2} V^\top$ makes the transformed
    gradients $B^\top J$ orthogonal with equal norms $\sqrt{s}$, $s$ being the smallest kept
    eigenvalue (``"min"``, the paper), their lower median (``"median"``) or their mean
    (``"rmse"``). The weights are $w = B p$ for the preference vector $p$. A zero Gram matrix
    gives $w = p$.

    When to use it: losses with conflicting and dominating gradients; the update's
    condition number is 1 by construction, and the weights are invariant to the scale of
    the Gram matrix.

    Host round trip: yes (an eigendecomposition in float64 on the host).

    Args:
        pref_vector: Preference weights $p$ ($k$ finite values $\ge 0$, not all zero);
            default $1/k$ each.
        scale_mode: ``"min"`` (default), ``"median"`` or ``"rmse"``.

    Example:
        >>> import torch
        >>> from mograd.weightings import AlignedMTL
        >>> gram = torch.tensor([[4.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
        >>> AlignedMTL()(gram)
        tensor([0.2500, 0.5000], dtype=torch.float64)
    """

    host_sync = True

    def __init__(
        self,
        pref_vector: Sequence[float] | torch.Tensor | None = None,
        scale_mode: ScaleMode = "min",
    ) -> None:
        self.pref_vector = check_pref(pref_vector)
        if scale_mode not in _SCALE_MODES:
            raise ValueError(f"scale_mode must be one of {_SCALE_MODES}, got {scale_mode!r}")
        self.scale_mode: ScaleMode = scale_mode

    def weigh(self, gram: torch.Tensor, losses: torch.Tensor | None) -> torch.Tensor:
        g = to_host(gram)
        if g is None:
            return nan_weights(gram)
        k = g.shape[0]
        p = pref_array(self.pref_vector, k, "AlignedMTL")
        lam, vec = np.linalg.eigh(g)
        top = float(lam.max())
        keep = lam > k * torch.finfo(gram.dtype).eps * top
        if not top > 0 or not keep.any():
            return from_host(p, gram)
        lam, vec = lam[keep], vec[:, keep]
        if self.scale_mode == "min":
            s = float(lam.min())
        elif self.scale_mode == "median":
            s = float(np.sort(lam)[(lam.size - 1) // 2])
        else:
            s = float(lam.mean())
        b = (vec * np.sqrt(s / lam)) @ vec.T
        return from_host(b @ p, gram)

    def __repr__(self) -> str:
        pref = None if self.pref_vector is None else list(self.pref_vector)
        return f"AlignedMTL(pref_vector={pref!r}, scale_mode={self.scale_mode!r})"

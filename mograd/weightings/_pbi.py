"""PBI: penalty-based boundary intersection, distance along a preference ray plus a penalty.

Zhang & Li, "MOEA/D: A Multiobjective Evolutionary Algorithm Based on Decomposition", IEEE
TEVC 2007 (Section III.C). See ``docs/weightings.md``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .._checks import check_number
from ._base import LossWeighting
from ._util import check_pref, check_reals, loss_vector, nan_guard

__all__ = ["PBI"]

#: Relative smoothing of the distance to the ray (see :class:`PBI`).
_SMOOTH = 1e-6


class PBI(LossWeighting):
    r"""Penalty-based boundary intersection (PBI; Zhang & Li 2007), a loss-level weighting.

    With the unit preference direction $\hat w = p / \lVert p \rVert$ (default $p_i = 1/k$)
    and the ideal point $z$ (default 0), $f = L - z$ splits into $d_1 = f^\top \hat w$ along
    the ray and $d_2 = \lVert f - d_1 \hat w \rVert$ off it, and $S = d_1 + \theta d_2$; so

    $$
    c = \hat w + \theta \, (f - d_1 \hat w) / d_2,
    $$

    where $d_2$ is smoothed to
    $\sqrt{\lVert f - d_1 \hat w \rVert^2 + (10^{-6} \lVert f \rVert)^2}$: its gradient is
    undefined on the ray, where rounding would otherwise pick a random direction (TorchJD
    adds an absolute $10^{-12}$ under the square root; this one is relative, so that the
    weights do not depend on the scale of the losses). $c$ may have negative entries: PBI
    pulls the losses towards the ray, increasing a loss that is ahead of it.

    When to use it: reach the Pareto point on a chosen preference ray (one run per ray to
    trace a front).

    Cost: one backward pass (``needs_gram = False``). Host round trip: no. Stateless.

    Args:
        theta: Penalty $\theta \ge 0$ (the paper uses 5).
        pref_vector: $p$ ($k$ finite values $\ge 0$, not all zero).
        reference: The ideal point $z$ ($k$ finite values).

    Example:
        >>> import torch
        >>> from mograd.weightings import PBI
        >>> PBI(theta=5.0)(None, torch.tensor([1.0, 1.0]))  # on the ray: c = w^
        tensor([0.7071, 0.7071])
    """

    def __init__(
        self,
        theta: float = 5.0,
        pref_vector: Sequence[float] | torch.Tensor | None = None,
        reference: Sequence[float] | torch.Tensor | None = None,
    ) -> None:
        self.theta = check_number("theta", theta, nonnegative=True)
        self.pref_vector = check_pref(pref_vector)
        self.reference = check_reals("reference", reference)

    def weigh_losses(self, losses: torch.Tensor) -> torch.Tensor:
        k = losses.shape[0]
        p = loss_vector(self.pref_vector, k, losses, "PBI", "pref_vector")
        p = torch.ones_like(losses) if p is None else p
        direction = p / p.norm()
        z = loss_vector(self.reference, k, losses, "PBI", "reference")
        f = losses if z is None else losses - z
        perp = f - (f @ direction) * direction
        d2 = torch.sqrt(perp @ perp + (_SMOOTH * f.norm()) ** 2)
        unit = perp / torch.where(d2 > 0, d2, torch.ones_like(d2))
        return nan_guard(direction + self.theta * unit, losses)

    def __repr__(self) -> str:
        pref = None if self.pref_vector is None else list(self.pref_vector)
        ref = None if self.reference is None else list(self.reference)
        return f"PBI(theta={self.theta:g}, pref_vector={pref!r}, reference={ref!r})"

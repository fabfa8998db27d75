"""GLS: the geometric loss strategy, the geometric mean of the losses.

Chennupati, Sistu, Yogamani, Rawashdeh, "MultiNet++: Multi-Stream Feature Aggregation and
Geometric Loss Strategy for Multi-Task Learning", CVPR Workshops 2019 (eq. 2). See
``docs/weightings.md``.
"""

from __future__ import annotations

import torch

from ._base import LossWeighting
from ._util import nan_guard

__all__ = ["GLS"]


class GLS(LossWeighting):
    r"""Geometric loss strategy (GLS; Chennupati et al. 2019), a loss-level weighting.

    The scalarized loss is the geometric mean $S = \big(\prod_i L_i\big)^{1/k}$, so
    $c_i = S / (k L_i)$: each loss is weighed by the inverse of its value, a scale-free
    balance (multiplying one loss by a constant does not change the update's direction).
    Defined for positive losses: a zero or negative loss gives NaN weights (the gradient of
    the geometric mean is undefined there), which the optimizer's ``nonfinite=`` policy
    handles.

    When to use it: positive losses of different scales; no parameters, no state.

    Cost: one backward pass (``needs_gram = False``). Host round trip: no.

    Example:
        >>> import torch
        >>> from mograd.weightings import GLS
        >>> GLS()(None, torch.tensor([1.0, 4.0]))
        tensor([1.0000, 0.2500])
    """

    def weigh_losses(self, losses: torch.Tensor) -> torch.Tensor:
        k = losses.shape[0]
        logs = torch.log(losses)
        c = torch.exp(logs.mean() - logs) / k
        positive = (losses > 0).all()
        return nan_guard(torch.where(positive, c, torch.full_like(c, float("nan"))), losses)

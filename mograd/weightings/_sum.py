"""Sum: all weights one, the gradient of the summed losses (linear scalarization).

As TorchJD's ``Sum``. See ``docs/weightings.md``.
"""

from __future__ import annotations

import torch

from ._base import Weighting
from ._util import nan_guard

__all__ = ["Sum"]


class Sum(Weighting):
    r"""Weights $w_i = 1$: the update is the gradient of $\sum_i L_i$.

    $k$ times :class:`~mograd.weightings.Mean`. Tensor operations only: no host
    synchronization. A Gram matrix with a NaN or infinite entry gives NaN weights.

    When to use it: the plain multi-task baseline whose learning rate was tuned on the summed
    loss.

    Example:
        >>> import torch
        >>> from mograd.weightings import Sum
        >>> Sum()(torch.eye(3))
        tensor([1., 1., 1.])
    """

    host_sync = False

    def weigh(self, gram: torch.Tensor, losses: torch.Tensor | None) -> torch.Tensor:
        ones = torch.ones(gram.shape[0], dtype=gram.dtype, device=gram.device)
        return nan_guard(ones, gram)

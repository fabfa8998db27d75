"""IMTL-L: the loss-balancing half of impartial multi-task learning, learned loss scales.

Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021 (Section 3.1, eq. 1). See
``docs/weightings.md``.
"""

from __future__ import annotations

import torch

from ._base import LossWeighting
from ._learned import Learned
from ._util import all_finite, where_finite

__all__ = ["IMTLL"]


class IMTLL(Learned, LossWeighting):
    r"""Impartial multi-task learning, loss balance (IMTL-L; Liu et al. 2021).

    With a learned scale parameter $s_i$ per loss, the scalarized loss is

    $$
    S = \sum_i \big(e^{s_i} L_i - s_i\big),
    $$

    so $c_i = e^{s_i}$; the $s_i$ take, at every call after $c$ is computed, one Adam
    step on $\partial S / \partial s_i = e^{s_i} L_i - 1$ (its optimum makes every scaled loss
    $e^{s_i} L_i$ equal to 1). $S$ is twice UW's objective at $s \to -s$: IMTL-L and
    :class:`~mograd.weightings.UW` share their optimum and differ by a factor 2 in the
    weights and the sign of the parameter. Positive losses are assumed (the paper's).

    State, checkpointing and non-finite rule as :class:`~mograd.weightings.UW`.

    When to use it: like UW; its scaled losses all tend to 1, which makes it the loss half
    of the hybrid :class:`~mograd.weightings.IMTL`.

    Cost: one backward pass (``needs_gram = False``). Host round trip: no.

    Args:
        lr: Adam learning rate of the scales ($\ge 0$).
        init: Initial scale parameter (0: the plain sum).

    Example:
        >>> import torch
        >>> from mograd.weightings import IMTLL
        >>> IMTLL()(None, torch.tensor([1.0, 4.0]))
        tensor([1., 1.])
    """

    def __init__(self, lr: float = 1e-3, init: float = 0.0) -> None:
        Learned.__init__(self, lr, init)

    def weigh_losses(self, losses: torch.Tensor) -> torch.Tensor:
        s = self.params(losses.shape[0], losses.device)
        c = torch.exp(s)
        ok = all_finite(losses)
        self.learn(c * losses - 1.0, ok)
        return where_finite(ok, c)

    def __repr__(self) -> str:
        return f"IMTLL(lr={self.lr:g}, init={self.init:g})"

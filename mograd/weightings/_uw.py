"""UW: uncertainty weighting, each loss weighed by a learned homoscedastic variance.

Kendall, Gal, Cipolla, "Multi-Task Learning Using Uncertainty to Weigh Losses for Scene
Geometry and Semantics", CVPR 2018 (eq. 7, with the log-variance of Section 3.2). See
``docs/weightings.md``.
"""

from __future__ import annotations

import torch

from ._base import LossWeighting
from ._learned import Learned
from ._util import all_finite, where_finite

__all__ = ["UW"]


class UW(Learned, LossWeighting):
    r"""Uncertainty weighting (UW; Kendall et al. 2018), a loss-level weighting.

    With a learned log-variance $s_i = \log \sigma_i^2$ per loss, the scalarized loss is

    $$
    S = \sum_i \big(e^{-s_i} L_i / 2 + s_i / 2\big),
    $$

    so the coefficients are $c_i = \partial S / \partial L_i = e^{-s_i} / 2$. The $s_i$ are
    trained inside the weighting: at every call, after computing $c$ from the current $s$,
    one Adam step (learning rate ``lr``) on
    $\partial S / \partial s_i = (1 - e^{-s_i} L_i) / 2$, the gradient the joint training of
    the paper gives them (its optimum is $e^{s_i} = L_i$). They start at ``init`` (0: equal
    weights 1/2, as TorchJD; LibMTL starts at -0.5).

    The log-variances and Adam's state are the state (:meth:`state_dict`, float64 on the
    losses' device); a change of $k$ restarts them. Non-finite losses give NaN weights and
    leave the state unchanged.

    When to use it: losses of different units or noise levels (regression and
    classification together), balanced without tuning weights by hand.

    Cost: one backward pass (``needs_gram = False``). Host round trip: no.

    Args:
        lr: Adam learning rate of the log-variances ($\ge 0$; 0 freezes them).
        init: Initial log-variance (a finite number).

    Example:
        >>> import torch
        >>> from mograd.weightings import UW
        >>> uw = UW(lr=0.1)
        >>> uw(None, torch.tensor([1.0, 4.0]))  # exp(0) / 2
        tensor([0.5000, 0.5000])
        >>> c = uw(None, torch.tensor([1.0, 4.0]))  # the larger loss is down-weighted
        >>> bool(c[1] < c[0])
        True
    """

    def __init__(self, lr: float = 1e-3, init: float = 0.0) -> None:
        Learned.__init__(self, lr, init)

    def weigh_losses(self, losses: torch.Tensor) -> torch.Tensor:
        s = self.params(losses.shape[0], losses.device)
        c = 0.5 * torch.exp(-s)
        ok = all_finite(losses)
        self.learn(0.5 - c * losses, ok)
        return where_finite(ok, c)

    def __repr__(self) -> str:
        return f"UW(lr={self.lr:g}, init={self.init:g})"

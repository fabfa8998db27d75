"""STCH: smooth Tchebycheff scalarization, a log-sum-exp of the weighted losses.

Lin, Zhang, Zhang, Liu, Zhang, "Smooth Tchebycheff Scalarization for Multi-Objective
Optimization", ICML 2024 (arXiv:2402.19078), eq. 9. See ``docs/weightings.md``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .._checks import check_number
from ._base import LossWeighting
from ._util import check_pref, check_reals, loss_vector, nan_guard

__all__ = ["STCH"]


class STCH(LossWeighting):
    r"""Smooth Tchebycheff scalarization (STCH; Lin et al. 2024), a loss-level weighting.

    With preferences $\lambda$ (default $\lambda_i = 1/k$) and an ideal point $z$ (default 0),
    the scalarized loss is the smooth maximum

    $$
    S = \mu \log \sum_i \exp\big(\lambda_i (L_i - z_i) / \mu\big),
    $$

    which tends to the Tchebycheff $\max_i \lambda_i (L_i - z_i)$ as $\mu \to 0$; so
    $c = \lambda \odot \operatorname{softmax}\big(\lambda \odot (L - z) / \mu\big)$ (computed
    stably). MIB's Smooth-IB
    coefficients (paper eqs. 13-14) are the same soft maximum added to the weighted sum.

    When to use it: find a Pareto-optimal point that balances the worst (weighted) loss,
    at the cost of one backward pass; the losses should be on comparable scales (or shifted
    by ``reference``), since the soft maximum compares their raw values.

    Cost: one backward pass (``needs_gram = False``). Host round trip: no. Stateless.

    Args:
        mu: Smoothing $\mu > 0$ (the paper evaluates 0.01 to 1; smaller is closer to the
            maximum).
        pref_vector: $\lambda$ ($k$ finite values $\ge 0$, not all zero).
        reference: The ideal point $z$ ($k$ finite values).

    Example:
        >>> import torch
        >>> from mograd.weightings import STCH
        >>> STCH(mu=0.1)(None, torch.tensor([1.0, 2.0]))  # mostly the larger loss
        tensor([0.0033, 0.4967])
    """

    def __init__(
        self,
        mu: float = 0.1,
        pref_vector: Sequence[float] | torch.Tensor | None = None,
        reference: Sequence[float] | torch.Tensor | None = None,
    ) -> None:
        self.mu = check_number("mu", mu, positive=True)
        self.pref_vector = check_pref(pref_vector)
        self.reference = check_reals("reference", reference)

    def weigh_losses(self, losses: torch.Tensor) -> torch.Tensor:
        k = losses.shape[0]
        lam = loss_vector(self.pref_vector, k, losses, "STCH", "pref_vector")
        lam = torch.full_like(losses, 1.0 / k) if lam is None else lam
        z = loss_vector(self.reference, k, losses, "STCH", "reference")
        shifted = losses if z is None else losses - z
        c = lam * torch.softmax(lam * shifted / self.mu, dim=0)
        return nan_guard(c, losses)

    def __repr__(self) -> str:
        pref = None if self.pref_vector is None else list(self.pref_vector)
        ref = None if self.reference is None else list(self.reference)
        return f"STCH(mu={self.mu:g}, pref_vector={pref!r}, reference={ref!r})"

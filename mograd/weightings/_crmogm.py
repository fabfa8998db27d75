"""CR-MOGM: an exponential moving average of any weighting's weights across steps.

Zhou, Ye, Wang, Zhang, Liu, "On the Convergence of Stochastic Multi-Objective Gradient
Manipulation and Beyond", NeurIPS 2022 (the correlation-reduced CR-MOGM, eq. 7). See
``docs/weightings.md``.
"""

from __future__ import annotations

from typing import Any

import torch

from ._base import Weighting
from ._min_norm import MinNorm
from ._util import (
    all_finite,
    check_fraction,
    check_vector,
    clone_state,
    host_values,
    load_tensor_state,
)

__all__ = ["CRMOGM"]


class CRMOGM(Weighting):
    r"""Correlation-reduced stochastic multi-objective gradient manipulation (CR-MOGM).

    With $\hat w_t$ the weights of the wrapped weighting at step $t$, the weights are

    $$
    w_t = \alpha \, w_{t-1} + (1 - \alpha) \, \hat w_t,
    $$

    with $w_0$ = ``initial_weights``, or $\hat w_1$ when none is given (so that the first step
    returns the wrapped weighting's weights). The moving average reduces the correlation
    between the weights and the stochastic gradients that biases MGDA-type updates; the
    paper's Corollary 1 lets $\alpha$ grow to 1 as the learning rate decays (assign
    ``crmogm.alpha`` between steps). The wrapped weighting's ``host_sync`` and
    ``needs_losses`` carry over.

    The average is the state (:meth:`state_dict`, with the wrapped weighting's state under
    ``"inner"``); a change of $k$ restarts it. When the wrapped weights are not finite the
    result is NaN and the average is left unchanged.

    When to use it: around MGDA, PCGrad or CAGrad with small batches, where the weights
    jump from step to step.

    Args:
        weighting: The wrapped weighting (default :class:`~mograd.weightings.MinNorm`, MGDA).
        alpha: Weight $\alpha$ of the previous average, in $[0, 1]$ (0: no smoothing).
        initial_weights: $w_0$ ($k$ finite values $\ge 0$, not all zero) or ``None``.

    Example:
        >>> import torch
        >>> from mograd.weightings import CRMOGM, Constant
        >>> ema = CRMOGM(Constant([1.0, 0.0]), alpha=0.5, initial_weights=[0.0, 1.0])
        >>> ema(torch.eye(2)), ema(torch.eye(2))
        (tensor([0.5000, 0.5000]), tensor([0.7500, 0.2500]))
    """

    def __init__(
        self,
        weighting: Weighting | None = None,
        alpha: float = 0.9,
        initial_weights: list[float] | tuple[float, ...] | torch.Tensor | None = None,
    ) -> None:
        inner = MinNorm() if weighting is None else weighting
        if not isinstance(inner, Weighting) or not inner.needs_gram:
            raise ValueError(f"weighting must be a Gram-matrix Weighting, got {inner!r}")
        self.weighting = inner
        self.alpha = check_fraction("alpha", alpha)
        init = None if initial_weights is None else check_vector("initial_weights", initial_weights)
        self.initial_weights = init
        self._avg: torch.Tensor | None = None
        self._has = torch.zeros((), dtype=torch.bool)

    @property
    def host_sync(self) -> bool:  # type: ignore[override]
        """The wrapped weighting's."""
        return self.weighting.host_sync

    @property
    def needs_losses(self) -> bool:  # type: ignore[override]
        """The wrapped weighting's."""
        return self.weighting.needs_losses

    def weigh(self, gram: torch.Tensor, losses: torch.Tensor | None) -> torch.Tensor:
        w_hat = self.weighting(gram, losses)
        k = w_hat.shape[0]
        current = w_hat.detach().to(torch.float64)
        avg, has = (
            self._start(k, current)
            if self._avg is None or self._avg.shape[0] != k
            else (
                self._avg.to(current.device),
                self._has.to(current.device),
            )
        )
        prev = torch.where(has, avg, current)
        new = self.alpha * prev + (1.0 - self.alpha) * current
        ok = all_finite(current)
        self._avg, self._has = torch.where(ok, new, avg), has | ok
        return new.to(w_hat.dtype)

    def _start(self, k: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The average before the first step, and whether it is set (a 0-d bool tensor)."""
        if self.initial_weights is None:
            return torch.zeros_like(like), torch.zeros((), dtype=torch.bool, device=like.device)
        if len(self.initial_weights) != k:
            raise ValueError(
                f"CRMOGM has {len(self.initial_weights)} initial_weights but the Gram matrix "
                f"is {k} x {k}"
            )
        init = host_values(self.initial_weights, like)
        return init, torch.ones((), dtype=torch.bool, device=like.device)

    def state_dict(self) -> dict[str, Any]:
        """The average and whether it is set (``None`` before the first step), and the
        wrapped weighting's state."""
        avg = None if self._avg is None else clone_state(self._avg)
        has = None if self._avg is None else clone_state(self._has)
        return {"average": avg, "has_average": has, "inner": self.weighting.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        if not isinstance(state, dict) or "inner" not in state:
            raise ValueError(
                f"CRMOGM state must hold 'average', 'has_average' and 'inner', got {state!r}"
            )
        loaded = load_tensor_state("CRMOGM", state, ("average", "has_average"))
        self.weighting.load_state_dict(state["inner"])
        avg, has = loaded["average"], loaded["has_average"]
        self._avg = avg
        self._has = has if has is not None else torch.zeros((), dtype=torch.bool)

    def __repr__(self) -> str:
        init = None if self.initial_weights is None else list(self.initial_weights)
        return f"CRMOGM({self.weighting!r}, alpha={self.alpha:g}, initial_weights={init!r})"

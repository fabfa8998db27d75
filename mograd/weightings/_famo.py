"""FAMO: fast adaptive multitask optimization, balanced log-loss decrease from loss values.

Liu, Feng, Stone, Liu, "FAMO: Fast Adaptive Multitask Optimization", NeurIPS 2023
(Algorithm 1 and Section 3.3). See ``docs/weightings.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .._checks import check_number
from ._base import LossWeighting, check_loss_vector
from ._learned import Learned
from ._util import all_finite, check_reals, clone_state, loss_vector, where_finite

__all__ = ["FAMO"]


class FAMO(Learned, LossWeighting):
    r"""Fast adaptive multitask optimization (FAMO; Liu et al. 2023), a loss-level weighting.

    With task logits $\xi$ (learned, starting at 0), $z = \operatorname{softmax}(\xi)$ and the
    shifted losses $l_i = L_i - b_i + \epsilon$ ($b$ = ``min_losses``, $\epsilon$ = ``eps``),
    the scalarized loss is $S = \sum_i z_i \log l_i / \big(\sum_j z_j / l_j\big)$ (the
    normalizer held constant), so

    $$
    c_i = \frac{z_i / l_i}{\sum_j z_j / l_j},
    $$

    a convex combination whose update decreases every $\log L_i$ at about the same rate.
    After the model step, the logits learn from the observed decrease
    $\delta_i = \log l_i(\text{before}) - \log l_i(\text{after})$: one Adam step (``lr``,
    ``weight_decay``, the paper's 0.025 and 1e-3) on the gradient
    $J_{\operatorname{softmax}}(\xi)^\top \delta$ of $z^\top \delta$.

    Feeding the update. The paper recomputes the losses of the same batch after the step
    and calls :meth:`update` with them (one extra forward pass per step; exact). If
    :meth:`update` was not called before the next call, that call first runs the update with
    its own losses, the next batch's after the step (no extra forward pass; the difference
    of two batches adds noise to $\delta$, which the small ``lr`` averages out). The
    losses must stay above ``min_losses`` (positive with the default 0): otherwise the
    weights are NaN.

    The logits, Adam's state and the losses awaiting an update are the state
    (:meth:`state_dict`); a change of $k$ restarts it. Non-finite losses give NaN weights
    and no update.

    When to use it: many losses, where per-loss gradients are too expensive: FAMO's step
    costs the same as the summed loss.

    Cost: one backward pass (``needs_gram = False``; plus a forward pass if you call
    :meth:`update` with recomputed losses). Host round trip: no.

    Args:
        lr: Adam learning rate of the logits ($\ge 0$).
        weight_decay: Adam weight decay of the logits ($\ge 0$).
        min_losses: Lower bounds $b$ of the losses ($k$ finite values; default 0).
        eps: $\epsilon \ge 0$, added to the shifted losses.

    Example:
        >>> import torch
        >>> from mograd.weightings import FAMO
        >>> famo = FAMO()
        >>> famo(None, torch.tensor([1.0, 3.0]))  # z = 1/2: c_i proportional to 1 / L_i
        tensor([0.7500, 0.2500])
        >>> famo.update(torch.tensor([0.5, 2.9]))  # loss 0 fell faster: it gets less weight
        >>> c = famo(None, torch.tensor([0.5, 2.9]))
        >>> bool(c[0] < (1 / 0.5) / (1 / 0.5 + 1 / 2.9))  # below its value at z = 1/2
        True
    """

    def __init__(
        self,
        lr: float = 0.025,
        weight_decay: float = 1e-3,
        min_losses: Sequence[float] | torch.Tensor | None = None,
        eps: float = 1e-8,
    ) -> None:
        Learned.__init__(self, lr, 0.0, weight_decay)
        self.min_losses = check_reals("min_losses", min_losses)
        self.eps = check_number("eps", eps, nonnegative=True)
        self._prev: torch.Tensor | None = None  # losses awaiting their update

    def _shifted(self, losses: torch.Tensor) -> torch.Tensor:
        b = loss_vector(self.min_losses, losses.shape[0], losses, "FAMO", "min_losses")
        return (losses if b is None else losses - b) + self.eps

    def weigh_losses(self, losses: torch.Tensor) -> torch.Tensor:
        k = losses.shape[0]
        ok = all_finite(losses)
        prev = self._prev if self._prev is not None and self._prev.shape[0] == k else None
        if prev is not None:
            self._learn(prev, losses)  # update() was not called: use this batch's losses
        xi = self.params(k, losses.device)
        z = torch.softmax(xi, dim=0)
        shifted = self._shifted(losses)
        ratio = z / shifted
        c = ratio / ratio.sum()
        # non-finite losses leave the losses awaiting an update as they were
        self._prev = losses.clone() if prev is None else torch.where(ok, losses, prev)
        return where_finite(ok & (shifted > 0).all(), c)

    def update(self, new_losses: torch.Tensor) -> None:
        """Learn the logits from the losses of the same batch recomputed after the step.

        Args:
            new_losses: The $k$ loss values after the step (detached or not).

        Raises:
            ValueError: If the weighting was not called on a step since the last update, or
                the shape is wrong.
        """
        check_loss_vector(new_losses)
        if self._prev is None:
            raise ValueError("FAMO.update must follow a call of the weighting on a step")
        if new_losses.shape != self._prev.shape:
            raise ValueError(
                f"FAMO.update got {new_losses.shape[0]} losses for a step of {self._prev.shape[0]}"
            )
        self._learn(self._prev, new_losses.detach().to(self._prev.device, torch.float64))
        self._prev = None

    def _learn(self, before: torch.Tensor, after: torch.Tensor) -> None:
        delta = torch.log(self._shifted(before)) - torch.log(self._shifted(after))
        xi = self.params(after.shape[0], after.device)
        z = torch.softmax(xi, dim=0)
        grad = z * (delta - z @ delta)  # J_softmax^T delta
        self.learn(grad, all_finite(delta))

    def state_dict(self) -> dict[str, Any]:
        """The logits with Adam's state, and the losses awaiting an update (or ``None``)."""
        return {**Learned.state_dict(self), "pending": clone_state(self._prev)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        if not isinstance(state, dict) or "pending" not in state:
            raise ValueError(f"FAMO state must hold 'adam' and 'pending', got {state!r}")
        pending = state["pending"]
        if pending is not None and not isinstance(pending, torch.Tensor):
            raise ValueError(f"FAMO state['pending'] must be a tensor or None, got {pending!r}")
        Learned.load_state_dict(self, state)
        self._prev = clone_state(pending)

    def __repr__(self) -> str:
        b = None if self.min_losses is None else list(self.min_losses)
        return (
            f"FAMO(lr={self.lr:g}, weight_decay={self.weight_decay:g}, min_losses={b!r}, "
            f"eps={self.eps:g})"
        )

"""GradNorm: learned loss weights that balance the gradient norms at a shared layer.

Chen, Badrinarayanan, Lee, Rabinovich, "GradNorm: Gradient Normalization for Adaptive Loss
Balancing in Deep Multitask Networks", ICML 2018 (Section 3, eqs. 1-2 and Algorithm 1). See
``docs/weightings.md``.
"""

from __future__ import annotations

from typing import Any

import torch

from .._checks import check_number
from ._base import Weighting
from ._learned import Learned
from ._util import all_finite, clone_state, load_tensor_state, nan_guard

__all__ = ["GradNorm"]


class GradNorm(Learned, Weighting):
    r"""Gradient normalization (GradNorm; Chen et al. 2018).

    The loss weights $w$ (learned, starting at 1, summing to $k$) weigh the losses,
    $c = w$. With $\lVert g_i \rVert$ the gradient norm of loss $i$ at the shared layer
    ($\sqrt{G_{ii}}$: restrict $G$ to that layer with the optimizer's ``shared_params=``),
    $G_W^{(i)} = w_i \lVert g_i \rVert$, their mean $\bar G_W$, the inverse training rates
    $r_i = \tilde L_i / \operatorname{mean}(\tilde L)$ with $\tilde L_i = L_i / L_i(0)$
    ($L(0)$ the losses of the first step), the weights minimize
    $\sum_i \lvert G_W^{(i)} - \bar G_W \, r_i^\alpha \rvert$ (the target held constant): at
    every call, after $c$ is taken, one Adam step (``lr``) on the gradient
    $\operatorname{sign}\big(G_W^{(i)} - \bar G_W \, r_i^\alpha\big) \lVert g_i \rVert$, then
    $w \leftarrow k \max(w, 0) / \sum_i \max(w_i, 0)$.

    The weights, Adam's state and $L(0)$ are the state (:meth:`state_dict`, float64 on
    the Gram matrix's device); a change of $k$ restarts them. A non-finite $G$ or loss
    gives NaN weights and leaves the state unchanged.

    When to use it: losses whose gradients at the shared layers differ in magnitude and
    whose training rates should stay balanced ($\alpha$ sets how strongly).

    Cost: the per-loss gradients of the shared layer (a Gram-matrix weighting with
    ``needs_losses``). Host round trip: no (tensor operations).

    Args:
        alpha: Restoring-force asymmetry $\alpha \ge 0$ (the paper: 0.12 to 1.5).
        lr: Adam learning rate of the weights ($\ge 0$).

    Example:
        >>> import torch
        >>> from mograd.weightings import GradNorm
        >>> gn = GradNorm(lr=0.1)
        >>> gram = torch.diag(torch.tensor([4.0, 1.0], dtype=torch.float64))
        >>> losses = torch.tensor([1.0, 1.0], dtype=torch.float64)
        >>> gn(gram, losses)
        tensor([1., 1.], dtype=torch.float64)
        >>> w = gn(gram, losses)  # the larger gradient's loss is down-weighted
        >>> bool(w[0] < 1.0 < w[1]), float(w.sum())
        (True, 2.0)
    """

    host_sync = False
    needs_losses = True

    def __init__(self, alpha: float = 1.5, lr: float = 1e-3) -> None:
        Learned.__init__(self, lr, 1.0)
        self.alpha = check_number("alpha", alpha, nonnegative=True)
        self._initial: torch.Tensor | None = None  # the first finite step's losses
        self._has = torch.zeros((), dtype=torch.bool)

    def weigh(self, gram: torch.Tensor, losses: torch.Tensor | None) -> torch.Tensor:
        assert losses is not None
        k = gram.shape[0]
        values = losses.detach().to(device=gram.device, dtype=torch.float64)
        if self._adam is None or self._adam["param"].shape[0] != k or self._initial is None:
            self._initial = torch.zeros_like(values)
            self._has = torch.zeros((), dtype=torch.bool, device=gram.device)
        w = self.params(k, gram.device)
        ok = all_finite(gram, values)
        has = self._has.to(gram.device)
        initial = torch.where(has, self._initial.to(gram.device), values)
        norms = gram.detach().diagonal().to(torch.float64).clamp_min(0.0).sqrt()
        gw = w * norms
        rel = torch.where(initial != 0, values / initial, torch.ones_like(values))
        target = gw.mean() * (rel / rel.mean()) ** self.alpha
        self.learn(torch.sign(gw - target) * norms, ok)
        self._renormalize(ok)
        self._initial = torch.where(has | ~ok, self._initial.to(gram.device), values)
        self._has = has | ok
        return nan_guard(w.to(gram.dtype), gram, values)

    def _renormalize(self, ok: torch.Tensor) -> None:
        assert self._adam is not None
        p = self._adam["param"]
        pos = p.clamp_min(0.0)
        total = pos.sum()
        k = p.shape[0]
        new = torch.where(total > 0, k * pos / total, torch.ones_like(p))
        self._adam = {**self._adam, "param": torch.where(ok, new, p)}

    def state_dict(self) -> dict[str, Any]:
        """The weights with Adam's state, and the first step's losses (or ``None``)."""
        return {
            **Learned.state_dict(self),
            "initial_losses": clone_state(self._initial),
            "has_initial": clone_state(self._has),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        loaded = load_tensor_state("GradNorm", state, ("initial_losses", "has_initial"))
        Learned.load_state_dict(self, state)
        has = loaded["has_initial"]
        self._initial = loaded["initial_losses"]
        self._has = torch.zeros((), dtype=torch.bool) if has is None else has

    def __repr__(self) -> str:
        return f"GradNorm(alpha={self.alpha:g}, lr={self.lr:g})"

"""IMTL: impartial multi-task learning, IMTL-G on the gradients of IMTL-L's scaled losses.

Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021 (Algorithm 1, the hybrid
IMTL). See ``docs/weightings.md``.
"""

from __future__ import annotations

import torch

from ._base import Weighting
from ._imtlg import IMTLG
from ._learned import Learned
from ._util import all_finite, nan_guard

__all__ = ["IMTL"]


class IMTL(Learned, Weighting):
    r"""Impartial multi-task learning, the hybrid of loss and gradient balance (IMTL).

    The losses are scaled by learned $e^{s_i}$ as in :class:`~mograd.weightings.IMTLL`
    (one Adam step per call on $e^{s_i} L_i - 1$), and the gradients of the scaled losses,
    whose Gram matrix is $D G D$ with $D = \operatorname{diag}(e^{s})$, are balanced by
    :class:`~mograd.weightings.IMTLG`: with $\alpha$ = ``IMTLG()(D G D)``, the coefficients on
    the raw gradients are $c_i = \alpha_i e^{s_i}$. In the paper the gradient balance acts on
    the shared parameters (or the shared representation: restrict $G$ with the optimizer's
    ``shared_params=``) while each task's own parameters take its scaled loss; mograd
    applies $c$ to every parameter, which for a task-specific parameter (reached by one
    loss only) is the scaled loss times $\alpha_i$.

    State, checkpointing and non-finite rule as :class:`~mograd.weightings.UW`.

    When to use it: losses of different scales and gradients of different magnitudes,
    balanced without hyperparameters.

    Cost: the per-loss gradients of the shared parameters (a Gram-matrix weighting with
    ``needs_losses``). Host round trip: yes (IMTL-G's eigendecomposition).

    Args:
        lr: Adam learning rate of the scales ($\ge 0$).

    Example:
        >>> import torch
        >>> from mograd.weightings import IMTL
        >>> gram = torch.tensor([[4.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
        >>> IMTL()(gram, torch.tensor([1.0, 1.0], dtype=torch.float64))  # s = 0: IMTL-G
        tensor([0.3333, 0.6667], dtype=torch.float64)
    """

    host_sync = True
    needs_losses = True

    def __init__(self, lr: float = 1e-3) -> None:
        Learned.__init__(self, lr, 0.0)
        self._imtlg = IMTLG()

    def weigh(self, gram: torch.Tensor, losses: torch.Tensor | None) -> torch.Tensor:
        assert losses is not None
        k = gram.shape[0]
        values = losses.detach().to(device=gram.device, dtype=torch.float64)
        scale = torch.exp(self.params(k, gram.device))
        scaled = (gram.detach().to(torch.float64) * torch.outer(scale, scale)).to(gram.dtype)
        alpha = self._imtlg(scaled).to(torch.float64)
        self.learn(scale * values - 1.0, all_finite(gram, values))
        return nan_guard((alpha * scale).to(gram.dtype), gram, values)

    def __repr__(self) -> str:
        return f"IMTL(lr={self.lr:g})"

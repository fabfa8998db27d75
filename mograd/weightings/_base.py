"""The :class:`Weighting` protocol: a pure map from the k x k Gram matrix to k weights.

A weighting sees only the Gram matrix ``G = J J^T`` of the per-loss gradients (and, when it
asks for them, the k loss values). It never touches parameters or autograd: the optimizer
(:mod:`mograd.optimizer`) forms ``G`` and applies the weights as
``.grad = sum_i w_i grad L_i``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from .._checks import check_gram

__all__ = ["Weighting", "check_gram"]


class Weighting:
    """Base class of the weightings: ``weighting(gram, losses=None) -> weights``.

    Subclasses implement :meth:`weigh`. Calling the instance validates the input (shape and
    dtype only: no host synchronization) and returns weights of shape ``(k,)`` on the Gram
    matrix's device and dtype. The combined gradient is ``sum_i w_i g_i``.

    Class attributes:
        host_sync: ``True`` when computing the weights reads the device (a QP or an
            iterative solve on the host). ``False`` for weightings made of tensor operations
            only (``Mean``, ``Constant``, ``MinNorm`` for k <= 2).
        needs_losses: ``True`` when :meth:`weigh` uses the loss values.

    Stateful weightings (random draws, warm starts) keep their state in :meth:`state_dict`,
    which the optimizer stores in its own ``state_dict`` so that a resumed run is
    bit-identical.
    """

    host_sync: ClassVar[bool] = True
    needs_losses: ClassVar[bool] = False

    def __call__(self, gram: torch.Tensor, losses: torch.Tensor | None = None) -> torch.Tensor:
        check_gram(gram, losses)
        if self.needs_losses and losses is None:
            raise ValueError(
                f"{type(self).__name__} needs the loss values: call it as w(gram, losses)"
            )
        return self.weigh(gram, losses)

    def weigh(self, gram: torch.Tensor, losses: torch.Tensor | None) -> torch.Tensor:
        """Compute the weights from a validated Gram matrix (override this)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """The weighting's mutable state (empty for stateless weightings)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        if state:
            raise ValueError(f"{type(self).__name__} has no state, got keys {sorted(state)}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

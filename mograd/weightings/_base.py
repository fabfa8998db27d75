"""The :class:`Weighting` protocol: a pure map from the k x k Gram matrix to k weights.

A weighting sees only the Gram matrix ``G = J J^T`` of the per-loss gradients (and, when it
asks for them, the k loss values). It never touches parameters or autograd: the optimizer
(:mod:`mograd.optimizer`) forms ``G`` and applies the weights as
``.grad = sum_i w_i grad L_i``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

__all__ = ["Weighting", "check_gram"]


def check_gram(gram: object, losses: object = None) -> None:
    """Validate a Gram matrix (and optional loss values) without a host synchronization.

    Args:
        gram: The candidate ``(k, k)`` Gram matrix.
        losses: Optional loss values, shape ``(k,)``.

    Raises:
        TypeError: If ``gram`` (or ``losses``) is not a tensor.
        ValueError: If ``gram`` is not a non-empty square floating matrix, or ``losses`` has
            the wrong shape.
    """
    if not isinstance(gram, torch.Tensor):
        raise TypeError(f"gram must be a torch.Tensor, got {type(gram).__name__}")
    if gram.dim() != 2 or gram.shape[0] != gram.shape[1] or gram.shape[0] == 0:
        raise ValueError(
            f"gram must be a non-empty square k x k matrix, got shape {tuple(gram.shape)}"
        )
    if not gram.is_floating_point():
        raise ValueError(f"gram must have a floating dtype, got {gram.dtype}")
    if losses is not None:
        if not isinstance(losses, torch.Tensor):
            raise TypeError(f"losses must be a torch.Tensor, got {type(losses).__name__}")
        if tuple(losses.shape) != (gram.shape[0],):
            raise ValueError(
                f"losses must have shape ({gram.shape[0]},) to match gram, "
                f"got {tuple(losses.shape)}"
            )


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

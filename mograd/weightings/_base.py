r"""The :class:`Weighting` protocol and its loss-level kind, :class:`LossWeighting`.

A :class:`Weighting` maps the $k \times k$ Gram matrix $G = J J^\top$ of the per-loss gradients
(and, when it asks for them, the $k$ loss values) to $k$ weights. A :class:`LossWeighting` (a
"scalarizer") needs only the loss values: its weights are the coefficients $c_i$ of
$\sum_i c_i L_i$, whose gradient is the gradient of its scalarized loss, so one backward pass
of that sum is the whole step. Neither touches parameters or autograd: the optimizer
(:mod:`mograd.optimizer`) forms what the weighting needs and applies the weights, writing
$\sum_i w_i \nabla L_i$ into ``.grad``.

The contract on non-finite input is the same for every weighting: a Gram matrix (or loss
vector, where used) with a NaN or infinite entry gives all-NaN weights of shape ``(k,)``,
without raising and without an extra host synchronization, and leaves the weighting's state
as it was.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from .._checks import check_gram
from ._util import clone_state

__all__ = ["LossWeighting", "Weighting", "check_gram", "check_loss_vector"]


def check_loss_vector(losses: object) -> None:
    """Validate a ``(k,)`` vector of loss values (shape and dtype only: no host sync).

    Raises:
        TypeError: If ``losses`` is not a tensor.
        ValueError: If it is not a non-empty 1-d floating tensor.
    """
    if not isinstance(losses, torch.Tensor):
        raise TypeError(f"losses must be a torch.Tensor, got {type(losses).__name__}")
    if losses.dim() != 1 or losses.shape[0] == 0:
        raise ValueError(f"losses must be a non-empty 1-d tensor (k,), got {tuple(losses.shape)}")
    if not losses.is_floating_point():
        raise ValueError(f"losses must have a floating dtype, got {losses.dtype}")


class Weighting:
    r"""Base class of the weightings: ``weighting(gram, losses=None) -> weights``.

    Subclasses implement :meth:`weigh`. Calling the instance validates the input (shape and
    dtype only: no host synchronization) and returns weights of shape ``(k,)`` on the Gram
    matrix's device and dtype. The combined gradient is $\sum_i w_i g_i$.

    Class attributes:
        host_sync: ``True`` when computing the weights reads the device (a QP or an
            iterative solve on the host). ``False`` for weightings made of tensor operations
            only (``Mean``, ``Constant``, ``MinNorm`` for $k \le 2$, ...).
        needs_gram: ``True`` (every Gram-matrix weighting); ``False`` for the loss-level
            :class:`LossWeighting`, for which the optimizer runs a single backward pass.
        needs_losses: ``True`` when :meth:`weigh` uses the loss values.

    Stateful weightings (random draws, warm starts, moving averages, learned parameters)
    keep their state in :meth:`state_dict`, which the optimizer stores in its own
    ``state_dict`` so that a resumed run is bit-identical; they survive ``copy.deepcopy``.
    """

    host_sync: ClassVar[bool] = True
    needs_gram: ClassVar[bool] = True
    needs_losses: ClassVar[bool] = False

    def __call__(self, gram: torch.Tensor, losses: torch.Tensor | None = None) -> torch.Tensor:
        if gram is None:
            raise ValueError(
                f"{type(self).__name__} needs the Gram matrix (gram=None is only for loss-level "
                "weightings, whose needs_gram is False)"
            )
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

    def _snapshot(self) -> object:
        """Internal: what :meth:`_restore` needs to undo the state changes of a step that the
        optimizer's guard rejects (a copy of :meth:`state_dict`; subclasses may keep less)."""
        return clone_state(self.state_dict())

    def _restore(self, saved: object) -> None:
        """Internal: undo the state changes since :meth:`_snapshot` returned ``saved``."""
        self.load_state_dict(saved)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class LossWeighting(Weighting):
    r"""A weighting of the loss values alone (a scalarizer): ``c = weighting(None, losses)``.

    The returned coefficients are the gradient of the method's scalarized loss $S(L)$ with
    respect to the loss values, $c_i = \partial S / \partial L_i$ at the current values, so
    that $\sum_i c_i \nabla L_i = \nabla S$: one backward pass of $\sum_i c_i L_i$ gives the
    method's update. Subclasses implement :meth:`weigh_losses`. A Gram matrix may be passed (then it
    fixes the output's device and dtype and a non-finite one gives NaN weights) but is never
    used.

    Class attributes:
        needs_gram: ``False``.
        needs_losses: ``True`` (the loss values are required).
        host_sync: ``False``: every built-in loss weighting is tensor operations only.

    Example:
        >>> import torch
        >>> from mograd.weightings import GLS
        >>> GLS()(None, torch.tensor([1.0, 4.0]))  # grad of sqrt(L1 L2)
        tensor([1.0000, 0.2500])
    """

    host_sync: ClassVar[bool] = False
    needs_gram: ClassVar[bool] = False
    needs_losses: ClassVar[bool] = True

    def __call__(
        self, gram: torch.Tensor | None = None, losses: torch.Tensor | None = None
    ) -> torch.Tensor:
        if gram is not None:
            check_gram(gram, losses)
        if losses is None:
            if self.needs_losses or gram is None:
                raise ValueError(
                    f"{type(self).__name__} needs the loss values: call it as w(None, losses)"
                )
        else:
            check_loss_vector(losses)
        return self.weigh(gram, losses)

    def weigh(self, gram: torch.Tensor | None, losses: torch.Tensor | None) -> torch.Tensor:
        """The coefficients, on ``gram``'s device and dtype when given, else the losses'."""
        assert losses is not None
        values = losses.detach()
        c = self.weigh_losses(values.double())
        like = gram if gram is not None else values
        dtype = like.dtype if like.dtype in (torch.float32, torch.float64) else torch.float32
        c = c.to(device=like.device, dtype=dtype)
        if gram is not None:
            c = c + (gram.detach() * 0).sum().to(dtype)  # NaN for a non-finite gram, no sync
        return c

    def weigh_losses(self, losses: torch.Tensor) -> torch.Tensor:
        """The coefficients from the float64 loss values (override this)."""
        raise NotImplementedError

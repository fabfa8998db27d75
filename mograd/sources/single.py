r"""$k = 1$: the step is exactly ``loss.backward()``.

After ``zero_grad`` (no leaf holds a ``.grad`` or a post-accumulate-grad hook) and outside
``torch.distributed``, one plain ``torch.autograd.backward`` writes every ``.grad`` itself,
bit for bit what ``loss.backward()`` writes (sparse gradients stay sparse and uncoalesced);
a step the guard rejects clears them again, which restores the state exactly. Otherwise the
gradients are formed with ``torch.autograd.grad``, averaged over the process group, and
added like autograd's own accumulation.
"""

from __future__ import annotations

from typing import Any

import torch

from .. import _distributed as distributed
from ..gramian import accumulate_grad, gram_dtype, row_dtype
from .base import (
    Collected,
    Step,
    Update,
    merge_by_leaf,
    sums_finite,
    truly_finite,
    untouched,
    wide,
)

__all__ = ["SingleCollected", "collect_single"]


def collect_single(step: Step, *, accumulating: bool = False) -> SingleCollected:
    """The one backward pass of ``losses[0]``."""
    loss = step.losses[0]
    leaves = [*step.params, *step.extras]
    if not accumulating and not step.distributed and (not step.checked or untouched(leaves)):
        torch.autograd.backward(loss, retain_graph=step.retain_graph)
        return SingleCollected(step, leaves, [leaf.grad for leaf in leaves], written=True)
    grads = torch.autograd.grad(loss, leaves, retain_graph=step.retain_graph, allow_unused=True)
    return SingleCollected(step, leaves, list(grads), written=False)


class SingleCollected(Collected):
    """The gradient of the one loss on every leaf it reaches (already in ``.grad`` when
    ``written``)."""

    accumulates = True

    def __init__(
        self,
        step: Step,
        leaves: list[torch.Tensor],
        grads: list[torch.Tensor | None],
        *,
        written: bool,
    ) -> None:
        super().__init__(step)
        self.leaves, self.grads, self.written = leaves, grads, written
        self.n_params = len(step.params)
        self.dtype = step.values.dtype

    def reduce(self, group: Any) -> None:
        n = self.n_params
        params = self.leaves[:n]
        dtype = row_dtype(params[0]) if params else torch.float32
        self.grads[:n] = distributed.mean_gradients(params, self.grads[:n], dtype, group)
        values = self.values.clone()
        self.values = distributed.mean_(values, group)

    def gram(self, exact: bool = False) -> torch.Tensor:
        r"""$\lVert g \rVert^2$ ($1 \times 1$) on the shared parameters, in float64
        (``exact``: also summed in float64, so that gradients near the float32 maximum give a
        finite norm)."""
        acc = gram_dtype(self.values.device)
        shared = [g for g in self.grads[: self.step.n_shared] if g is not None]
        if not shared:
            return torch.zeros((1, 1), dtype=acc, device=self.values.device)
        # exact: norms accumulated in float64 (finite for any finite gradient; slower)
        dtype = acc if exact else None
        norms = torch.stack(
            [torch.linalg.vector_norm(wide(g), dtype=dtype).to(acc) for g in shared]
        )
        out: torch.Tensor = torch.linalg.vector_norm(norms).square().reshape(1, 1)
        return out

    def finite(self) -> torch.Tensor | None:
        return sums_finite(self.grads[self.step.n_shared :])

    def problem(self) -> str | None:
        return None if truly_finite(self.grads) else "non-finite gradient of losses[0]"

    def prepare(self, coefficients: torch.Tensor) -> Update:
        return _SingleUpdate(self)  # c = 1: the gradient itself, bit for bit

    def add_(self, other: Collected) -> None:
        assert isinstance(other, SingleCollected)
        self.values = self.values + other.values.to(self.values.dtype)
        merge_by_leaf(self.leaves, self.grads, other.leaves, other.grads)

    def discard(self) -> None:
        if self.written:
            for leaf in self.leaves:
                leaf.grad = None


class _SingleUpdate(Update):
    def __init__(self, col: SingleCollected) -> None:
        self.col = col

    def commit(self) -> None:
        if not self.col.written:
            accumulate_grad(self.col.leaves, self.col.grads)

    def rollback(self) -> None:
        self.col.discard()

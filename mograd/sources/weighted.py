r"""The update by one backward pass of $\sum_i c_i L_i$ (representation mode and loss-level
weightings; the gradient is $\sum_i c_i \nabla L_i$ by linearity).

After ``zero_grad`` and outside ``torch.distributed`` the pass writes every ``.grad`` itself,
as ``loss.backward()`` would (the hand-written step's cost), and a step the guard rejects
clears them again; otherwise the gradients are formed with ``torch.autograd.grad``,
averaged over the process group (zeros where a rank does not reach a parameter) and added.
"""

from __future__ import annotations

import torch

from .. import _distributed as distributed
from ..gramian import accumulate_grad, row_dtype
from .base import Step, Update, gradient_sums, truly_finite, untouched

__all__ = ["weighted_update"]


def weighted_update(
    step: Step, coefficients: torch.Tensor, what: str = "non-finite gradient"
) -> Update:
    r"""$\sum_i c_i \nabla L_i$ on every leaf the losses reach, by one backward pass
    (``what`` names a non-finite result)."""
    ref = step.losses[0]
    total = (coefficients.detach().to(ref.dtype) * torch.stack(step.losses)).sum()
    if not step.distributed and not step.checked:
        # Nothing to check or undo: one plain backward pass, exactly the floor's work.
        torch.autograd.backward(total, retain_graph=step.retain_graph)
        return _Written(step.params, [], what, densify=step.k > 1)
    leaves = [*step.params, *step.extras]
    if not step.distributed and untouched(leaves):
        torch.autograd.backward(total, retain_graph=step.retain_graph)
        return _Written(leaves, [leaf.grad for leaf in leaves], what, densify=step.k > 1)
    grads: list[torch.Tensor | None] = list(
        torch.autograd.grad(total, leaves, retain_graph=step.retain_graph, allow_unused=True)
    )
    n = len(step.params)
    if step.distributed and n:
        dtype = row_dtype(step.params[0])
        grads[:n] = distributed.mean_gradients(step.params, grads[:n], dtype, step.group)
    return _Formed(leaves, grads, what)


class _Written(Update):
    """Gradients the backward pass already wrote into ``.grad``."""

    def __init__(
        self,
        leaves: list[torch.Tensor],
        grads: list[torch.Tensor | None],
        what: str,
        *,
        densify: bool,
    ) -> None:
        self.leaves, self.grads, self.what, self.densify = leaves, grads, what, densify

    def sums(self) -> list[torch.Tensor]:
        return gradient_sums(self.grads)

    def problem(self) -> str | None:
        return None if truly_finite(self.grads) else self.what

    def commit(self) -> None:
        if self.densify:  # a combination of k >= 2 gradients is dense (docs/api.md)
            for leaf in self.leaves:
                if leaf.grad is not None and leaf.grad.layout != torch.strided:
                    leaf.grad = leaf.grad.to_dense()

    def rollback(self) -> None:
        for leaf in self.leaves:
            leaf.grad = None


class _Formed(Update):
    """Gradients formed but not yet added to ``.grad``."""

    def __init__(
        self, leaves: list[torch.Tensor], grads: list[torch.Tensor | None], what: str
    ) -> None:
        self.leaves, self.grads, self.what = leaves, grads, what

    def sums(self) -> list[torch.Tensor]:
        return gradient_sums(self.grads)

    def problem(self) -> str | None:
        return None if truly_finite(self.grads) else self.what

    def commit(self) -> None:
        casts = [None if g is None else g.to(p.dtype) for g, p in zip(self.grads, self.leaves)]
        accumulate_grad(self.leaves, casts, densify=True)

r"""The exact step without the ``(k, P)`` buffer (``jacobian="gramian"``): $G$ module by
module from forward records (:class:`mograd.frugal.GramianEngine`), then the update from
the same records (:meth:`~mograd.frugal.GramianEngine.update`: ``nn.Linear`` weights as
$\big(\sum_i c_i D_i\big)^\top A$, no weighted backward pass). Same weights and update as
the rows source, $O(P)$ memory (``docs/performance.md``). Under ``torch.distributed`` the
engine averages the per-loss gradients over the process group while it forms $G$, and the
update once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .. import _distributed as distributed
from ..frugal import GramianEngine
from ..gramian import accumulate_grad, gram_dtype, row_dtype
from .base import Collected, Step, Update, gradient_sums, truly_finite

__all__ = ["GramianCollected"]


class GramianCollected(Collected):
    """The losses of a recorded forward pass; $G$ is formed on the first :meth:`gram`
    (after :meth:`reduce`, so that the engine knows the process group)."""

    def __init__(self, step: Step, engine: GramianEngine) -> None:
        super().__init__(step)
        self.engine = engine
        self.group: Any = None
        self._gram: torch.Tensor | None = None
        self.dtype = row_dtype(step.params[0]) if step.params else torch.float32

    def reduce(self, group: Any) -> None:
        self.group = group
        self.values = distributed.mean_(self.values.clone(), group)

    def gram(self, exact: bool = False) -> torch.Tensor:
        if self._gram is None:
            step = self.step
            g, _ = self.engine.gram(
                step.losses,
                step.params,
                step.params[: step.n_shared],
                extras=step.extras,
                retain_graph=step.retain_graph,
                process_group=self.group,
            )
            self._gram = g.to(gram_dtype(g.device))
        return self._gram

    def problem(self) -> str | None:
        if self._gram is not None and not bool(torch.isfinite(self._gram).all()):
            return "non-finite gradient (it reached the Gram matrix)"
        return None

    def prepare(self, coefficients: torch.Tensor) -> Update:
        step = self.step
        grads = self.engine.update(coefficients)
        n = len(step.params)
        return _RecordsUpdate(step, grads[:n], grads[n:], self.engine.clear)

    def discard(self) -> None:
        self.engine.clear()


class _RecordsUpdate(Update):
    """The update formed from the records: nothing is written before :meth:`commit`,
    which also lets the engine drop its records."""

    def __init__(
        self,
        step: Step,
        grads: list[torch.Tensor | None],
        extra_grads: list[torch.Tensor | None],
        release: Callable[[], None],
    ) -> None:
        self.step, self.grads, self.extra_grads, self.release = step, grads, extra_grads, release

    def _unchecked(self) -> list[torch.Tensor | None]:
        """The gradients $G$ does not cover: non-shared parameters and extras."""
        return [*self.grads[self.step.n_shared :], *self.extra_grads]

    def sums(self) -> list[torch.Tensor]:
        return gradient_sums(self._unchecked())

    def problem(self) -> str | None:
        return None if truly_finite(self._unchecked()) else "non-finite gradient"

    def commit(self) -> None:
        params, extras = self.step.params, self.step.extras
        casts = [None if g is None else g.to(p.dtype) for g, p in zip(self.grads, params)]
        accumulate_grad(params, casts, disjoint=True, densify=True)
        accumulate_grad(extras, self.extra_grads, densify=True)
        self.release()

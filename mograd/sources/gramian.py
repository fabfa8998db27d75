"""The exact step without the ``(k, P)`` buffer (``jacobian="gramian"``): ``G`` module by
module from forward records (:class:`mograd.frugal.GramianEngine`), then the update by one
backward pass of ``sum_i c_i L_i``. Same weights and update as the rows source, O(P)
memory (``docs/performance.md``). Under ``torch.distributed`` the engine averages the
per-loss gradients over the process group itself while it forms ``G``.
"""

from __future__ import annotations

from typing import Any

import torch

from .. import _distributed as distributed
from ..frugal import GramianEngine
from ..gramian import gram_dtype, row_dtype
from .base import Collected, Step, Update
from .weighted import weighted_update

__all__ = ["GramianCollected"]


class GramianCollected(Collected):
    """The losses of a recorded forward pass; ``G`` is formed on the first :meth:`gram`
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
            shared = step.params[: step.n_shared]
            g, _ = self.engine.gram(step.losses, step.params, shared, process_group=self.group)
            self._gram = g.to(gram_dtype(g.device))
        return self._gram

    def problem(self) -> str | None:
        if self._gram is not None and not bool(torch.isfinite(self._gram).all()):
            return "non-finite gradient (it reached the Gram matrix)"
        return None

    def prepare(self, coefficients: torch.Tensor) -> Update:
        return weighted_update(self.step, coefficients)

    def discard(self) -> None:
        self.engine.clear()

r"""Loss-level weightings (``needs_gram = False``: FAMO, UW, DWA, ...): the coefficients
come from the loss values alone, so the step is one backward pass of $\sum_i c_i L_i$,
the price of a plain step; no per-loss gradient and no Gram matrix is formed."""

from __future__ import annotations

from typing import Any

from .. import _distributed as distributed
from ..gramian import row_dtype
from .base import Collected, Step, Update
from .weighted import weighted_update

__all__ = ["LossesCollected"]


class LossesCollected(Collected):
    """Only the loss values."""

    def __init__(self, step: Step) -> None:
        super().__init__(step)
        self.dtype = row_dtype(step.params[0]) if step.params else step.values.dtype

    def reduce(self, group: Any) -> None:
        self.values = distributed.mean_(self.values.clone(), group)

    def gram(self, exact: bool = False) -> None:
        return None

    def prepare(self, coefficients: Any) -> Update:
        return weighted_update(self.step, coefficients)

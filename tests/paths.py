"""The five ways a multi-objective step can be taken (the ``path`` fixture of ``conftest.py``).

Each path runs the same model and batch through one way of forming the step:

* ``rows``: the default exact step (``jacobian="rows"``, the k x P buffer);
* ``gramian``: the exact step without the k x P buffer (``jacobian="gramian", modules=model``);
* ``features``: representation mode (``opt.backward(losses, features=z)``);
* ``single``: one loss (k = 1, the sum of the two losses), which must be ``loss.backward()``;
* ``accumulate``: two micro-batches gathered with ``opt.accumulate`` (losses scaled by 1/2),
  then one ``opt.backward()`` without losses.

A model's forward returns ``(z, out)``: the shared representation and the outputs; a
``Forward`` maps a batch to ``(z, losses)`` (the losses are a list of k = 2 scalars).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mograd import MOWrapper, StepInfo

__all__ = ["PATHS", "Forward", "StepPath"]

Forward = Callable[[torch.Tensor], tuple[torch.Tensor, list[torch.Tensor]]]


def single_loss(losses: list[torch.Tensor]) -> torch.Tensor:
    """The one loss of the k = 1 path (the same expression is used for plain PyTorch)."""
    return losses[0] + losses[1]


@dataclass(frozen=True)
class StepPath:
    """One path: how to build the wrapper and how to run its backward pass."""

    name: str

    @property
    def k(self) -> int:
        return 1 if self.name == "single" else 2

    def options(self, model: nn.Module) -> dict[str, Any]:
        """Constructor options of ``MOWrapper`` for this path."""
        return {"jacobian": "gramian", "modules": model} if self.name == "gramian" else {}

    def wrap(self, model: nn.Module, inner: torch.optim.Optimizer, **kw: Any) -> MOWrapper:
        return MOWrapper(inner, **self.options(model), **kw)

    def losses(self, losses: list[torch.Tensor]) -> list[torch.Tensor]:
        """The losses handed to mograd on this path (k = 1: their sum)."""
        return [single_loss(losses)] if self.name == "single" else losses

    def backward(
        self,
        opt: MOWrapper,
        forward: Forward,
        x: torch.Tensor,
        grad_scaler: torch.amp.GradScaler | None = None,
    ) -> StepInfo:
        """Write the step's ``.grad`` (the inner step is the caller's)."""
        if self.name == "accumulate":
            for xm in x.chunk(2):
                _, ls = forward(xm)
                opt.accumulate([loss / 2 for loss in ls], grad_scaler=grad_scaler)
            return opt.backward()
        z, ls = forward(x)
        if self.name == "features":
            return opt.backward(ls, features=z, grad_scaler=grad_scaler)
        return opt.backward(self.losses(ls), grad_scaler=grad_scaler)

    def closure(self, opt: MOWrapper, forward: Forward, x: torch.Tensor) -> Callable[[], Any]:
        """A ``step(closure)`` closure: zero the gradients, run the model, return the losses."""

        def closure() -> Any:
            opt.zero_grad()
            ls = self.losses(forward(x)[1])
            return ls[0] if self.k == 1 else ls

        return closure


PATHS = tuple(StepPath(name) for name in ("rows", "gramian", "features", "single", "accumulate"))

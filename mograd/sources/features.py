r"""Representation mode (``features=z``, MGDA-UB): the Gram matrix of the per-loss gradients
with respect to the shared representation $z$, then one backward pass of $\sum_i c_i L_i$.

Cheaper than the exact step ($k$ backward passes only down to $z$), an approximation of it
(``docs/performance.md``). Under ``torch.distributed`` the features of different ranks are
different samples, so the full-batch $G$ is the sum of the per-rank ones (up to a scale
that the weights ignore: divided by the squared world size, as for averaged gradients).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .. import _distributed as distributed
from ..gramian import gram, jacobian_rows
from .base import Collected, Step, Update, truly_finite
from .weighted import weighted_update

__all__ = ["FeaturesCollected", "check_features", "collect_features"]


def check_features(features: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The features as a list, each a tensor that requires grad (``ValueError`` if not)."""
    feats = [features] if isinstance(features, torch.Tensor) else list(features)
    for i, f in enumerate(feats):
        if not isinstance(f, torch.Tensor) or not f.requires_grad:
            hint = (
                " (gradients are disabled: was the forward pass run under torch.no_grad()?)"
                if not torch.is_grad_enabled()
                or (isinstance(f, torch.Tensor) and f.grad_fn is None)
                else ""
            )
            raise ValueError(
                f"features[{i}] must be a tensor that requires grad (the shared "
                f"representation the losses are computed from){hint}"
            )
    return feats


def collect_features(step: Step, feats: list[torch.Tensor]) -> FeaturesCollected:
    """$k$ backward passes down to the features (the graph is kept for the update)."""
    jac_z, _, _ = jacobian_rows(step.losses, feats, [], True, "the features")
    return FeaturesCollected(step, jac_z)


class FeaturesCollected(Collected):
    """The per-loss gradients with respect to the features, as rows."""

    def __init__(self, step: Step, jac_z: torch.Tensor) -> None:
        super().__init__(step)
        self.jac_z = jac_z
        self._gram = gram(jac_z, exact=True)  # small: rescaled, never overflows
        self.dtype = jac_z.dtype

    def reduce(self, group: Any) -> None:
        k = self.k
        packed = torch.cat([self._gram.reshape(-1), self.values.to(self._gram.dtype)])
        distributed.sum_(packed, group)
        world = distributed.world_size(group)
        self._gram = packed[: k * k].view(k, k) / world**2
        self.values = (packed[k * k :] / world).to(self.values.dtype)

    def gram(self, exact: bool = False) -> torch.Tensor:
        return self._gram  # float64 from the start: finite for finite feature gradients

    def problem(self) -> str | None:
        if truly_finite([self.jac_z]):
            return None
        return "non-finite gradient in representation mode (with respect to the features)"

    def prepare(self, coefficients: torch.Tensor) -> Update:
        return weighted_update(
            self.step, coefficients, "non-finite gradient in representation mode"
        )

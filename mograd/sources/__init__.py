r"""Gradient sources: what one step gathers from the losses, behind one interface
(:class:`~mograd.sources.base.Collected`).

| source   | gathers                                      | $G$                 | accumulates |
|----------|----------------------------------------------|---------------------|-------------|
| rows     | $k$ per-loss gradients as rows of $J$        | $J_S J_S^\top$      | yes         |
| single   | the gradient of the one loss ($k = 1$)       | $\lVert g \rVert^2$ | yes         |
| gramian  | forward records (:mod:`mograd.frugal`)       | module by module    | no          |
| features | per-loss gradients w.r.t. the features $z$   | $J_z J_z^\top$      | no          |
| losses   | the loss values only (loss-level weightings) | none                | no          |
| sharded  | FSDP2: each loss's local gradient shard      | partial, all-reduced | yes        |
"""

from .base import Collected, Step, Update
from .features import FeaturesCollected, check_features, collect_features
from .gramian import GramianCollected
from .losses import LossesCollected
from .rows import RowsCollected, collect_rows
from .single import SingleCollected, collect_single

__all__ = [
    "Collected",
    "FeaturesCollected",
    "GramianCollected",
    "LossesCollected",
    "RowsCollected",
    "SingleCollected",
    "Step",
    "Update",
    "check_features",
    "collect_features",
    "collect_rows",
    "collect_single",
]

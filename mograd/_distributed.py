"""The only ``torch.distributed`` code of mograd: averaging over the process group.

Every rank must form the same Gram matrix and the same weights; the optimizer averages the
per-loss gradients (exact mode) or sums the per-rank feature Gram matrices (representation
mode) and the loss values before any weighting runs.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

__all__ = ["is_distributed", "mean_", "sum_", "world_size"]


def is_distributed() -> bool:
    """``True`` inside an initialized process group."""
    return dist.is_available() and dist.is_initialized()


def world_size(group: Any = None) -> int:
    """Ranks in ``group`` (the world group by default)."""
    return dist.get_world_size(group=group)


def sum_(tensor: torch.Tensor, group: Any = None) -> torch.Tensor:
    """In-place sum over the ranks; returns ``tensor``."""
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
    return tensor


def mean_(tensor: torch.Tensor, group: Any = None) -> torch.Tensor:
    """In-place mean over the ranks; returns ``tensor``."""
    sum_(tensor, group)
    return tensor.div_(world_size(group))

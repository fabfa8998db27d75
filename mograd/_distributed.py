"""The only ``torch.distributed`` code of mograd: averaging over the process group.

Every rank must form the same Gram matrix, the same weights and the same decision on a
non-finite step. The sources average per-loss gradients (exact mode) or sum the per-rank
feature Gram matrices (representation mode) and the loss values before any weighting runs,
and gradients that only one rank forms (a data-dependent graph) are averaged as zeros
elsewhere, so that every rank sends the same sizes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["agree", "is_distributed", "mean_", "mean_gradients", "sum_", "world_size"]


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


def agree(ok: torch.Tensor, group: Any = None) -> torch.Tensor:
    """``ok`` (a 0-d bool tensor) on every rank, so that all ranks decide alike."""
    flag = ok.to(torch.float32).reshape(1)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN, group=group)
    return flag[0] > 0


def mean_gradients(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor | None],
    dtype: torch.dtype,
    group: Any = None,
) -> list[torch.Tensor | None]:
    """The rank average of one gradient per parameter, by one collective.

    A parameter that a rank does not reach contributes zeros there; one that no rank
    reaches stays ``None``. Sparse gradients are averaged dense.

    Args:
        params: The parameters.
        grads: This rank's gradient of each (``None`` where not reached).
        dtype: The dtype of the averaging buffer (float32 for half-precision parameters).
        group: The process group.
    """
    if not params:
        return []
    device = params[0].device
    flat = torch.cat(
        [
            torch.zeros(p.numel(), dtype=dtype, device=device)
            if g is None
            else (g.to_dense() if g.layout != torch.strided else g).reshape(-1).to(dtype)
            for p, g in zip(params, grads)
        ]
        + [torch.tensor([float(g is not None) for g in grads], dtype=dtype, device=device)]
    )
    mean_(flat, group)
    n = len(params)
    parts = torch.split(flat, [*(p.numel() for p in params), n])
    hits = (parts[-1] > 0).tolist()
    return [
        part.view_as(p).to(p.dtype) if hit else None
        for p, part, hit in zip(params, parts[:-1], hits)
    ]

"""``sum_i c_i grad L_i`` by one backward pass of ``sum_i c_i L_i``: the same update that
:meth:`mograd.frugal.GramianEngine.update` forms from the records, for callers that keep
the graph and prefer a plain backward pass (and as its reference)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .. import _distributed as distributed
from ..gramian import row_dtype

__all__ = ["weighted_gradients"]


def weighted_gradients(
    losses: Sequence[torch.Tensor],
    coefficients: torch.Tensor,
    params: Sequence[torch.Tensor],
    extras: Sequence[torch.Tensor] = (),
    *,
    reached: Sequence[bool] | None = None,
    retain_graph: bool = False,
    process_group: Any = None,
) -> list[torch.Tensor | None]:
    """``sum_i c_i grad L_i`` on ``params`` and ``extras`` by one backward pass.

    Under ``torch.distributed`` the gradients of ``params`` are averaged over the process
    group (one collective of all of them, unreached ones as zeros, so that every rank
    sends the same sizes); pass ``reached`` from :meth:`GramianEngine.gram` so that a
    parameter no rank reaches stays ``None``. Those of ``extras`` (leaves outside the
    optimizer) are not averaged, as in the default exact step. Nothing is written to
    ``.grad``.

    Args:
        losses: The k scalar losses.
        coefficients: The k coefficients ``c`` (cast to the losses' dtype).
        params: The parameters (averaged over the process group).
        extras: Further leaves (not averaged).
        reached: Per parameter of ``params``, whether some loss on some rank reaches it.
        retain_graph: Keep the graph after the backward pass.
        process_group: The group over which the gradients are averaged (default: the
            world).

    Returns:
        The gradients of ``params`` then ``extras`` (``None`` where no loss reaches one).

    Example:
        >>> w = torch.tensor([1.0, 2.0], requires_grad=True)
        >>> weighted_gradients([w.sum(), (w * w).sum()], torch.tensor([0.5, 1.0]), [w])
        [tensor([2.5000, 4.5000])]
    """
    losses = list(losses)
    ref = losses[0]
    total = (coefficients.detach().to(ref.dtype) * torch.stack(losses)).sum()
    leaves = [*params, *extras]
    grads: list[torch.Tensor | None] = list(
        torch.autograd.grad(total, leaves, retain_graph=retain_graph, allow_unused=True)
    )
    n = len(params)
    if distributed.is_distributed() and n:
        grads[:n] = _averaged(params, grads[:n], reached, process_group)
    return grads


def _averaged(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor | None],
    reached: Sequence[bool] | None,
    group: Any,
) -> list[torch.Tensor | None]:
    """The gradients averaged over ``group`` in one collective (``None`` where no rank
    reaches a parameter, or, without ``reached``, where this rank's gradient is ``None``)."""
    dtype = row_dtype(params[0])
    flat = torch.cat(
        [
            torch.zeros(p.numel(), dtype=dtype, device=p.device)
            if g is None
            else (g.to_dense() if g.layout != torch.strided else g).reshape(-1).to(dtype)
            for p, g in zip(params, grads)
        ]
    )
    distributed.mean_(flat, group)
    hits = [g is not None for g in grads] if reached is None else list(reached)
    parts = torch.split(flat, [p.numel() for p in params])
    return [
        part.view_as(p).to(p.dtype) if hit else None for p, part, hit in zip(params, parts, hits)
    ]

"""Folding the units' blocks into ``G`` (float64), on one process or over a process group.

Every block product is rescaled by a power of two before it is formed (the division and
the multiplication back are exact) and accumulated in float64, so a finite set of
gradients never gives an overflowed ``G``; non-finite gradients still reach it (the
optimizer's non-finite policy reads ``G``).

Under ``torch.distributed`` the Gram matrix of the rank-averaged gradients needs the other
ranks' per-loss gradients: :func:`distributed_gram` takes each unit's block, copies its
columns into buckets of at most ``bucket_elements`` columns in the shared parameters'
order (the same collectives on every rank), averages each bucket over the group, folds it
and drops it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from .. import _distributed as distributed

if TYPE_CHECKING:
    from .units import Spec, Unit

__all__ = [
    "abs_max",
    "block_gram",
    "distributed_gram",
    "local_gram",
    "pow2",
    "reached_anywhere",
]


def pow2(amax: torch.Tensor) -> torch.Tensor:
    """The power of two ``2**e`` with ``amax < 2**e <= 2 amax`` (2 for 0), so that dividing
    by it is exact.

    Example:
        >>> pow2(torch.tensor(3.0)), pow2(torch.tensor(0.0))
        (tensor(4.), tensor(2.))
    """
    amax = torch.where(amax > 0, amax, torch.ones_like(amax))
    _, exp = torch.frexp(amax)
    return torch.ldexp(torch.ones_like(amax), exp.to(amax.dtype))


def abs_max(x: torch.Tensor) -> torch.Tensor:
    """``max |x|`` (NaN if ``x`` has one) in one read, without an ``x``-sized temporary.

    Example:
        >>> abs_max(torch.tensor([[1.0, -3.0], [2.0, 0.5]]))
        tensor(3.)
    """
    lo, hi = torch.aminmax(x)
    return torch.maximum(hi, -lo)


def block_gram(block: torch.Tensor, *, owned: bool) -> torch.Tensor:
    """``block @ block.T`` in float64, rescaled so that it overflows only for non-finite
    entries. ``owned``: ``block`` may be divided in place.

    Example:
        >>> b = torch.full((2, 3), 1e20)  # float32: b @ b.T overflows
        >>> bool((b @ b.T).isinf().all()), block_gram(b, owned=False).dtype
        (True, torch.float64)
        >>> bool(block_gram(b, owned=False).isfinite().all())
        True
    """
    s = pow2(abs_max(block))
    scaled = block.div_(s) if owned else block / s
    out = (scaled @ scaled.T).to(torch.float64)
    return out * s.to(torch.float64) ** 2


def local_gram(units: Sequence[Unit], spec: Spec) -> torch.Tensor:
    """``G`` on one process: the sum of every unit's block product, each unit told once
    folded (it then keeps only what the update needs)."""
    g = spec.zero_gram()
    for u in units:
        if u.n_gram:
            g += u.gram()
            u.folded()
    return g


def distributed_gram(
    units: Sequence[Unit],
    shared: Sequence[torch.Tensor],
    spec: Spec,
    bucket_elements: int,
    group: Any,
) -> torch.Tensor:
    """``G`` of the per-loss gradients averaged over ``group``, bucket by bucket in the
    order of ``shared`` (a parameter no unit holds, i.e. reached by no loss here, gives
    zero columns, so that every rank sends the same sizes). Each unit is told once folded;
    what the update needs stays local (the update is averaged on its own)."""
    columns = _Columns(units)
    g = spec.zero_gram()
    for bucket in _buckets(shared, bucket_elements):
        numel = sum(p.numel() for p in bucket)
        buf = torch.zeros((spec.k, numel), dtype=spec.dtype, device=spec.device)
        col = 0
        for p in bucket:
            columns.copy_into(buf[:, col : col + p.numel()], p)
            col += p.numel()
        distributed.mean_(buf, group)
        g += block_gram(buf, owned=True)
        del buf
    return g


def reached_anywhere(reached: Sequence[bool], spec: Spec, group: Any) -> list[bool]:
    """Whether some loss on some rank of ``group`` reaches each parameter."""
    flags = torch.tensor(list(reached), dtype=spec.dtype, device=spec.device)
    distributed.sum_(flags, group)
    return [bool(r > 0) for r in flags.tolist()]


def _buckets(shared: Sequence[torch.Tensor], limit: int) -> list[list[torch.Tensor]]:
    """Consecutive runs of ``shared`` of at most ``limit`` elements (a larger parameter
    goes alone)."""
    buckets: list[list[torch.Tensor]] = []
    cur: list[torch.Tensor] = []
    size = 0
    for p in shared:
        if cur and size + p.numel() > limit:
            buckets.append(cur)
            cur, size = [], 0
        cur.append(p)
        size += p.numel()
    if cur:
        buckets.append(cur)
    return buckets


class _Columns:
    """Where each shared parameter's columns lie in its unit's block; a unit's block is
    formed when its first shared parameter is asked for and dropped after its last."""

    def __init__(self, units: Sequence[Unit]) -> None:
        self.where: dict[int, tuple[Unit, int]] = {}
        self.remaining: dict[int, int] = {}
        for u in units:
            if not u.n_gram:
                continue
            off = 0
            for p, n in zip(u.params[: u.n_gram], u.numels):
                self.where[id(p)] = (u, off)
                off += n
            self.remaining[id(u)] = u.n_gram
        self.cache: dict[int, torch.Tensor] = {}

    def copy_into(self, out: torch.Tensor, p: torch.Tensor) -> None:
        """Copy the ``(k, numel)`` per-loss gradients of ``p`` into ``out`` (left as it
        is when no unit holds ``p``)."""
        hit = self.where.get(id(p))
        if hit is None:
            return
        u, off = hit
        blk = self.cache.get(id(u))
        if blk is None:
            blk = self.cache[id(u)] = u.block()
        out.copy_(blk[:, off : off + p.numel()])
        self.remaining[id(u)] -= 1
        if self.remaining[id(u)] == 0:
            del self.cache[id(u)]
            u.folded()

"""The only ``torch.distributed`` code of mograd: averaging over the process group.

Every rank must form the same Gram matrix, the same weights and the same decision on a
non-finite step. The sources average per-loss gradients (exact mode) or sum the per-rank
feature Gram matrices (representation mode) and the loss values before any weighting runs,
and gradients that only one rank forms (a data-dependent graph) are averaged as zeros
elsewhere, so that every rank sends the same sizes. Large exact steps reduce-scatter the
per-loss gradients and all-gather the combined one (:func:`reduce_scatter_mean_`,
:func:`all_gather_`); :func:`count_traffic` counts what a step sends (``docs/distributed.md``).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "Traffic",
    "agree",
    "all_gather_",
    "backend",
    "count_traffic",
    "is_distributed",
    "mean_",
    "mean_gradients",
    "rank",
    "reduce_scatter_mean_",
    "sum_",
    "world_size",
]


def is_distributed() -> bool:
    """``True`` inside an initialized process group."""
    return dist.is_available() and dist.is_initialized()


def world_size(group: Any = None) -> int:
    """Ranks in ``group`` (the world group by default)."""
    return dist.get_world_size(group=group)


def backend(group: Any, device: torch.device) -> str:
    """The name of ``group``'s backend for tensors on ``device`` (``"gloo"``, ``"nccl"``)."""
    name = str(dist.get_backend(group))
    if ":" not in name:
        return name
    per_device = dict(part.split(":", 1) for part in name.split(","))  # "cpu:gloo,cuda:nccl"
    return per_device.get(device.type, name)


def rank(group: Any = None) -> int:
    """This process's rank in ``group``."""
    return dist.get_rank(group=group)


def sum_(tensor: torch.Tensor, group: Any = None) -> torch.Tensor:
    """In-place sum over the ranks; returns ``tensor``."""
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
    return tensor


def mean_(tensor: torch.Tensor, group: Any = None) -> torch.Tensor:
    """In-place mean over the ranks; returns ``tensor``."""
    sum_(tensor, group)
    return tensor.div_(world_size(group))


def reduce_scatter_mean_(out: torch.Tensor, tensor: torch.Tensor, group: Any = None) -> None:
    """``out`` = this rank's chunk of the rank mean of ``tensor`` (contiguous, ``world``
    equal chunks of ``out.numel()`` elements, rank r's chunk r)."""
    # reduce_scatter_single is the newer name of reduce_scatter_tensor
    scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
    scatter(out, tensor, op=dist.ReduceOp.SUM, group=group)
    out.div_(world_size(group))


def all_gather_(out: torch.Tensor, tensor: torch.Tensor, group: Any = None) -> None:
    """``out`` = the ranks' ``tensor`` one after the other (rank order)."""
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather(out, tensor, group=group)


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


# ---------------------------------------------------------------------- traffic counter
_COUNTED: dict[str, tuple[str, int]] = {
    # name in torch.distributed -> (kind, which argument's size is the collective's N)
    "all_reduce": ("all_reduce", 0),
    "reduce_scatter_single": ("reduce_scatter", 1),
    "reduce_scatter_tensor": ("reduce_scatter", 1),
    "all_gather_single": ("all_gather", 0),
    "all_gather_into_tensor": ("all_gather", 0),
    "broadcast": ("broadcast", 0),
}
_RING = {"all_reduce": 2.0, "reduce_scatter": 1.0, "all_gather": 1.0, "broadcast": 1.0}


@dataclass
class Traffic:
    """The collectives issued while :func:`count_traffic` was active, on this rank.

    Attributes:
        calls: ``(kind, N, world)`` per collective: ``"all_reduce"``, ``"reduce_scatter"``,
            ``"all_gather"`` or ``"broadcast"``, the number of elements of the whole
            (reduced, scattered or gathered) tensor, and the group's size.
    """

    calls: list[tuple[str, int, int]] = field(default_factory=list)

    @property
    def sent(self) -> float:
        """Elements this rank sends, by the bandwidth-optimal (ring) algorithms: an
        all-reduce of N elements sends ``2 N (w - 1) / w``, a reduce-scatter or an
        all-gather ``N (w - 1) / w``, a broadcast at most N. A cost model (what NCCL's
        ring algorithms send), not bytes read off the wire."""
        return sum(_RING[kind] * n * (w - 1) / w for kind, n, w in self.calls)

    def count(self, kind: str) -> int:
        """How many collectives of ``kind`` were issued."""
        return sum(1 for c in self.calls if c[0] == kind)


@contextlib.contextmanager
def count_traffic() -> Iterator[Traffic]:
    """Count every collective that Python code issues through ``torch.distributed``
    (mograd's own and FSDP2's) while the block runs.

    Example:
        Inside an initialized process group (see ``docs/distributed.md``)::

            with count_traffic() as traffic:
                opt.step(losses)
            print(traffic.sent, traffic.count("all_reduce"))
    """
    traffic = Traffic()
    saved = {name: getattr(dist, name) for name in _COUNTED if hasattr(dist, name)}

    def counted(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        kind, arg = _COUNTED[name]
        signature = inspect.signature(fn)
        tensor_name = list(signature.parameters)[arg]

        def call(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs).arguments
            n = int(bound[tensor_name].numel())
            traffic.calls.append((kind, n, world_size(bound.get("group"))))
            return fn(*args, **kwargs)

        return call

    for name, fn in saved.items():
        setattr(dist, name, counted(name, fn))
    try:
        yield traffic
    finally:
        for name, fn in saved.items():
            setattr(dist, name, fn)

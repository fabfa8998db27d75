r"""The interface every gradient source implements: :class:`Collected` and :class:`Update`.

A *source* gathers what one step needs from the losses (per-loss gradients, the Gram
matrix's records, feature gradients, or only the loss values) into a :class:`Collected`.
The step pipeline (:mod:`mograd.pipeline`) then runs the same stages on every source:
``reduce`` over the process group, ``gram``, the weighting, the non-finite guard, and
``prepare(c).commit()``, which adds $\sum_i c_i \nabla L_i$ to ``.grad``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ..gramian import reached_leaves

__all__ = ["Collected", "Step", "Update"]


@dataclass
class Step:
    """What every source is told about one step.

    Attributes:
        losses: The $k$ scalar losses (scaled by the GradScaler when there is one).
        values: Their detached, unscaled values in at least float32, ``(k,)``.
        params: The optimizer's parameters that require grad, shared ones first.
        n_shared: How many of ``params`` are shared (enter the Gram matrix).
        retain_graph: Keep the autograd graph after the step's last backward pass.
        scale: The GradScaler's scale of the losses, or ``None``.
        group: The process group (``None``: the world group).
        distributed: Whether ``torch.distributed`` is initialized (then every source
            averages over ``group``).
        checked: Whether the non-finite guard will read the step (``nonfinite`` is not
            ``"ignore"``): unchecked steps may write ``.grad`` directly.
    """

    losses: list[torch.Tensor]
    values: torch.Tensor
    params: list[torch.Tensor]
    n_shared: int
    retain_graph: bool
    scale: torch.Tensor | None
    group: Any
    distributed: bool
    checked: bool
    _extras: list[torch.Tensor] | None = field(default=None, repr=False)

    @property
    def k(self) -> int:
        """The number of losses."""
        return len(self.losses)

    @property
    def extras(self) -> list[torch.Tensor]:
        """Leaves outside the optimizer that the losses reach (found once, by a graph walk):
        they receive their gradient as after ``loss.backward()``, but never enter $G$."""
        if self._extras is None:
            held = {id(p) for p in self.params}
            self._extras = [v for v in reached_leaves(self.losses) if id(v) not in held]
        return self._extras

    @property
    def shared_numel(self) -> int:
        """Columns of the shared parameters."""
        return sum(p.numel() for p in self.params[: self.n_shared])


class Update(ABC):
    r"""The combined gradient $\sum_i c_i \nabla L_i$ of one step, not yet (or undoably)
    part of ``.grad``."""

    def sums(self) -> list[torch.Tensor]:
        """0-d sums of the gradients seen only here (no host read): their total is finite
        when the gradients are (:func:`finite_sum`); empty when there is nothing to check."""
        return []

    def problem(self) -> str | None:
        """After the sums were not finite: what is not finite (exact, slow), or ``None``."""
        return None

    @abstractmethod
    def commit(self) -> None:
        """Add the combined gradient to ``.grad`` as ``loss.backward()`` would."""

    def rollback(self) -> None:
        """Undo whatever :meth:`Collected.prepare` wrote (nothing, unless it wrote)."""
        return None


class Collected(ABC):
    """What a source gathered for one step, before any ``.grad`` is written.

    Attributes:
        values: The loss values, ``(k,)`` (replaced by their mean by :meth:`reduce`).
        dtype: The dtype of the step's gradients, used for :class:`~mograd.StepInfo`.
        accumulates: Whether micro-batches can be summed with :meth:`add_`.
    """

    accumulates: ClassVar[bool] = False
    values: torch.Tensor
    dtype: torch.dtype

    def __init__(self, step: Step) -> None:
        self.step = step
        self.values = step.values

    @property
    def k(self) -> int:
        """The number of losses."""
        return int(self.values.shape[0])

    @abstractmethod
    def reduce(self, group: Any) -> None:
        """Average over the process group, so that every rank forms the same $G$."""

    @abstractmethod
    def gram(self, exact: bool = False) -> torch.Tensor | None:
        """$G$ of the (scaled) per-loss gradients on the shared parameters, by the
        precision rule of :func:`mograd.gramian.gram`; ``exact``: recompute it when the
        first one overflowed for finite gradients. ``None``: the source forms none."""

    def finite(self) -> torch.Tensor | None:
        """A 0-d bool tensor: the gathered gradients that $G$ does not cover are finite."""
        return None

    def problem(self) -> str | None:
        """What gathered gradient is not finite (exact, slow), or ``None``."""
        return None

    @abstractmethod
    def prepare(self, coefficients: torch.Tensor) -> Update:
        """The combined gradient for the coefficients $c$ (on the raw gradients)."""

    def add_(self, other: Collected) -> None:
        """Sum another micro-batch into this one (sources with ``accumulates``)."""
        raise NotImplementedError  # pragma: no cover

    def discard(self) -> None:
        """Undo anything gathering wrote (called when the step fails before ``prepare``)."""
        return None


def merge_by_leaf(
    leaves: list[torch.Tensor],
    parts: list[torch.Tensor | None],
    other_leaves: Sequence[torch.Tensor],
    other_parts: Sequence[torch.Tensor | None],
) -> None:
    """Sum another micro-batch's per-leaf tensors into ``parts``, in place, matching leaves
    by identity; leaves only the other micro-batch reached are appended."""
    index = {id(v): i for i, v in enumerate(leaves)}
    for leaf, part in zip(other_leaves, other_parts):
        i = index.get(id(leaf))
        if i is None:
            leaves.append(leaf)
            parts.append(part)
        elif part is not None:
            old = parts[i]
            parts[i] = part if old is None else old + part


def add_rows(target: Any, other: Any) -> None:
    """``target += other`` for two micro-batches of per-loss rows (``jac``, ``values``,
    ``reached``, ``extras`` and their ``blocks``): the rows and sharded sources."""
    target.jac.add_(other.jac)
    target.values = target.values + other.values.to(target.values.dtype)
    target.reached = [a or b for a, b in zip(target.reached, other.reached)]
    merge_by_leaf(target.extras, target.blocks, other.extras, other.blocks)


def finite_sum(sums: Sequence[torch.Tensor]) -> torch.Tensor:
    """A 0-d bool tensor, without a host synchronization: the total of ``sums`` (0-d tensors)
    is finite. A NaN or an infinity anywhere makes it false; so can a total of finite values
    that overflows, after which the exact checks of the step's slow path decide."""
    total = sums[0] if len(sums) == 1 else torch.stack(list(sums)).sum()  # promotes dtypes
    return (total - total) == 0  # 0 for a finite total, NaN otherwise: isfinite in two ops


def wide(t: torch.Tensor) -> torch.Tensor:
    """Values of a sparse tensor; half precision widened to float32 for sums and norms."""
    if t.layout != torch.strided:
        t = t.coalesce().values() if t.is_sparse else t.to_dense()
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def gradient_sums(grads: Sequence[torch.Tensor | None]) -> list[torch.Tensor]:
    """One read of many gradients: their sums, for :func:`finite_sum` (a sum of finite
    values can overflow: :func:`truly_finite` then decides)."""
    return [wide(g).sum() for g in grads if g is not None]


def sums_finite(grads: Sequence[torch.Tensor | None]) -> torch.Tensor | None:
    """:func:`finite_sum` of :func:`gradient_sums`; ``None`` for no gradient."""
    sums = gradient_sums(grads)
    return finite_sum(sums) if sums else None


def truly_finite(tensors: Sequence[torch.Tensor | None]) -> bool:
    """The exact (slow) check, used only after a cheap one failed."""
    return all(t is None or bool(torch.isfinite(wide(t)).all()) for t in tensors)


def untouched(leaves: Sequence[torch.Tensor]) -> bool:
    """No leaf has a ``.grad`` nor a post-accumulate-grad hook: a plain backward pass into
    them can be undone exactly by clearing ``.grad``."""
    return all(
        leaf.grad is None and not getattr(leaf, "_post_accumulate_grad_hooks", None)
        for leaf in leaves
    )

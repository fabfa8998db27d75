"""The units: sets of leaves whose per-loss gradients are handled together (step 4 of the
package docstring), behind one interface.

Every unit

* says what the per-loss backward passes must reach for it (:meth:`Unit.needs`: recorded
  calls, whose output gradients it reads, and direct leaves, whose gradients it reads);
* receives each pass's results the same way (:meth:`Unit.take` with a :class:`LossGrads`);
* gives its ``(k, size)`` block of per-loss gradients (:meth:`Unit.block`, for the
  distributed folding), or its float64 ``(k, k)`` contribution to ``G`` directly
  (:meth:`Unit.gram`), then drops what the update does not need (:meth:`Unit.folded`);
* writes its part of the update ``sum_i c_i grad L_i`` from what it kept
  (:meth:`Unit.combined`), and then drops everything (:meth:`Unit.release`).

Only the first ``n_gram`` leaves of a unit enter ``G`` (the shared parameters); the others
(task-specific parameters, leaves outside the optimizer) only receive the update.

:class:`Backward` gathers every unit's needs into the inputs of one ``autograd.grad`` call
per loss, so the engine runs ``for u in units: u.take(i, grads)``. The ``nn.Linear`` units
live in :mod:`mograd.frugal.linear`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch.autograd.graph import GradientEdge

from .folding import abs_max, pow2
from .records import Call

__all__ = ["Backward", "Direct", "Local", "LossGrads", "Rows", "Spec", "Unit"]

Grads = list[torch.Tensor | None]


@dataclass(frozen=True)
class Spec:
    """What every unit of one Gram matrix shares: k losses, the row dtype and the device."""

    k: int
    dtype: torch.dtype
    device: torch.device

    def zero_gram(self) -> torch.Tensor:
        """A float64 ``(k, k)`` zero matrix."""
        return torch.zeros((self.k, self.k), dtype=torch.float64, device=self.device)


class Backward:
    """The inputs of the per-loss backward passes: every output edge of the calls the
    units need (in the units' order, each call once), then the direct leaves."""

    def __init__(self, units: Sequence[Unit]) -> None:
        self.spans: dict[Call, tuple[int, int]] = {}  # call -> its slice of the inputs
        calls: list[Call] = []
        params: list[torch.Tensor] = []
        for u in units:
            needed_calls, needed_params = u.needs()
            for c in needed_calls:
                if c not in self.spans:
                    self.spans[c] = (0, 0)
                    calls.append(c)
            params.extend(needed_params)
        edges: list[GradientEdge] = []
        for c in calls:
            self.spans[c] = (len(edges), len(edges) + len(c.outputs))
            edges.extend(c.outputs)
        self.slots = {id(p): len(edges) + j for j, p in enumerate(params)}
        self.inputs: list[Any] = [*edges, *params]  # edges and tensors

    def run(self, loss: torch.Tensor, retain: bool) -> LossGrads:
        """One loss's backward pass down to the inputs; ``retain``: keep the graph (the
        last pass of a step that does not keep it frees what it ran through)."""
        grads = torch.autograd.grad(loss, self.inputs, retain_graph=retain, allow_unused=True)
        return LossGrads(self, grads)


class LossGrads:
    """The results of one loss's backward pass, as every unit reads them."""

    def __init__(self, backward: Backward, grads: Sequence[torch.Tensor | None]) -> None:
        self._backward = backward
        self._grads = grads

    def outputs(self, call: Call) -> Grads:
        """The gradients at the output edges of ``call`` (``None``: not reached)."""
        a, b = self._backward.spans[call]
        return list(self._grads[a:b])

    def first(self, call: Call) -> torch.Tensor | None:
        """The gradient at the first output of ``call`` (``nn.Linear`` has one)."""
        a, b = self._backward.spans[call]
        return self._grads[a] if b > a else None

    def param(self, p: torch.Tensor) -> torch.Tensor | None:
        """The gradient of a direct leaf."""
        return self._grads[self._backward.slots[id(p)]]


class Unit:
    """A set of leaves whose per-loss gradients are formed together; the first ``n_gram``
    (default: all) enter ``G``."""

    kind: ClassVar[str] = "unit"

    def __init__(self, params: list[torch.Tensor], spec: Spec, n_gram: int | None = None) -> None:
        self.params = params
        self.spec = spec
        self.numels = [p.numel() for p in params]
        self.size = sum(self.numels)
        self.n_gram = len(params) if n_gram is None else n_gram
        self.gram_size = sum(self.numels[: self.n_gram])

    @property
    def label(self) -> str:
        """How the unit is handled, as :attr:`GramianEngine.last_plan` reports it."""
        return self.kind

    def needs(self) -> tuple[list[Call], list[torch.Tensor]]:
        """The recorded calls and the direct leaves the backward passes must reach."""
        return [], []

    def take(self, i: int, grads: LossGrads) -> None:
        """Keep what loss ``i``'s backward pass gives this unit."""
        raise NotImplementedError  # pragma: no cover

    def block(self) -> torch.Tensor:
        """The ``(k, size)`` per-loss gradients (zero rows for losses that miss them); the
        first ``gram_size`` columns are those of the leaves in ``G``."""
        raise NotImplementedError  # pragma: no cover

    def gram(self) -> torch.Tensor:
        """This unit's ``(k, k)`` float64 contribution to ``G``."""
        raise NotImplementedError  # pragma: no cover

    def folded(self) -> None:
        """``G`` is formed: drop what :meth:`combined` does not need."""

    def combined(self, c: torch.Tensor) -> Grads:
        """``sum_i c_i grad L_i`` per leaf (``None``: no loss reaches it); ``c`` has the
        row dtype."""
        raise NotImplementedError  # pragma: no cover

    def release(self) -> None:
        """Drop what was kept."""


class Rows(Unit):
    """A unit whose per-loss gradients are written into a ``(k, size)`` buffer; the update
    is ``c @ buf`` (k multiply-adds per column)."""

    def __init__(self, params: list[torch.Tensor], spec: Spec, n_gram: int | None = None) -> None:
        super().__init__(params, spec, n_gram)
        self.buf: torch.Tensor | None = None
        self.hits = [False] * len(params)
        self.scale: torch.Tensor | None = None  # the G columns of buf were divided by it

    def ensure(self) -> torch.Tensor:
        """The buffer (zeros when first asked for)."""
        if self.buf is None:
            s = self.spec
            self.buf = torch.zeros((s.k, self.size), dtype=s.dtype, device=s.device)
        return self.buf

    def write(self, i: int, grads: Sequence[torch.Tensor | None]) -> None:
        """Row ``i``: the gradients of the first ``len(grads)`` params (``None``: zeros)."""
        if all(g is None for g in grads):
            return
        buf = self.ensure()
        off = 0
        for j, (g, n) in enumerate(zip(grads, self.numels)):
            if g is not None:
                if g.layout != torch.strided:
                    g = g.to_dense()
                buf[i, off : off + n].copy_(g.reshape(-1))
                self.hits[j] = True
            off += n

    def block(self) -> torch.Tensor:
        return self.ensure()

    def gram(self) -> torch.Tensor:
        if not any(self.hits[: self.n_gram]):
            return self.spec.zero_gram()
        cols = self.ensure()[:, : self.gram_size]
        s = pow2(abs_max(cols))  # divided in place (exact), undone in combined()
        cols.div_(s)
        self.scale = s
        out = (cols @ cols.T).to(torch.float64)
        return out * s.to(torch.float64) ** 2

    def combined(self, c: torch.Tensor) -> Grads:
        if self.buf is None or not any(self.hits):
            return [None] * len(self.params)
        flat = c @ self.buf
        if self.scale is not None:
            flat[: self.gram_size].mul_(self.scale)
        return self.split(flat)

    def split(self, flat: torch.Tensor) -> Grads:
        """``flat`` as one view per leaf (``None`` for the leaves no loss reached)."""
        out: Grads = []
        off = 0
        for p, n, hit in zip(self.params, self.numels, self.hits):
            out.append(flat[off : off + n].view(p.shape) if hit else None)
            off += n
        return out

    def release(self) -> None:
        self.buf = None


class Direct(Rows):
    """Leaves whose per-loss gradients the backward passes form themselves."""

    kind = "direct"

    def needs(self) -> tuple[list[Call], list[torch.Tensor]]:
        return [], list(self.params)

    def take(self, i: int, grads: LossGrads) -> None:
        self.write(i, [grads.param(p) for p in self.params])


class Local(Rows):
    """Parameters of one generic module call with more parameters than output values: the
    k output gradients ``d_i`` are kept; for ``G`` a backward pass through the call's own
    graph (from its output edges to its parameters) forms each per-loss gradient, and the
    update is one more such pass with ``sum_i c_i d_i``.

    ``retain``: keep the call's graph after the update (otherwise that pass frees it)."""

    kind = "local"

    def __init__(
        self, params: list[torch.Tensor], spec: Spec, call: Call, n_gram: int, retain: bool
    ) -> None:
        super().__init__(params, spec, n_gram)
        self.call = call
        self.retain = retain
        self.outs: list[Grads | None] = [None] * spec.k

    def needs(self) -> tuple[list[Call], list[torch.Tensor]]:
        return [self.call], []

    def take(self, i: int, grads: LossGrads) -> None:
        d = grads.outputs(self.call)
        self.outs[i] = None if all(g is None for g in d) else d

    def _vjp(self, d: Grads, params: list[torch.Tensor], retain: bool) -> Grads:
        pairs = [(e, g) for e, g in zip(self.call.outputs, d) if g is not None]
        return list(
            torch.autograd.grad(
                [e for e, _ in pairs],
                params,
                grad_outputs=[g for _, g in pairs],
                retain_graph=retain,
                allow_unused=True,
            )
        )

    def block(self) -> torch.Tensor:
        if self.buf is None:
            gram_params = self.params[: self.n_gram]
            for i, d in enumerate(self.outs):
                if d is not None:
                    self.write(i, self._vjp(d, gram_params, True))
        return self.ensure()

    def gram(self) -> torch.Tensor:
        self.block()
        return super().gram()

    def folded(self) -> None:
        self.buf = None
        self.scale = None

    def combined(self, c: torch.Tensor) -> Grads:
        summed: Grads = []
        for j in range(len(self.call.outputs)):
            total: torch.Tensor | None = None
            dtype = c.dtype
            for i, d in enumerate(self.outs):
                g = None if d is None else d[j]
                if g is not None:
                    dtype = g.dtype
                    term = g.to(c.dtype) * c[i]
                    total = term if total is None else total.add_(term)
            summed.append(None if total is None else total.to(dtype))
        if all(g is None for g in summed):
            return [None] * len(self.params)
        grads = self._vjp(summed, self.params, self.retain)
        out: Grads = []
        storages: set[int] = set()
        for g in grads:
            if g is not None:
                g = g.to(c.dtype)
                key = g.untyped_storage().data_ptr()
                if key in storages:  # autograd may hand one tensor to two parameters
                    g = g.clone()
                storages.add(key)
            out.append(g)
        return out

    def release(self) -> None:
        super().release()
        self.outs = []

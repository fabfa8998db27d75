"""The units of the Gram matrix: sets of shared parameters whose block ``J_m`` is formed
together (step 4 of the package docstring), behind one interface.

Every unit

* says what the per-loss backward passes must reach for it (:meth:`Unit.needs`: recorded
  calls, whose output gradients it reads, and direct parameters, whose gradients it reads);
* receives each pass's results the same way (:meth:`Unit.take` with a :class:`LossGrads`);
* gives its ``(k, size)`` block of per-loss gradients (:meth:`Unit.block`, for the
  distributed folding), or its float64 ``(k, k)`` contribution to ``G`` directly
  (:meth:`Unit.gram`), and then drops what it kept (:meth:`Unit.release`).

:class:`Backward` gathers every unit's needs into the inputs of one ``autograd.grad`` call
per loss, so the engine runs ``for u in units: u.take(i, grads)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch.autograd.graph import GradientEdge

from .folding import block_gram, pow2
from .records import Call

__all__ = [
    "Backward",
    "Direct",
    "LinearBias",
    "LinearWeight",
    "Local",
    "LossGrads",
    "Rows",
    "Spec",
    "Unit",
]


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
    units need (in the units' order, each call once), then the direct parameters."""

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

    def run(self, loss: torch.Tensor) -> LossGrads:
        """One loss's backward pass down to the inputs (the graph is retained)."""
        grads = torch.autograd.grad(loss, self.inputs, retain_graph=True, allow_unused=True)
        return LossGrads(self, grads)


class LossGrads:
    """The results of one loss's backward pass, as every unit reads them."""

    def __init__(self, backward: Backward, grads: Sequence[torch.Tensor | None]) -> None:
        self._backward = backward
        self._grads = grads

    def outputs(self, call: Call) -> list[torch.Tensor | None]:
        """The gradients at the output edges of ``call`` (``None``: not reached)."""
        a, b = self._backward.spans[call]
        return list(self._grads[a:b])

    def first(self, call: Call) -> torch.Tensor | None:
        """The gradient at the first output of ``call`` (``nn.Linear`` has one)."""
        a, b = self._backward.spans[call]
        return self._grads[a] if b > a else None

    def param(self, p: torch.Tensor) -> torch.Tensor | None:
        """The gradient of a direct parameter."""
        return self._grads[self._backward.slots[id(p)]]


class Unit:
    """A set of shared parameters whose per-loss gradients are formed together."""

    kind: ClassVar[str] = "unit"

    def __init__(self, params: list[torch.Tensor], spec: Spec) -> None:
        self.params = params
        self.spec = spec
        self.numels = [p.numel() for p in params]
        self.size = sum(self.numels)

    @property
    def label(self) -> str:
        """How the unit is handled, as :attr:`GramianEngine.last_plan` reports it."""
        return self.kind

    def needs(self) -> tuple[list[Call], list[torch.Tensor]]:
        """The recorded calls and the direct parameters the backward passes must reach."""
        return [], []

    def take(self, i: int, grads: LossGrads) -> None:
        """Keep what loss ``i``'s backward pass gives this unit."""
        raise NotImplementedError  # pragma: no cover

    def block(self) -> torch.Tensor:
        """The ``(k, size)`` per-loss gradients (zero rows for losses that miss them)."""
        raise NotImplementedError  # pragma: no cover

    def gram(self) -> torch.Tensor:
        """This unit's ``(k, k)`` float64 contribution to ``G``."""
        raise NotImplementedError  # pragma: no cover

    def release(self) -> None:
        """Drop what was kept."""


class Rows(Unit):
    """A unit whose per-loss gradients are written into a ``(k, size)`` buffer."""

    def __init__(self, params: list[torch.Tensor], spec: Spec) -> None:
        super().__init__(params, spec)
        self.buf: torch.Tensor | None = None
        self.hit = False

    def ensure(self) -> torch.Tensor:
        """The buffer (zeros when first asked for)."""
        if self.buf is None:
            s = self.spec
            self.buf = torch.zeros((s.k, self.size), dtype=s.dtype, device=s.device)
        return self.buf

    def write(self, i: int, grads: Sequence[torch.Tensor | None]) -> None:
        """Row ``i``: the gradients of ``params`` (``None``: zeros)."""
        if all(g is None for g in grads):
            return
        buf = self.ensure()
        self.hit = True
        off = 0
        for g, n in zip(grads, self.numels):
            if g is not None:
                if g.layout != torch.strided:
                    g = g.to_dense()
                buf[i, off : off + n].copy_(g.reshape(-1))
            off += n

    def block(self) -> torch.Tensor:
        return self.ensure()

    def gram(self) -> torch.Tensor:
        if not self.hit:
            return self.spec.zero_gram()
        return block_gram(self.ensure(), owned=True)

    def release(self) -> None:
        self.buf = None


class Direct(Rows):
    """Parameters whose per-loss gradients the backward passes form themselves."""

    kind = "direct"

    def needs(self) -> tuple[list[Call], list[torch.Tensor]]:
        return [], list(self.params)

    def take(self, i: int, grads: LossGrads) -> None:
        self.write(i, [grads.param(p) for p in self.params])


class Local(Rows):
    """Parameters of one generic module call with more parameters than output values: the
    k output gradients are kept, and at folding time a backward pass through the call's
    own graph (from its output edges to its parameters) forms each per-loss gradient."""

    kind = "local"

    def __init__(self, params: list[torch.Tensor], spec: Spec, call: Call) -> None:
        super().__init__(params, spec)
        self.call = call
        self.outs: list[list[torch.Tensor | None] | None] = [None] * spec.k

    def needs(self) -> tuple[list[Call], list[torch.Tensor]]:
        return [self.call], []

    def take(self, i: int, grads: LossGrads) -> None:
        d = grads.outputs(self.call)
        self.outs[i] = None if all(g is None for g in d) else d

    def _vjp(self, d: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
        pairs = [(e, g) for e, g in zip(self.call.outputs, d) if g is not None]
        return list(
            torch.autograd.grad(
                [e for e, _ in pairs],
                self.params,
                grad_outputs=[g for _, g in pairs],
                retain_graph=True,
                allow_unused=True,
            )
        )

    def block(self) -> torch.Tensor:
        for i, d in enumerate(self.outs):
            if d is not None:
                self.write(i, self._vjp(d))
                self.outs[i] = None
        return self.ensure()

    def gram(self) -> torch.Tensor:
        self.block()
        return super().gram()

    def release(self) -> None:
        super().release()
        self.outs = []


class LinearBias(Rows):
    """``nn.Linear`` bias (all calls of it): the per-loss gradient is the row sum of the
    output gradients."""

    kind = "linear_bias"

    def __init__(self, bias: torch.Tensor, spec: Spec, calls: list[Call]) -> None:
        super().__init__([bias], spec)
        self.calls = calls

    def needs(self) -> tuple[list[Call], list[torch.Tensor]]:
        return list(self.calls), []

    def take(self, i: int, grads: LossGrads) -> None:
        ds = [grads.first(c) for c in self.calls]
        sums = [d.reshape(-1, d.shape[-1]).sum(0) for d in ds if d is not None]
        if sums:
            self.write(i, [torch.stack(sums).sum(0) if len(sums) > 1 else sums[0]])


class LinearWeight(Rows):
    """``nn.Linear`` weight (all calls of it): ``grad = D^T A`` with the rows of every call
    stacked. Its block product is formed one of three ways, chosen by operation count
    (``label``): ``trick`` (``<D_i, (A A^T) D_j>``, no weight-sized tensor; not under
    ``torch.distributed``), ``rows`` (each ``D_i^T A`` formed as the pass arrives: fewer
    inputs than rows) or ``outputs`` (the ``D_i`` kept, ``D_i^T A`` formed at folding)."""

    kind = "linear_weight"

    def __init__(self, weight: torch.Tensor, spec: Spec, calls: list[Call], dist: bool) -> None:
        super().__init__([weight], spec)
        self.calls = calls
        out_f, in_f = weight.shape
        self.call_rows = [int(c.x.numel()) // in_f for c in calls if c.x is not None]
        rows = self.rows = sum(self.call_rows)
        k = spec.k
        trick = k * rows * rows * out_f + rows * rows * in_f + k * k * rows * out_f
        form = k * rows * out_f * in_f + k * k * out_f * in_f
        self.trick = (not dist) and trick < form
        # Forming the weight gradient per loss right away keeps less than the output
        # gradients when the layer has fewer inputs than rows.
        self.keep_rows = not self.trick and in_f < rows
        self.ds: list[list[torch.Tensor | None] | None] = [None] * k

    @property
    def label(self) -> str:
        how = "trick" if self.trick else "rows" if self.keep_rows else "outputs"
        return f"{self.kind}:{how}"

    def needs(self) -> tuple[list[Call], list[torch.Tensor]]:
        return list(self.calls), []

    def take(self, i: int, grads: LossGrads) -> None:
        ds = [grads.first(c) for c in self.calls]
        if all(d is None for d in ds):
            return
        if self.keep_rows:
            self.write(i, [self._grad_of(ds)])
        else:
            self.ds[i] = ds

    def _inputs(self) -> list[torch.Tensor]:
        in_f = self.params[0].shape[1]
        return [c.x.reshape(-1, in_f) for c in self.calls]  # type: ignore[union-attr]

    def _grad_of(self, ds: Sequence[torch.Tensor | None]) -> torch.Tensor | None:
        """``sum over calls of D^T A`` for one loss."""
        out = None
        out_f = self.params[0].shape[0]
        for a, d in zip(self._inputs(), ds):
            if d is None:
                continue
            g = d.reshape(-1, out_f).T @ a
            out = g if out is None else out + g
        return out

    def block(self) -> torch.Tensor:
        for i, ds in enumerate(self.ds):
            if ds is not None:
                self.write(i, [self._grad_of(ds)])
                self.ds[i] = None
        return self.ensure()

    def gram(self) -> torch.Tensor:
        if not self.trick:
            self.block()
            return super().gram()
        if all(ds is None for ds in self.ds):
            return self.spec.zero_gram()
        a = torch.cat(self._inputs()).to(self.spec.dtype)
        sa = pow2(a.abs().amax())
        a = a / sa
        kern = a @ a.T  # (rows, rows)
        del a
        d = self._stacked_outputs()
        sd = pow2(d.abs().amax())
        d.div_(sd)
        kd = torch.matmul(kern, d)
        k = self.spec.k
        g = d.reshape(k, -1) @ kd.reshape(k, -1).T
        g = 0.5 * (g + g.T)
        return g.to(torch.float64) * (sa.to(torch.float64) * sd.to(torch.float64)) ** 2

    def _stacked_outputs(self) -> torch.Tensor:
        """The ``(k, rows, out_features)`` output gradients, every call's rows stacked."""
        out_f = self.params[0].shape[0]
        s = self.spec
        d = torch.zeros((s.k, self.rows, out_f), dtype=s.dtype, device=s.device)
        for i, ds in enumerate(self.ds):
            if ds is None:
                continue
            start = 0
            for n, di in zip(self.call_rows, ds):
                if di is not None:
                    d[i, start : start + n].copy_(di.reshape(-1, out_f))
                start += n
        return d

    def release(self) -> None:
        super().release()
        self.ds = []

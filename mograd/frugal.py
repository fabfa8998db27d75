"""The exact Gram matrix without the k x P Jacobian: :class:`GramianEngine`.

The default exact step (:mod:`mograd.gramian`) writes the k per-loss gradients into one
``(k, P)`` buffer ``J`` and forms ``G = J_S J_S^T``. The Gram matrix is a sum over parameter
blocks, ``G = sum_m J_m J_m^T``, and a block ``J_m`` can be formed from what a module sees
(its input and the per-loss gradients at its output) one module at a time, folded into
``G`` and dropped. The weights only need ``G`` (paper eq. 8); the update
``sum_i c_i grad L_i`` is then one backward pass of ``sum_i c_i L_i``
(:func:`weighted_gradients`). This is the Gramian-based Jacobian descent of Quinton & Rey,
*Jacobian Descent for Multi-Objective Optimization* (2024), Section 6; ``docs/performance.md``
states the trade (one more backward pass, O(P) memory).

How one Gram matrix is formed (:meth:`GramianEngine.gram`):

1. Forward hooks on every module that holds parameters itself and has no sub-module holding
   any record, per call, the gradient edges of its inputs and outputs (and, for
   ``nn.Linear``, its input tensor, which autograd keeps anyway).
2. A walk of the autograd graph finds every use of each parameter. A parameter whose uses
   all lie inside the recorded calls of its own module(s) is *local*; any other parameter
   (one used outside a module call, a module's own parameter beside parameterized
   sub-modules, a parameter of a module that was not hooked) is *direct*.
3. One backward pass per loss, only down to the recorded module outputs (no weight
   gradient is formed there) and to the direct parameters.
4. Per module, fold ``J_m J_m^T`` into ``G``:

   * ``nn.Linear`` weight, from the inputs ``A`` (rows: every leading batch dimension and
     every call of the weight, so weight tying between linear layers is exact) and the
     output gradients ``D_i``: ``<D_i^T A, D_j^T A> = <D_i, (A A^T) D_j>``, without any
     weight-sized tensor, when that is cheaper than forming the k weight gradients
     ``D_i^T A`` (chosen per layer by operation count: the activation trick wins when the
     batch is small relative to the layer); bias: ``sum_rows D_i``;
   * every other module (convolutions, normalization layers, embeddings, ...): with fewer
     parameters than output values, its parameters are handled as direct (step 3 forms
     their per-loss gradients, which are smaller than the output gradients); otherwise
     the k output gradients are kept and each per-loss parameter gradient is formed by a
     backward pass through the module's own graph only (from its output edges to its
     parameters), then ``B B^T``;
   * direct parameters: their per-loss gradients from step 3.

   Blocks are rescaled by a power of two before the product and summed in float64, so a
   finite set of gradients never gives an overflowed ``G``.

Memory: the k per-loss gradients at the hooked outputs (for each module the smaller of its
output size and its parameter count is kept), k x the largest module's parameters while it
is folded, and k x the direct parameters; never k x P (unless every parameter is direct).

Under ``torch.distributed`` the Gram matrix of the rank-averaged gradients needs the other
ranks' per-loss gradients, so the activation trick (a per-rank quantity) is not used:
per-loss parameter gradients are formed module by module, averaged over the process group
in buckets of at most ``bucket_elements`` columns in the shared parameters' order (the same
collectives on every rank), folded and dropped.

Assumption (the ``nn.Module`` contract): a hooked module's forward computes its outputs
from its inputs and its own parameters. Parameters used outside module calls are found by
the graph walk and handled as direct, so weight tying of any kind stays exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.autograd.graph import GradientEdge, get_gradient_edge
from torch.utils._pytree import tree_flatten

from . import _distributed as distributed
from .gramian import leaves_below, row_dtype

__all__ = ["GramianEngine", "weighted_gradients"]

DEFAULT_BUCKET = 1 << 22


@dataclass
class _Call:
    """One recorded forward call of a hooked module."""

    module: nn.Module
    outputs: list[GradientEdge]
    out_numel: int
    stops: set[Any]
    linear: bool
    x: torch.Tensor | None = None  # nn.Linear input (detached view)
    x_version: int = 0
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    local: set[Any] = field(default_factory=set)  # autograd nodes inside the call
    found: set[int] = field(default_factory=set)  # ids of parameters used inside


def _pow2(amax: torch.Tensor) -> torch.Tensor:
    """A power of two close to ``amax`` (1 for 0), so that dividing by it is exact."""
    amax = torch.where(amax > 0, amax, torch.ones_like(amax))
    _, exp = torch.frexp(amax)
    return torch.ldexp(torch.ones_like(amax), exp.to(amax.dtype))


def _block_gram(block: torch.Tensor, *, owned: bool) -> torch.Tensor:
    """``block @ block.T`` in float64, rescaled so that it overflows only for non-finite
    entries. ``owned``: ``block`` may be divided in place."""
    s = _pow2(block.abs().amax())
    scaled = block.div_(s) if owned else block / s
    out = (scaled @ scaled.T).to(torch.float64)
    return out * s.to(torch.float64) ** 2


class _Unit:
    """A set of shared parameters whose per-loss gradients are formed together."""

    kind = "unit"

    def __init__(self, params: list[torch.Tensor]) -> None:
        self.params = params
        self.numels = [p.numel() for p in params]
        self.size = sum(self.numels)

    def block(self, k: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The ``(k, size)`` per-loss gradients (zero rows for losses that miss them)."""
        raise NotImplementedError  # pragma: no cover

    def gram(self, k: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """This unit's ``(k, k)`` float64 contribution to ``G``."""
        raise NotImplementedError  # pragma: no cover

    def release(self) -> None:
        pass


class _Rows(_Unit):
    """Units whose per-loss rows are kept (direct parameters, small modules)."""

    def __init__(self, params: list[torch.Tensor]) -> None:
        super().__init__(params)
        self.buf: torch.Tensor | None = None
        self.hit = False

    def ensure(self, k: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        if self.buf is None:
            self.buf = torch.zeros((k, self.size), dtype=dtype, device=device)
        return self.buf

    def write(
        self,
        i: int,
        k: int,
        grads: Sequence[torch.Tensor | None],
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        if all(g is None for g in grads):
            return
        buf = self.ensure(k, dtype, device)
        self.hit = True
        off = 0
        for g, n in zip(grads, self.numels):
            if g is not None:
                if g.layout != torch.strided:
                    g = g.to_dense()
                buf[i, off : off + n].copy_(g.reshape(-1))
            off += n

    def block(self, k: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        return self.ensure(k, dtype, device)

    def gram(self, k: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        if not self.hit:
            return torch.zeros((k, k), dtype=torch.float64, device=device)
        return _block_gram(self.ensure(k, dtype, device), owned=True)

    def release(self) -> None:
        self.buf = None


class _Direct(_Rows):
    kind = "direct"


class _Local(_Rows):
    """Parameters of one generic module call with more parameters than output values: the
    k output gradients are kept, and at folding time a backward pass through the call's
    own graph (from its output edges to its parameters) forms each per-loss gradient."""

    kind = "local"

    def __init__(self, params: list[torch.Tensor], call: _Call) -> None:
        super().__init__(params)
        self.call = call
        self.outs: list[list[torch.Tensor | None] | None] = []

    def vjp(self, d: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
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

    def take_d(self, d: list[torch.Tensor | None] | None) -> None:
        self.outs.append(d)

    def block(self, k: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        for i in range(k):
            d = self.outs[i]
            if d is not None:
                self.write(i, k, self.vjp(d), dtype, device)
                self.outs[i] = None
        return self.ensure(k, dtype, device)

    def gram(self, k: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        self.block(k, dtype, device)
        return super().gram(k, dtype, device)

    def release(self) -> None:
        super().release()
        self.outs = []


class _LinearBias(_Rows):
    """``nn.Linear`` bias: the per-loss gradient is the row sum of the output gradient."""

    kind = "linear_bias"

    def take_d(
        self,
        i: int,
        k: int,
        ds: Sequence[torch.Tensor | None],
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        sums = [d.reshape(-1, d.shape[-1]).sum(0) for d in ds if d is not None]
        if sums:
            self.write(
                i, k, [torch.stack(sums).sum(0) if len(sums) > 1 else sums[0]], dtype, device
            )


class _LinearWeight(_Rows):
    """``nn.Linear`` weight (all calls of it): ``grad = D^T A`` with rows stacked."""

    kind = "linear_weight"

    def __init__(self, weight: torch.Tensor, calls: list[_Call], k: int, dist: bool) -> None:
        super().__init__([weight])
        self.calls = calls
        out_f, in_f = weight.shape
        rows = sum(int(c.x.numel()) // in_f for c in calls if c.x is not None)
        self.rows = rows
        trick = k * rows * rows * out_f + rows * rows * in_f + k * k * rows * out_f
        form = k * rows * out_f * in_f + k * k * out_f * in_f
        self.trick = (not dist) and trick < form
        # Forming the weight gradient per loss right away keeps less than the output
        # gradients when the layer has fewer inputs than rows.
        self.keep_rows = not self.trick and in_f < rows
        self.ds: list[list[torch.Tensor | None] | None] = []

    def inputs(self) -> list[torch.Tensor]:
        in_f = self.params[0].shape[1]
        return [c.x.reshape(-1, in_f) for c in self.calls]  # type: ignore[union-attr]

    def grad_of(self, ds: Sequence[torch.Tensor | None]) -> torch.Tensor | None:
        out = None
        out_f = self.params[0].shape[0]
        for a, d in zip(self.inputs(), ds):
            if d is None:
                continue
            g = d.reshape(-1, out_f).T @ a
            out = g if out is None else out + g
        return out

    def take_d(
        self,
        i: int,
        k: int,
        ds: Sequence[torch.Tensor | None],
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        if all(d is None for d in ds):
            self.ds.append(None)
            return
        if self.keep_rows:
            self.write(i, k, [self.grad_of(ds)], dtype, device)
            self.ds.append(None)
        else:
            self.ds.append(list(ds))

    def block(self, k: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        if not self.keep_rows:
            for i in range(k):
                ds = self.ds[i]
                if ds is not None:
                    self.write(i, k, [self.grad_of(ds)], dtype, device)
                    self.ds[i] = None
        return self.ensure(k, dtype, device)

    def gram(self, k: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        if not self.trick:
            self.block(k, dtype, device)
            return super().gram(k, dtype, device)
        out_f = self.params[0].shape[0]
        if all(ds is None for ds in self.ds):
            return torch.zeros((k, k), dtype=torch.float64, device=device)
        a = torch.cat(self.inputs()).to(dtype)
        sa = _pow2(a.abs().amax())
        a = a / sa
        kern = a @ a.T  # (rows, rows)
        del a
        d = torch.zeros((k, self.rows, out_f), dtype=dtype, device=device)
        for i, ds in enumerate(self.ds):
            if ds is None:
                continue
            start = 0
            for c, di in zip(self.calls, ds):
                n = c.x.numel() // self.params[0].shape[1]  # type: ignore[union-attr]
                if di is not None:
                    d[i, start : start + n].copy_(di.reshape(-1, out_f))
                start += n
        sd = _pow2(d.abs().amax())
        d.div_(sd)
        kd = torch.matmul(kern, d)
        g = d.reshape(k, -1) @ kd.reshape(k, -1).T
        g = 0.5 * (g + g.T)
        return g.to(torch.float64) * (sa.to(torch.float64) * sd.to(torch.float64)) ** 2

    def release(self) -> None:
        super().release()
        self.ds = []


class GramianEngine:
    """The exact Gram matrix of the per-loss gradients, without the k x P Jacobian.

    ``last_plan`` lists, after each :meth:`gram`, how each group of shared parameters was
    handled (``"linear_weight:trick"``, ``"linear_weight:rows"``, ``"linear_bias"``,
    ``"local"``, ``"direct"``, ...) and its size.

    Register it on the model once; every forward pass under grad mode is recorded by
    forward hooks until the next :meth:`gram` (or :meth:`clear`). Then::

        g, reached = engine.gram(losses)           # k backward passes to the module outputs
        c = coefficients_from(g)                   # any weighting of mograd.weightings
        grads = weighted_gradients(losses, c, params)   # one backward pass
        # write grads into .grad

    Args:
        modules: The model (or several modules) whose parameters enter the Gram matrix.
            Every module that holds parameters itself and has no sub-module holding
            parameters is hooked.
        params: Optional: the parameters the Gram matrix will be asked about (e.g. an
            optimizer's); each must be held by some module in ``modules`` (checked here,
            so that a forgotten module is a clear error rather than a silent fall back
            to the k x numel path for its parameters).
        bucket_elements: Under ``torch.distributed``, the most parameter columns averaged
            over the process group in one collective (larger parameters go alone).

    Raises:
        TypeError: If ``modules`` is not a module or a sequence of modules.
        ValueError: If a parameter of ``params`` belongs to none of ``modules``.

    See ``docs/performance.md`` (frugal exact step) and the module docstring.
    """

    def __init__(
        self,
        modules: nn.Module | Sequence[nn.Module],
        params: Sequence[torch.Tensor] | None = None,
        *,
        bucket_elements: int = DEFAULT_BUCKET,
    ) -> None:
        if isinstance(modules, nn.Module):
            mods = [modules]
        elif isinstance(modules, Sequence) and not isinstance(modules, (str, bytes)):
            mods = list(modules)
        else:
            raise TypeError(
                f"modules must be an nn.Module or a sequence of them, got {type(modules).__name__}"
            )
        if not mods:
            raise ValueError("modules is empty: pass the model whose parameters are trained")
        for i, m in enumerate(mods):
            if not isinstance(m, nn.Module):
                raise TypeError(f"modules[{i}] is a {type(m).__name__}, not an nn.Module")
        if (
            isinstance(bucket_elements, bool)
            or not isinstance(bucket_elements, int)
            or (bucket_elements < 1)
        ):
            raise ValueError(f"bucket_elements must be an int >= 1, got {bucket_elements!r}")
        self.bucket_elements = bucket_elements
        seen: set[int] = set()
        self._modules: list[nn.Module] = []
        for root in mods:
            for m in root.modules():
                if id(m) not in seen:
                    seen.add(id(m))
                    self._modules.append(m)
        owned: set[int] = set()
        for m in self._modules:
            for p in m._parameters.values():
                if p is not None:
                    owned.add(id(p))
        self.params: list[torch.Tensor] | None = None
        if params is not None:
            plist = [params] if isinstance(params, torch.Tensor) else list(params)
            for i, q in enumerate(plist):
                if not isinstance(q, torch.Tensor):
                    raise TypeError(f"params[{i}] is a {type(q).__name__}, not a tensor")
            missing = [i for i, p in enumerate(plist) if id(p) not in owned]
            if missing:
                shown = ", ".join(
                    f"params[{i}] (shape {tuple(plist[i].shape)})" for i in missing[:4]
                )
                more = f" and {len(missing) - 4} more" if len(missing) > 4 else ""
                raise ValueError(
                    f"{shown}{more} belong to none of the modules given to GramianEngine: "
                    "pass the module(s) holding every parameter the optimizer trains (a "
                    "loose nn.Parameter can be held by an nn.ParameterList passed along)"
                )
            self.params = plist
        self._records: list[_Call] = []
        self.last_plan: list[tuple[str, int]] = []
        self._handles: list[Any] = []
        for m in self._modules:
            if not any(p is not None for p in m._parameters.values()):
                continue
            if any(
                any(p is not None for p in sub._parameters.values())
                for sub in m.modules()
                if sub is not m
            ):
                continue  # its own parameters are handled as direct
            self._handles.append(m.register_forward_hook(self._hook, with_kwargs=True))

    # ---------------------------------------------------------------- recording
    def _hook(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> None:
        if not torch.is_grad_enabled():
            return
        outs = [t for t in tree_flatten(output)[0] if isinstance(t, torch.Tensor)]
        edges = [get_gradient_edge(t) for t in outs if t.requires_grad]
        if not edges:
            return
        stops = {
            get_gradient_edge(t).node
            for t in tree_flatten((args, kwargs))[0]
            if isinstance(t, torch.Tensor) and t.requires_grad
        }
        numel = sum(t.numel() for t in outs if t.requires_grad)
        call = _Call(module, edges, numel, stops, linear=False)
        if type(module).forward is nn.Linear.forward and len(outs) == 1:
            x = args[0] if args else kwargs.get("input")
            w, b = module.weight, module.bias
            assert isinstance(w, torch.Tensor) and (b is None or isinstance(b, torch.Tensor))
            y = outs[0]
            if (
                isinstance(x, torch.Tensor)
                and x.layout == torch.strided
                and x.dtype == w.dtype == y.dtype
                and x.shape[-1] == w.shape[1]
            ):
                call.linear = True
                call.x = x.detach()
                call.x_version = x._version
                call.weight, call.bias = w, b
        self._records.append(call)

    def clear(self) -> None:
        """Forget the recorded forward calls (and the graph they keep alive)."""
        self._records = []

    def remove(self) -> None:
        """Remove the forward hooks and forget the records."""
        for h in self._handles:
            h.remove()
        self._handles = []
        self.clear()

    def __enter__(self) -> GramianEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    # ---------------------------------------------------------------- the Gram matrix
    def gram(
        self,
        losses: Sequence[torch.Tensor],
        params: Sequence[torch.Tensor] | None = None,
        shared: Sequence[torch.Tensor] | None = None,
        *,
        process_group: Any = None,
    ) -> tuple[torch.Tensor, list[bool]]:
        """``G = J_S J_S^T`` of the losses' gradients on ``shared``, never holding ``J``.

        The graph is always retained (the weighted backward pass needs it). The records
        are consumed: the next call needs a new forward pass.

        Args:
            losses: k scalar losses from the recorded forward pass(es).
            params: The parameters (default: those given at construction); ``reached``
                is reported on them.
            shared: The parameters whose gradients form ``G`` (default: ``params``);
                each must be one of ``params``.
            process_group: Under ``torch.distributed``, the group over which the per-loss
                gradients are averaged before ``G`` is formed (default: the world).

        Returns:
            ``G`` (k x k, float32, or float64 for float64 parameters) and, for each of
            ``params``, whether some loss (on some rank) reaches it.

        Raises:
            ValueError: For malformed input, or a loss that reaches none of ``params``.
        """
        try:
            return self._gram(list(losses), params, shared, process_group)
        finally:
            self.clear()

    def _gram(
        self,
        losses: list[torch.Tensor],
        params: Sequence[torch.Tensor] | None,
        shared: Sequence[torch.Tensor] | None,
        process_group: Any,
    ) -> tuple[torch.Tensor, list[bool]]:
        if params is None:
            if self.params is None:
                raise ValueError("pass params (none were given to GramianEngine)")
            params = self.params
        params = [params] if isinstance(params, torch.Tensor) else list(params)
        if not params:
            raise ValueError("params is empty")
        if not losses:
            raise ValueError("losses is empty: pass at least one scalar loss")
        for i, loss in enumerate(losses):
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                raise ValueError(f"losses[{i}] must be a scalar tensor")
            if not loss.requires_grad:
                raise ValueError(f"losses[{i}] does not require grad")
        pids = {id(p): j for j, p in enumerate(params)}
        if shared is None:
            shared = params
        else:
            shared = [shared] if isinstance(shared, torch.Tensor) else list(shared)
            for i, p in enumerate(shared):
                if id(p) not in pids:
                    raise ValueError(f"shared[{i}] (shape {tuple(p.shape)}) is not one of params")
        k = len(losses)
        ref = params[0]
        dtype, device = row_dtype(ref), ref.device
        dist = distributed.is_distributed()

        # Every use of every parameter, and which loss reaches some parameter.
        consumers: dict[int, set[Any]] = {}
        leaf_losses: set[int] = set()
        seen: set[Any] = set()
        for i, loss in enumerate(losses):
            if loss.grad_fn is None:
                if id(loss) in pids:
                    leaf_losses.add(id(loss))
                    consumers.setdefault(id(loss), set())
                    continue
                raise ValueError(f"losses[{i}] does not depend on any of params")
            if not _reaches(loss.grad_fn, pids):
                raise ValueError(f"losses[{i}] does not depend on any of params")
            stack = [loss.grad_fn]
            while stack:
                fn = stack.pop()
                if fn in seen:
                    continue
                seen.add(fn)
                for nxt, _ in fn.next_functions:
                    if nxt is None:
                        continue
                    var = getattr(nxt, "variable", None)
                    if var is not None:
                        if id(var) in pids:
                            consumers.setdefault(id(var), set()).add(fn)
                        continue
                    if nxt not in seen:
                        stack.append(nxt)
        reached = [id(p) in consumers for p in params]

        # Which records hold which parameter uses.
        calls = [c for c in self._records if any(e.node in seen for e in c.outputs)]
        holders: dict[int, list[_Call]] = {}
        for c in calls:
            _local_walk(c, pids)
            for pid in c.found:
                holders.setdefault(pid, []).append(c)

        units: list[_Unit] = []
        direct: list[torch.Tensor] = []
        lin_w: dict[int, _LinearWeight] = {}
        lin_b: dict[int, _LinearBias] = {}
        local: dict[int, list[torch.Tensor]] = {}  # id(call) -> its local params
        call_by_id = {id(c): c for c in calls}
        for p in shared:
            pid = id(p)
            if pid not in consumers:
                continue  # no loss reaches it: no contribution
            hs = holders.get(pid, [])
            inside = set().union(*(c.local for c in hs)) if hs else set()
            if pid in leaf_losses or not hs or not consumers[pid] <= inside:
                direct.append(p)
            elif all(
                c.linear and c.weight is p and c.x is not None and c.x._version == c.x_version
                for c in hs
            ):
                lin_w[pid] = _LinearWeight(p, hs, k, dist)
            elif all(c.linear and c.bias is p for c in hs):
                lin_b[pid] = _LinearBias([p])
            elif len(hs) == 1 and not hs[0].linear:
                local.setdefault(id(hs[0]), []).append(p)
            else:
                direct.append(p)
        units.extend(lin_w.values())
        units.extend(lin_b.values())
        for cid, ps in local.items():
            c = call_by_id[cid]
            if sum(p.numel() for p in ps) <= c.out_numel:
                # Fewer parameters than output values: keeping their k per-loss gradients
                # is cheaper than keeping the output gradients, and the per-loss backward
                # passes form them anyway.
                direct.extend(ps)
            else:
                units.append(_Local(ps, c))
        direct_unit = _Direct(direct) if direct else None
        if direct_unit is not None:
            units.append(direct_unit)

        self.last_plan = [(_label(u), u.size) for u in units]

        # Which record outputs the per-loss backward passes must reach.
        needed: list[_Call] = []
        needed_ids: set[int] = set()
        for u in units:
            cs = (
                u.calls
                if isinstance(u, _LinearWeight)
                else (
                    holders[id(u.params[0])]
                    if isinstance(u, _LinearBias)
                    else [u.call]
                    if isinstance(u, _Local)
                    else []
                )
            )
            for c in cs:
                if id(c) not in needed_ids:
                    needed_ids.add(id(c))
                    needed.append(c)
        edges = [e for c in needed for e in c.outputs]
        spans = []
        off = 0
        for c in needed:
            spans.append((id(c), off, off + len(c.outputs)))
            off += len(c.outputs)
        inputs: list[Any] = [*edges, *direct]
        if inputs:
            for i, loss in enumerate(losses):
                grads = torch.autograd.grad(loss, inputs, retain_graph=True, allow_unused=True)
                per_call: dict[int, list[torch.Tensor | None]] = {
                    cid: list(grads[a:b]) for cid, a, b in spans
                }
                for u in units:
                    if isinstance(u, _LinearWeight):
                        ds = [_first(per_call[id(c)]) for c in u.calls]
                        u.take_d(i, k, ds, dtype, device)
                    elif isinstance(u, _LinearBias):
                        ds = [_first(per_call[id(c)]) for c in holders[id(u.params[0])]]
                        u.take_d(i, k, ds, dtype, device)
                    elif isinstance(u, _Local):
                        d = per_call[id(u.call)]
                        u.take_d(None if all(g is None for g in d) else d)
                if direct_unit is not None:
                    direct_unit.write(i, k, list(grads[len(edges) :]), dtype, device)
                del grads, per_call

        if not dist:
            g = torch.zeros((k, k), dtype=torch.float64, device=device)
            for u in units:
                g += u.gram(k, dtype, device)
                u.release()
            return g.to(dtype), reached
        g = self._distributed_gram(units, shared, k, dtype, device, process_group)
        flags = torch.tensor(reached, dtype=dtype, device=device)
        distributed.sum_(flags, process_group)
        return g.to(dtype), [bool(r > 0) for r in flags.tolist()]

    def _distributed_gram(
        self,
        units: list[_Unit],
        shared: Sequence[torch.Tensor],
        k: int,
        dtype: torch.dtype,
        device: torch.device,
        group: Any,
    ) -> torch.Tensor:
        """Average each per-loss gradient column over the ranks, in the shared order."""
        where: dict[int, tuple[_Unit, int]] = {}
        remaining: dict[int, int] = {}
        for u in units:
            off = 0
            for p, n in zip(u.params, u.numels):
                where[id(p)] = (u, off)
                off += n
            remaining[id(u)] = len(u.params)
        cache: dict[int, torch.Tensor] = {}
        g = torch.zeros((k, k), dtype=torch.float64, device=device)
        chunks: list[list[torch.Tensor]] = []
        cur: list[torch.Tensor] = []
        size = 0
        for p in shared:
            if cur and size + p.numel() > self.bucket_elements:
                chunks.append(cur)
                cur, size = [], 0
            cur.append(p)
            size += p.numel()
        if cur:
            chunks.append(cur)
        for chunk in chunks:
            buf = torch.zeros((k, sum(p.numel() for p in chunk)), dtype=dtype, device=device)
            col = 0
            for p in chunk:
                n = p.numel()
                hit = where.get(id(p))
                if hit is not None:
                    u, off = hit
                    blk = cache.get(id(u))
                    if blk is None:
                        blk = u.block(k, dtype, device)
                        cache[id(u)] = blk
                    buf[:, col : col + n].copy_(blk[:, off : off + n])
                    remaining[id(u)] -= 1
                    if remaining[id(u)] == 0:
                        del cache[id(u)]
                        u.release()
                col += n
            distributed.mean_(buf, group)
            g += _block_gram(buf, owned=True)
            del buf
        return g


def _label(u: _Unit) -> str:
    if isinstance(u, _LinearWeight):
        return "linear_weight:" + ("trick" if u.trick else "rows" if u.keep_rows else "outputs")
    return u.kind


def _first(grads: Sequence[torch.Tensor | None]) -> torch.Tensor | None:
    return grads[0] if grads else None


def _reaches(root: Any, pids: dict[int, int]) -> bool:
    """Whether the graph below ``root`` uses one of the parameters (stops at the first)."""
    return any(id(var) in pids for var in leaves_below([root]))


def _local_walk(call: _Call, pids: dict[int, int]) -> None:
    """The autograd nodes of one call (from its outputs down to its inputs)."""
    stack = [e.node for e in call.outputs]
    local: set[Any] = set()
    found: set[int] = set()
    while stack:
        fn = stack.pop()
        if fn in local or fn in call.stops:
            continue
        var = getattr(fn, "variable", None)
        if var is not None:  # the output is a parameter itself: a use outside the call
            continue
        local.add(fn)
        for nxt, _ in fn.next_functions:
            if nxt is None:
                continue
            v = getattr(nxt, "variable", None)
            if v is not None:
                if id(v) in pids:
                    found.add(id(v))
                continue
            stack.append(nxt)
    call.local, call.found = local, found


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
        dtype = row_dtype(params[0])
        flat = torch.cat(
            [
                torch.zeros(p.numel(), dtype=dtype, device=p.device)
                if g is None
                else (g.to_dense() if g.layout != torch.strided else g).reshape(-1).to(dtype)
                for p, g in zip(params, grads[:n])
            ]
        )
        distributed.mean_(flat, process_group)
        hits = [g is not None for g in grads[:n]] if reached is None else list(reached)
        parts = torch.split(flat, [p.numel() for p in params])
        grads[:n] = [
            part.view_as(p).to(p.dtype) if hit else None
            for p, part, hit in zip(params, parts, hits)
        ]
    return grads

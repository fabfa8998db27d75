"""The engine: forward hooks, records, :meth:`GramianEngine.gram` (the plan, the per-loss
backward passes into the units, the folding) and :meth:`GramianEngine.update` (each unit's
part of ``sum_i c_i grad L_i`` from what it kept)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .. import _distributed as distributed
from ..gramian import row_dtype
from .folding import distributed_gram, local_gram, reached_anywhere
from .plan import Plan, make_plan
from .records import Call, hooked_modules, record
from .units import Backward, Grads, Spec, Unit

__all__ = ["DEFAULT_BUCKET", "GramianEngine"]

DEFAULT_BUCKET = 1 << 22


@dataclass
class _Pending:
    """What :meth:`GramianEngine.update` needs after :meth:`GramianEngine.gram`."""

    plan: Plan
    params: list[torch.Tensor]
    extras: list[torch.Tensor]
    spec: Spec
    group: Any
    dist: bool
    retain: bool
    updated: bool = False


class GramianEngine:
    """The exact Gram matrix of the per-loss gradients, and the update from the records,
    without the k x P Jacobian.

    ``last_plan`` lists, after each :meth:`gram`, how each group of shared parameters was
    handled (``"linear_weight:trick"``, ``"linear_weight:rows"``, ``"linear_bias"``,
    ``"local"``, ``"direct"``, ...) and its size.

    Register it on the model once; every forward pass under grad mode is recorded by
    forward hooks until the next :meth:`gram` (or :meth:`clear`). Then::

        g, reached = engine.gram(losses)   # k backward passes to the module outputs
        c = coefficients_from(g)           # any weighting of mograd.weightings
        grads = engine.update(c)           # sum_i c_i grad L_i from the records
        engine.clear()
        # write grads into .grad

    :meth:`update` forms ``nn.Linear`` weight gradients as ``(sum_i c_i D_i)^T A`` from
    the recorded inputs and output gradients, with no backward pass;
    :func:`weighted_gradients` (one backward pass of ``sum_i c_i L_i``) gives the same.

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

    Example:
        >>> from mograd.frugal import weighted_gradients
        >>> model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 2))
        >>> params = list(model.parameters())
        >>> engine = GramianEngine(model, params)
        >>> out = model(torch.randn(4, 8))
        >>> losses = [out[:, 0].pow(2).mean(), out[:, 1].abs().mean()]
        >>> g, reached = engine.gram(losses)
        >>> g.shape, g.dtype, all(reached)
        (torch.Size([2, 2]), torch.float64, True)
        >>> engine.last_plan  # batch 4 is small against the layers: the activation trick
        [('linear_weight:trick', 256), ('linear_weight:trick', 64),
         ('linear_bias', 32), ('linear_bias', 2)]
        >>> c = torch.tensor([0.5, 0.5])
        >>> grads = engine.update(c)
        >>> [tuple(gr.shape) for gr in grads]
        [(32, 8), (32,), (2, 32), (2,)]
        >>> engine.clear()
        >>> same = weighted_gradients(losses, c, params)  # one more backward pass
        >>> all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads, same))
        True
        >>> engine.remove()

    See ``docs/performance.md`` (frugal exact step) and the :mod:`mograd.frugal` docstring.
    """

    def __init__(
        self,
        modules: nn.Module | Sequence[nn.Module],
        params: Sequence[torch.Tensor] | None = None,
        *,
        bucket_elements: int = DEFAULT_BUCKET,
    ) -> None:
        roots = _module_list(modules)
        if (
            isinstance(bucket_elements, bool)
            or not isinstance(bucket_elements, int)
            or (bucket_elements < 1)
        ):
            raise ValueError(f"bucket_elements must be an int >= 1, got {bucket_elements!r}")
        self.bucket_elements = bucket_elements
        self._modules = _unique_modules(roots)
        self.params: list[torch.Tensor] | None = (
            None if params is None else _held_params(params, self._modules)
        )
        self._records: list[Call] = []
        self._pending: _Pending | None = None
        self.last_plan: list[tuple[str, int]] = []
        self._handles: list[Any] = [
            m.register_forward_hook(self._hook, with_kwargs=True)
            for m in hooked_modules(self._modules)
        ]

    # ---------------------------------------------------------------- recording
    def _hook(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> None:
        if not torch.is_grad_enabled():
            return
        call = record(module, args, kwargs, output)
        if call is not None:
            self._records.append(call)

    def clear(self) -> None:
        """Forget the recorded forward calls and what :meth:`update` would need (and the
        graph they keep alive)."""
        self._records = []
        self._drop_pending()

    def _drop_pending(self) -> None:
        if self._pending is not None:
            for u in self._pending.plan.units:
                u.release()
            self._pending = None

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
        extras: Sequence[torch.Tensor] = (),
        retain_graph: bool = True,
        process_group: Any = None,
    ) -> tuple[torch.Tensor, list[bool]]:
        """``G = J_S J_S^T`` of the losses' gradients on ``shared``, never holding ``J``.

        The records are consumed: the next call needs a new forward pass. What
        :meth:`update` needs is kept until :meth:`clear` (or the next :meth:`gram`).

        Args:
            losses: k scalar losses from the recorded forward pass(es).
            params: The parameters (default: those given at construction); ``reached``
                is reported on them, and :meth:`update` writes their gradients.
            shared: The parameters whose gradients form ``G`` (default: ``params``);
                each must be one of ``params``.
            extras: Further leaves (not in ``params``) that :meth:`update` also writes,
                e.g. leaves outside an optimizer; they never enter ``G``.
            retain_graph: Keep the autograd graph (for a later backward pass, e.g.
                :func:`weighted_gradients`). Otherwise the last per-loss pass frees what it
                runs through and :meth:`update` frees the rest (it can then run once).
            process_group: Under ``torch.distributed``, the group over which the per-loss
                gradients are averaged before ``G`` is formed (default: the world).

        Returns:
            ``G`` (k x k) in float64: blocks are summed in float64 after a power-of-two
            rescaling, so finite gradients never give an overflowed ``G``; and, for each
            of ``params``, whether some loss (on some rank) reaches it.

        Raises:
            ValueError: For malformed input, or a loss that reaches none of ``params``.
        """
        self._drop_pending()
        records, self._records = self._records, []
        try:
            return self._gram(
                list(losses), params, shared, extras, retain_graph, process_group, records
            )
        except BaseException:
            self._drop_pending()
            raise

    def _gram(
        self,
        losses: list[torch.Tensor],
        params: Sequence[torch.Tensor] | None,
        shared: Sequence[torch.Tensor] | None,
        extras: Sequence[torch.Tensor],
        retain: bool,
        process_group: Any,
        records: list[Call],
    ) -> tuple[torch.Tensor, list[bool]]:
        params = self._resolve_params(params)
        _check_losses(losses)
        shared = _resolve_shared(shared, params)
        extra_list = _resolve_extras(extras, params)
        ref = params[0]
        spec = Spec(len(losses), row_dtype(ref), ref.device)
        dist = distributed.is_distributed()
        plan = make_plan(
            losses, params, shared, records, spec, dist=dist, extras=extra_list, retain=retain
        )
        self.last_plan = plan.summary()
        self._pending = _Pending(plan, params, extra_list, spec, process_group, dist, retain)
        _backward_into(plan.units, losses, retain)
        if not dist:
            return local_gram(plan.units, spec), plan.reached
        g = distributed_gram(plan.units, shared, spec, self.bucket_elements, process_group)
        return g, reached_anywhere(plan.reached, spec, process_group)

    # ---------------------------------------------------------------- the update
    def update(self, coefficients: torch.Tensor) -> list[torch.Tensor | None]:
        """``sum_i c_i grad L_i`` on the ``params`` and ``extras`` of the last :meth:`gram`,
        from what its units kept: ``nn.Linear`` weights as ``(sum_i c_i D_i)^T A`` from the
        records, other modules by one backward pass through their own graph with the
        combined output gradient, the rest as ``c`` times their per-loss gradients.

        Under ``torch.distributed`` the gradients of ``params`` are averaged over the
        process group (one collective; a parameter no rank reaches stays ``None``); those
        of ``extras`` are not. Nothing is written to ``.grad``.

        Args:
            coefficients: The k coefficients ``c`` (cast to the row dtype).

        Returns:
            The gradients of ``params`` then ``extras`` in the row dtype (``None`` where no
            loss reaches one).

        Raises:
            RuntimeError: Without a :meth:`gram` since the last :meth:`clear`, or a second
                time after a :meth:`gram` that did not retain the graph.
            ValueError: If ``coefficients`` does not have one entry per loss.
        """
        pending = self._pending
        if pending is None:
            raise RuntimeError("update() needs a gram() first (clear() forgets it)")
        if pending.updated and not pending.retain:
            raise RuntimeError(
                "update() already ran and freed the graph: pass retain_graph=True to gram() "
                "to form more than one update"
            )
        pending.updated = True
        spec = pending.spec
        c = coefficients.detach().to(device=spec.device, dtype=spec.dtype).reshape(-1)
        if c.shape[0] != spec.k:
            raise ValueError(f"coefficients has {c.shape[0]} entries for {spec.k} losses")
        found: dict[int, torch.Tensor | None] = {}
        for u in pending.plan.units:
            cu = c if u.spec.dtype == c.dtype else c.to(u.spec.dtype)
            for p, g in zip(u.params, u.combined(cu)):
                found[id(p)] = g
            if not pending.retain:
                u.release()  # it cannot run again: its records go as its gradients come
        grads: Grads = [found.get(id(p)) for p in pending.params]
        if pending.dist:
            grads = distributed.mean_gradients(pending.params, grads, spec.dtype, pending.group)
        return [*grads, *(found.get(id(x)) for x in pending.extras)]

    def _resolve_params(self, params: Sequence[torch.Tensor] | None) -> list[torch.Tensor]:
        if params is None:
            if self.params is None:
                raise ValueError("pass params (none were given to GramianEngine)")
            params = self.params
        out = [params] if isinstance(params, torch.Tensor) else list(params)
        if not out:
            raise ValueError("params is empty")
        return out


def _backward_into(units: Sequence[Unit], losses: Sequence[torch.Tensor], retain: bool) -> None:
    """One backward pass per loss, down to what the units need, handed to every unit;
    ``retain``: keep the graph after the last one."""
    backward = Backward(units)
    if not backward.inputs:
        return
    last = len(losses) - 1
    for i, loss in enumerate(losses):
        grads = backward.run(loss, retain or i < last)
        for u in units:
            u.take(i, grads)
        del grads


def _check_losses(losses: Sequence[torch.Tensor]) -> None:
    if not losses:
        raise ValueError("losses is empty: pass at least one scalar loss")
    for i, loss in enumerate(losses):
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise ValueError(f"losses[{i}] must be a scalar tensor")
        if not loss.requires_grad:
            raise ValueError(f"losses[{i}] does not require grad")


def _resolve_shared(
    shared: Sequence[torch.Tensor] | None, params: list[torch.Tensor]
) -> list[torch.Tensor]:
    if shared is None:
        return params
    out = [shared] if isinstance(shared, torch.Tensor) else list(shared)
    pids = {id(p) for p in params}
    for i, p in enumerate(out):
        if id(p) not in pids:
            raise ValueError(f"shared[{i}] (shape {tuple(p.shape)}) is not one of params")
    return out


def _resolve_extras(
    extras: Sequence[torch.Tensor], params: list[torch.Tensor]
) -> list[torch.Tensor]:
    out = [extras] if isinstance(extras, torch.Tensor) else list(extras)
    pids = {id(p) for p in params}
    for i, x in enumerate(out):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"extras[{i}] is a {type(x).__name__}, not a tensor")
        if id(x) in pids:
            raise ValueError(f"extras[{i}] (shape {tuple(x.shape)}) is one of params")
    return out


def _module_list(modules: nn.Module | Sequence[nn.Module]) -> list[nn.Module]:
    if isinstance(modules, nn.Module):
        return [modules]
    if not isinstance(modules, Sequence) or isinstance(modules, (str, bytes)):
        raise TypeError(
            f"modules must be an nn.Module or a sequence of them, got {type(modules).__name__}"
        )
    mods = list(modules)
    if not mods:
        raise ValueError("modules is empty: pass the model whose parameters are trained")
    for i, m in enumerate(mods):
        if not isinstance(m, nn.Module):
            raise TypeError(f"modules[{i}] is a {type(m).__name__}, not an nn.Module")
    return mods


def _unique_modules(roots: Sequence[nn.Module]) -> list[nn.Module]:
    """Every module below ``roots``, each once, in order."""
    seen: set[int] = set()
    out: list[nn.Module] = []
    for root in roots:
        for m in root.modules():
            if id(m) not in seen:
                seen.add(id(m))
                out.append(m)
    return out


def _held_params(
    params: Sequence[torch.Tensor], modules: Sequence[nn.Module]
) -> list[torch.Tensor]:
    """``params`` as a list, each checked to be held by one of ``modules``."""
    plist = [params] if isinstance(params, torch.Tensor) else list(params)
    for i, q in enumerate(plist):
        if not isinstance(q, torch.Tensor):
            raise TypeError(f"params[{i}] is a {type(q).__name__}, not a tensor")
    owned = {id(p) for m in modules for p in m._parameters.values() if p is not None}
    missing = [i for i, p in enumerate(plist) if id(p) not in owned]
    if missing:
        shown = ", ".join(f"params[{i}] (shape {tuple(plist[i].shape)})" for i in missing[:4])
        more = f" and {len(missing) - 4} more" if len(missing) > 4 else ""
        raise ValueError(
            f"{shown}{more} belong to none of the modules given to GramianEngine: "
            "pass the module(s) holding every parameter the optimizer trains (a "
            "loose nn.Parameter can be held by an nn.ParameterList passed along)"
        )
    return plist

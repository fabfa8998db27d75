"""The plan of one step (step 2 of the package docstring): a walk of the autograd graph
finds every use of each parameter and the recorded calls that hold them, and each parameter
reached by some loss is put into one unit (:mod:`mograd.frugal.units`). The shared
parameters come first in every unit (they enter ``G``); the other parameters and the
leaves outside the optimizer (``extras``) only receive the update.

A parameter whose uses all lie inside the recorded calls of its own module(s) is *local*:

* an ``nn.Linear`` weight whose calls all kept their input: :class:`LinearWeight`;
* an ``nn.Linear`` bias: :class:`LinearBias`;
* the parameters of one call of any other module: :class:`Local`, or direct when they are
  fewer than the call's output values (keeping their k per-loss gradients is then cheaper
  than keeping the output gradients, and the per-loss backward passes form them anyway),
  or when the graph is not kept after the step and the call's own graph is one the
  per-loss passes run through (an input that requires grad, or a leaf used inside that is
  not its own): the last pass frees that graph, and the backward passes through it that
  :class:`Local` needs afterwards would find it gone.

Every other parameter (used outside a module call, a module's own parameter beside
parameterized sub-modules, a parameter of a module that was not hooked, a loss that is a
parameter itself) is *direct*: one :class:`Direct` unit; each leaf outside the optimizer is
a :class:`Direct` unit of its own (its row dtype may differ), last.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..gramian import leaves_below, row_dtype
from .linear import LinearBias, LinearWeight
from .records import Call
from .units import Direct, Local, Spec, Unit

__all__ = ["Plan", "Uses", "find_uses", "make_plan", "reaches", "walk_call"]


@dataclass
class Uses:
    """Every use of every parameter below the losses.

    Attributes:
        consumers: ``id(param)`` -> the autograd nodes that use it (only reached ones).
        leaf_losses: ids of the parameters that are losses themselves.
        seen: every autograd node below the losses.
    """

    consumers: dict[int, set[Any]]
    leaf_losses: set[int]
    seen: set[Any]


@dataclass
class Plan:
    """The units of one step, in folding order, and which params some loss reaches."""

    units: list[Unit]
    reached: list[bool]

    @property
    def gram_units(self) -> list[Unit]:
        """The units that hold a shared parameter (they enter ``G``)."""
        return [u for u in self.units if u.n_gram > 0]

    def summary(self) -> list[tuple[str, int]]:
        """``(label, shared size)`` per unit in ``G``: :attr:`GramianEngine.last_plan`."""
        return [(u.label, u.gram_size) for u in self.gram_units]


def make_plan(
    losses: Sequence[torch.Tensor],
    params: Sequence[torch.Tensor],
    shared: Sequence[torch.Tensor],
    records: Sequence[Call],
    spec: Spec,
    *,
    dist: bool,
    extras: Sequence[torch.Tensor] = (),
    retain: bool = True,
) -> Plan:
    """Walk the graph below ``losses`` and put every reached one of ``params`` (``shared``
    first) and every one of ``extras`` into a unit. ``retain``: the graph is kept after
    the step (otherwise the last per-loss pass frees what it runs through).

    Raises:
        ValueError: If a loss reaches none of ``params``.
    """
    pids = {id(p): j for j, p in enumerate(params)}
    uses = find_uses(losses, pids)
    holders: dict[int, list[Call]] = {}
    for c in records:
        if any(e.node in uses.seen for e in c.outputs):
            walk_call(c, pids)
            for pid in c.found:
                holders.setdefault(pid, []).append(c)
    sids = {id(p) for p in shared}
    rest = [p for p in params if id(p) not in sids]
    units = _units(shared, rest, uses, holders, spec, dist, retain)
    for x in extras:
        units.append(Direct([x], Spec(spec.k, row_dtype(x), x.device), 0))
    return Plan(units, [id(p) in uses.consumers for p in params])


def find_uses(losses: Sequence[torch.Tensor], pids: dict[int, int]) -> Uses:
    """Every use of the parameters ``pids`` (id -> index) below ``losses``.

    Raises:
        ValueError: If a loss reaches none of them.
    """
    uses = Uses({}, set(), set())
    for i, loss in enumerate(losses):
        if loss.grad_fn is None:
            if id(loss) not in pids:
                raise ValueError(f"losses[{i}] does not depend on any of params")
            uses.leaf_losses.add(id(loss))
            uses.consumers.setdefault(id(loss), set())
            continue
        if not reaches(loss.grad_fn, pids):
            raise ValueError(f"losses[{i}] does not depend on any of params")
        stack = [loss.grad_fn]
        while stack:
            fn = stack.pop()
            if fn in uses.seen:
                continue
            uses.seen.add(fn)
            for nxt, _ in fn.next_functions:
                if nxt is None:
                    continue
                var = getattr(nxt, "variable", None)
                if var is not None:
                    if id(var) in pids:
                        uses.consumers.setdefault(id(var), set()).add(fn)
                elif nxt not in uses.seen:
                    stack.append(nxt)
    return uses


def reaches(root: Any, pids: dict[int, int]) -> bool:
    """Whether the graph below ``root`` uses one of the parameters (stops at the first)."""
    return any(id(var) in pids for var in leaves_below([root]))


def walk_call(call: Call, pids: dict[int, int]) -> None:
    """Fill ``call.local`` (the autograd nodes of the call, from its outputs down to its
    inputs), ``call.found`` (the ids of the parameters of ``pids`` used there) and
    ``call.leaves`` (the ids of every leaf used there)."""
    stack = [e.node for e in call.outputs]
    local: set[Any] = set()
    found: set[int] = set()
    leaves: set[int] = set()
    while stack:
        fn = stack.pop()
        if fn in local or fn in call.stops:
            continue
        if getattr(fn, "variable", None) is not None:
            continue  # the output is a parameter itself: a use outside the call
        local.add(fn)
        for nxt, _ in fn.next_functions:
            if nxt is None:
                continue
            v = getattr(nxt, "variable", None)
            if v is None:
                stack.append(nxt)
                continue
            leaves.add(id(v))
            if id(v) in pids:
                found.add(id(v))
    call.local, call.found, call.leaves = local, found, leaves


def _kind(p: torch.Tensor, uses: Uses, holders: list[Call]) -> str:
    """``"linear_weight"``, ``"linear_bias"``, ``"local"`` or ``"direct"``."""
    inside: set[Any] = set().union(*(c.local for c in holders)) if holders else set()
    if id(p) in uses.leaf_losses or not holders or not uses.consumers[id(p)] <= inside:
        return "direct"
    if all(c.weight is p and c.linear_input_unchanged for c in holders):
        return "linear_weight"
    if all(c.linear and c.bias is p for c in holders):
        return "linear_bias"
    if len(holders) == 1 and not holders[0].linear:
        return "local"
    return "direct"


def _units(
    shared: Sequence[torch.Tensor],
    rest: Sequence[torch.Tensor],
    uses: Uses,
    holders: dict[int, list[Call]],
    spec: Spec,
    dist: bool,
    retain: bool,
) -> list[Unit]:
    """The units, in folding order: Linear weights, Linear biases, local calls, direct;
    in each, the shared parameters first."""
    weights: list[Unit] = []
    biases: list[Unit] = []
    local: dict[Call, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
    direct: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])
    for part, group in enumerate((shared, rest)):
        n_gram = 1 - part
        for p in group:
            if id(p) not in uses.consumers:
                continue  # no loss reaches it: no contribution
            hs = holders.get(id(p), [])
            kind = _kind(p, uses, hs)
            if kind == "linear_weight":
                weights.append(LinearWeight(p, spec, hs, dist=dist, n_gram=n_gram))
            elif kind == "linear_bias":
                biases.append(LinearBias(p, spec, hs, n_gram))
            elif kind == "local":
                local.setdefault(hs[0], ([], []))[part].append(p)
            else:
                direct[part].append(p)
    units = [*weights, *biases]
    for call, (gram_ps, rest_ps) in local.items():
        ps = [*gram_ps, *rest_ps]
        if sum(p.numel() for p in ps) <= call.out_numel or not (retain or _own(call, ps)):
            direct[0].extend(gram_ps)
            direct[1].extend(rest_ps)
        else:
            units.append(Local(ps, spec, call, len(gram_ps), retain))
    if direct[0] or direct[1]:
        units.append(Direct([*direct[0], *direct[1]], spec, len(direct[0])))
    return units


def _own(call: Call, params: Sequence[torch.Tensor]) -> bool:
    """No per-loss pass runs through the call's own graph: no input of it requires grad
    and every leaf used inside is one of ``params``."""
    return not call.stops and call.leaves <= {id(p) for p in params}

"""What a forward hook records of one module call: :class:`Call` (step 1 of the package
docstring).

A call keeps the gradient edges of its outputs (where the per-loss backward passes stop)
and of its inputs (where the walk of the call's own graph stops), and, for an
``nn.Linear`` call, its input ``A`` (a detached view of a tensor autograd keeps anyway).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.autograd.graph import GradientEdge, get_gradient_edge
from torch.utils._pytree import tree_flatten

__all__ = ["Call", "hooked_modules", "record"]


@dataclass(eq=False)
class Call:
    """One recorded forward call of a hooked module.

    ``local``, ``found`` and ``leaves`` are filled by :func:`mograd.frugal.plan.walk_call`:
    the autograd nodes inside the call, the ids of the parameters used there and the ids of
    every leaf used there.
    """

    module: nn.Module
    outputs: list[GradientEdge]
    out_numel: int
    stops: set[Any]
    linear: bool
    x: torch.Tensor | None = None  # nn.Linear input (detached view)
    x_version: int = 0
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    local: set[Any] = field(default_factory=set)
    found: set[int] = field(default_factory=set)
    leaves: set[int] = field(default_factory=set)

    @property
    def linear_input_unchanged(self) -> bool:
        """An ``nn.Linear`` call whose input was not modified in place since the call."""
        return self.linear and self.x is not None and self.x._version == self.x_version


def hooked_modules(modules: list[nn.Module]) -> list[nn.Module]:
    """The modules that hold parameters themselves and have no sub-module holding any
    (a parent's own parameters beside such sub-modules are handled as direct)."""

    def holds(m: nn.Module) -> bool:
        return any(p is not None for p in m._parameters.values())

    return [m for m in modules if holds(m) and not any(holds(s) for s in m.modules() if s is not m)]


def record(
    module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
) -> Call | None:
    """The record of one forward call (``None`` when no output requires grad)."""
    outs = [t for t in tree_flatten(output)[0] if isinstance(t, torch.Tensor)]
    edges = [get_gradient_edge(t) for t in outs if t.requires_grad]
    if not edges:
        return None
    stops = {
        get_gradient_edge(t).node
        for t in tree_flatten((args, kwargs))[0]
        if isinstance(t, torch.Tensor) and t.requires_grad
    }
    numel = sum(t.numel() for t in outs if t.requires_grad)
    call = Call(module, edges, numel, stops, linear=False)
    if type(module).forward is nn.Linear.forward and len(outs) == 1:
        _mark_linear(call, args[0] if args else kwargs.get("input"), outs[0])
    return call


def _mark_linear(call: Call, x: Any, y: torch.Tensor) -> None:
    """Keep the input of an ``nn.Linear`` call whose weight gradient is ``D^T A``."""
    w, b = call.module.weight, call.module.bias
    assert isinstance(w, torch.Tensor) and (b is None or isinstance(b, torch.Tensor))
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

r"""Shared plumbing of the built-in weightings: option checks, host round trips, RNG state.

The weightings that solve a small problem (a QP, an eigendecomposition, a loop with
branches) do it on the host in numpy float64: the $k \times k$ Gram matrix is copied once, the
weights are copied back once. Those helpers live here, with the validation of the options
every constructor shares (each raises ``ValueError`` naming the bad value).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .._checks import check_int, check_number

__all__ = [
    "all_finite",
    "check_bool",
    "check_fraction",
    "check_int",
    "check_pref",
    "check_reals",
    "check_seed",
    "check_vector",
    "clone_state",
    "from_host",
    "generator_state",
    "host_values",
    "load_generator_state",
    "load_tensor_state",
    "loss_vector",
    "nan_guard",
    "nan_weights",
    "pref_array",
    "project_simplex",
    "to_host",
    "where_finite",
]


def check_fraction(name: str, value: object, *, below_one: bool = False) -> float:
    """A real number in $[0, 1]$ ($[0, 1)$ with ``below_one``), as a float."""
    v = check_number(name, value, nonnegative=True)
    if v > 1 or (below_one and v == 1):
        bound = "[0, 1)" if below_one else "[0, 1]"
        raise ValueError(f"{name} must be in {bound}, got {value!r}")
    return v


def check_bool(name: str, value: object) -> bool:
    """A ``bool``."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def check_seed(seed: object) -> int:
    """A seed for :class:`torch.Generator`: an int in $[0, 2^{63})$."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an int in [0, 2**63), got {seed!r}")
    return seed


def check_vector(
    name: str, value: object, *, flatten: bool = False, allow_zero: bool = False
) -> tuple[float, ...]:
    r"""$k$ finite numbers $\ge 0$, not all zero (unless ``allow_zero``), as floats. A tensor is
    flattened with ``flatten``, otherwise it must be 1-d."""
    if isinstance(value, torch.Tensor):
        if not flatten and value.dim() != 1:
            raise ValueError(f"{name} must be a 1-d tensor, got shape {tuple(value.shape)}")
        value = value.detach().cpu().reshape(-1).tolist()
    if isinstance(value, (str, bytes)):
        raise ValueError(f"{name} must be a sequence of numbers, got {value!r}")
    try:
        values = tuple(float(v) for v in value)  # type: ignore[attr-defined]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a sequence of numbers, got {value!r}") from exc
    if not values:
        raise ValueError(f"{name} is an empty sequence")
    for i, v in enumerate(values):
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"{name}[{i}] must be finite and >= 0, got {v!r}")
    if sum(values) <= 0 and not allow_zero:
        raise ValueError(f"{name} must not all be zero (all zero weighs nothing), got {values!r}")
    return values


def check_pref(pref_vector: Sequence[float] | torch.Tensor | None) -> tuple[float, ...] | None:
    r"""A preference vector: finite weights $\ge 0$, not all zero (or ``None``)."""
    return None if pref_vector is None else check_vector("pref_vector", pref_vector)


def pref_array(pref: tuple[float, ...] | None, k: int, owner: str) -> np.ndarray:
    """The preference vector for $k$ losses (default $1/k$ each) as float64."""
    if pref is None:
        return np.full(k, 1.0 / k)
    if len(pref) != k:
        raise ValueError(
            f"{owner} has a pref_vector of {len(pref)} entries but the Gram matrix is {k} x {k}"
        )
    return np.asarray(pref, dtype=np.float64)


def to_host(gram: torch.Tensor) -> np.ndarray | None:
    """``gram`` as a symmetric float64 numpy array, or ``None`` if an entry is not finite.

    This is the one device-to-host copy of the weightings with ``host_sync = True``.
    """
    g = gram.detach().to(device="cpu", dtype=torch.float64).numpy()
    if not np.all(np.isfinite(g)):
        return None
    sym: np.ndarray = 0.5 * (g + g.T)
    return sym


def from_host(w: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """Weights computed on the host, on ``like``'s device and dtype."""
    out = torch.as_tensor(np.ascontiguousarray(w, dtype=np.float64))
    if like.device.type == "cuda":
        out = out.pin_memory().to(device=like.device, non_blocking=True)
    return out.to(device=like.device, dtype=like.dtype)


def nan_weights(like: torch.Tensor) -> torch.Tensor:
    """All-NaN weights: the answer to a Gram matrix with a NaN or infinite entry.

    NaN flows on to the optimizer, whose ``nonfinite=`` policy decides (raise, skip, ignore).
    """
    return torch.full((like.shape[0],), float("nan"), dtype=like.dtype, device=like.device)


def generator_state(gen: torch.Generator) -> dict[str, Any]:
    """The state of a CPU generator, for ``state_dict``."""
    return {"rng_state": gen.get_state()}


def load_generator_state(owner: str, gen: torch.Generator, state: dict[str, Any]) -> None:
    """Restore what :func:`generator_state` returned."""
    rng = state.get("rng_state") if isinstance(state, dict) else None
    if not isinstance(rng, torch.Tensor) or rng.dtype != torch.uint8:
        raise ValueError(f"{owner} state must hold 'rng_state' (a uint8 tensor), got {state!r}")
    gen.set_state(rng.detach().cpu().clone())


def nan_guard(w: torch.Tensor, *inputs: torch.Tensor | None) -> torch.Tensor:
    """``w`` unchanged if every input is finite, all-NaN otherwise; tensor operations only.

    ``(x * 0).sum()`` is exactly zero for a finite ``x`` (even one whose sum would overflow)
    and NaN when ``x`` holds a NaN or an infinity, so adding it keeps ``w`` bit-identical in
    the usual case and needs no host synchronization.
    """
    for x in inputs:
        if x is not None:
            w = w + _zero(x).to(device=w.device, dtype=w.dtype)
    return w


def all_finite(*inputs: torch.Tensor | None) -> torch.Tensor:
    """A 0-d bool tensor: every entry of every input is finite (no host synchronization;
    exact: ``(x * 0).sum()`` is zero for finite entries and NaN otherwise)."""
    zeros = [_zero(x) for x in inputs if x is not None]
    assert zeros
    total = zeros[0] if len(zeros) == 1 else torch.stack(zeros).sum()
    return total == 0


def _zero(x: torch.Tensor) -> torch.Tensor:
    """``(x * 0).sum()``, detached: exactly 0 when every entry is finite, NaN otherwise."""
    return (x.detach() * 0).sum()


def where_finite(ok: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``w`` where ``ok`` (a 0-d bool tensor), else all-NaN: :func:`nan_guard` for a flag
    already computed."""
    return torch.where(ok, w, float("nan"))


def project_simplex(y: torch.Tensor) -> torch.Tensor:
    r"""Euclidean projection of a 1-d tensor onto the probability simplex (no host sync).

    With $u$ the entries of $y$ sorted in decreasing order and $r$ the largest index with
    $u_r > \big(\sum_{j \le r} u_j - 1\big) / r$, the projection is $\max(y - \theta, 0)$ with
    $\theta = \big(\sum_{j \le r} u_j - 1\big) / r$ (Held, Wolfe & Crowder 1974; Duchi et al.
    2008). The projection does not change when a constant is added to $y$: $y - \max_i y_i$ is
    projected, so that a point far from the simplex ($\lVert y \rVert \gg 1$) keeps its
    precision.
    """
    y = y - y.max()
    u = torch.sort(y, descending=True).values
    css = torch.cumsum(u, 0) - 1.0
    ranks = torch.arange(1, y.shape[0] + 1, device=y.device, dtype=y.dtype)
    cond = u - css / ranks > 0
    r = torch.where(cond, ranks, torch.zeros_like(ranks)).max()  # >= 1: u_1 = 0 > -1
    idx = (r - 1).long().clamp_min(0)
    theta = css.gather(0, idx.reshape(1)) / r
    return (y - theta).clamp_min(0.0)


def clone_state(value: Any) -> Any:
    """A deep copy of a state value: tensors cloned, containers rebuilt (a tuple stays a
    tuple), immutable leaves shared, anything else through ``copy.deepcopy`` (several times
    faster than ``copy.deepcopy`` of the whole on a handful of tensors)."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: clone_state(v) for k, v in value.items()}
    if type(value) in (list, tuple):
        return type(value)(clone_state(v) for v in value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return copy.deepcopy(value)


def load_tensor_state(
    owner: str, state: object, keys: Sequence[str]
) -> dict[str, torch.Tensor | None]:
    """Check that ``state`` holds ``keys`` (tensors or ``None``) and return clones of them."""
    if not isinstance(state, dict) or not set(keys) <= set(state):
        raise ValueError(f"{owner} state must hold {sorted(keys)}, got {state!r}")
    out: dict[str, torch.Tensor | None] = {}
    for key in keys:
        value = state[key]
        if value is not None and not isinstance(value, torch.Tensor):
            raise ValueError(f"{owner} state[{key!r}] must be a tensor or None, got {value!r}")
        out[key] = None if value is None else value.detach().clone()
    return out


def host_values(
    values: Sequence[float], like: torch.Tensor, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """Python numbers as a tensor on ``like``'s device without a host synchronization (on
    CUDA: from pinned memory, copied without blocking)."""
    t = torch.tensor(list(values), dtype=dtype)
    if like.device.type == "cuda":
        return t.pin_memory().to(device=like.device, non_blocking=True)
    return t.to(like.device)


def loss_vector(
    values: tuple[float, ...] | None, k: int, like: torch.Tensor, owner: str, name: str
) -> torch.Tensor | None:
    """``values`` as a float64 tensor of ``k`` entries on ``like``'s device (or ``None``)."""
    if values is None:
        return None
    if len(values) != k:
        raise ValueError(f"{owner} has a {name} of {len(values)} entries but {k} losses")
    return host_values(values, like)


def check_reals(
    name: str, value: Sequence[float] | torch.Tensor | None
) -> tuple[float, ...] | None:
    """Finite reals (any sign) as floats, or ``None``."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        if value.dim() != 1:
            raise ValueError(f"{name} must be a 1-d tensor, got shape {tuple(value.shape)}")
        value = value.detach().cpu().tolist()
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a sequence of numbers, got {value!r}") from exc
    if not out or not all(abs(v) < float("inf") for v in out):
        raise ValueError(f"{name} must be non-empty and finite, got {value!r}")
    return out

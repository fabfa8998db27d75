"""Shared plumbing of the built-in weightings: option checks, host round trips, RNG state.

The weightings that solve a small problem (a QP, an eigendecomposition, a loop with
branches) do it on the host in numpy float64: the k x k Gram matrix is copied once, the
weights are copied back once. Those helpers live here, with the validation of the options
every constructor shares (each raises ``ValueError`` naming the bad value).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .._checks import check_int

__all__ = [
    "check_bool",
    "check_int",
    "check_number",
    "check_pref",
    "check_seed",
    "check_vector",
    "from_host",
    "generator_state",
    "load_generator_state",
    "nan_weights",
    "pref_array",
    "to_host",
]


def check_number(name: str, value: object, *, positive: bool = False) -> float:
    """A finite real number ``>= 0`` (``> 0`` with ``positive``), as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < 0 or (positive and v == 0):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return v


def check_bool(name: str, value: object) -> bool:
    """A ``bool``."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def check_seed(seed: object) -> int:
    """A seed for :class:`torch.Generator`: an int in ``[0, 2**63)``."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an int in [0, 2**63), got {seed!r}")
    return seed


def check_vector(name: str, value: object, *, flatten: bool = False) -> tuple[float, ...]:
    """k finite numbers ``>= 0``, not all zero, as floats. A tensor is flattened with
    ``flatten``, otherwise it must be 1-d."""
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
    if sum(values) <= 0:
        raise ValueError(f"{name} must not all be zero (all zero weighs nothing), got {values!r}")
    return values


def check_pref(pref_vector: Sequence[float] | torch.Tensor | None) -> tuple[float, ...] | None:
    """A preference vector: finite weights ``>= 0``, not all zero (or ``None``)."""
    return None if pref_vector is None else check_vector("pref_vector", pref_vector)


def pref_array(pref: tuple[float, ...] | None, k: int, owner: str) -> np.ndarray:
    """The preference vector for ``k`` losses (default ``1/k`` each) as float64."""
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

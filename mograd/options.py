"""The wrapper's options, validated once: :class:`Options` and :func:`resolve_weights`.

Every option of :class:`~mograd.optimizer.MultiObjectiveOptimizer` is checked here, with a
``ValueError`` that names the value, before the wrapper holds anything.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from ._checks import check_int, check_number
from .solver import DEFAULT_MAX_ITER, DEFAULT_TOL
from .weightings import NORMALIZATIONS, WEIGHTINGS, Constant, Mean, MinNorm, Weighting, from_name

__all__ = ["POLICIES", "UNSET", "NonFinitePolicy", "Options", "WeightsArg", "resolve_weights"]

NonFinitePolicy = Literal["raise", "skip", "ignore"]
POLICIES: tuple[str, ...] = ("raise", "skip", "ignore")
JACOBIANS: tuple[str, ...] = ("rows", "gramian")
_MIB_NAMES = ("min_norm", "mib", "equal")

WeightFn = Weighting | Callable[[torch.Tensor], torch.Tensor]
WeightsArg = str | Weighting | Callable[[torch.Tensor], torch.Tensor] | Sequence[float]


class _Unset:
    def __repr__(self) -> str:
        return "<default>"


UNSET: Any = _Unset()
"""The default of ``power`` and ``mu``: MIB's values for MIB's spellings, none otherwise."""


def resolve_weights(weights: object, max_iter: int, tol: float) -> tuple[WeightFn, bool]:
    """The weighting object for ``weights=``, and whether it is one of MIB's own spellings
    (``"min_norm"``/``"mib"``, ``"equal"``, a sequence of fixed weights)."""
    names = sorted({*_MIB_NAMES, *WEIGHTINGS})
    if isinstance(weights, str):
        key = weights.lower().replace("-", "_")
        if key in ("min_norm", "mib", "mgda"):
            return MinNorm(max_iter, tol), key != "mgda"
        if key == "equal":
            return Mean(), True
        if key in WEIGHTINGS:
            return from_name(key), False
    elif isinstance(weights, Weighting):
        return weights, False
    elif isinstance(weights, (torch.Tensor, Sequence)):
        return Constant(weights), True
    elif callable(weights):
        return weights, False
    raise ValueError(
        f"weights must be one of {names}, a Weighting, a callable or a sequence of "
        f"numbers, got {weights!r}"
    )


@dataclass(frozen=True)
class Options:
    """The validated options of one wrapper (see its docstring for their meaning)."""

    weighting: WeightFn
    power: float
    mu: float | None
    normalize: str
    normalized_update: bool
    nonfinite: NonFinitePolicy
    max_iter: int
    tol: float
    jacobian: str

    @classmethod
    def parse(
        cls,
        *,
        weights: object = "min_norm",
        power: object = UNSET,
        mu: object = UNSET,
        normalize: object = "none",
        normalized_update: object = True,
        nonfinite: object = "raise",
        max_iter: object = DEFAULT_MAX_ITER,
        tol: object = DEFAULT_TOL,
        jacobian: object = "rows",
    ) -> Options:
        """Validate the constructor's options (``ValueError`` naming the value)."""
        if nonfinite not in POLICIES:
            raise ValueError(f"nonfinite must be one of {POLICIES}, got {nonfinite!r}")
        iters = check_int("max_iter", max_iter, minimum=1)
        tolerance = check_number("tol", tol, nonnegative=True)
        weighting, mib = resolve_weights(weights, iters, tolerance)
        p = check_number("power", (2.0 if mib else 1.0) if power is UNSET else power, positive=True)
        m = (0.2 if mib else None) if mu is UNSET else mu
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
        if normalize in ("l2", "loss+") and not getattr(weighting, "needs_gram", True):
            raise ValueError(
                f"normalize={normalize!r} needs the gradient norms, but {weights!r} is a "
                "loss-level weighting that forms no per-loss gradient: use 'none' or 'loss'"
            )
        if not isinstance(normalized_update, bool):
            raise ValueError(f"normalized_update must be a bool, got {normalized_update!r}")
        if jacobian not in JACOBIANS:
            raise ValueError(f"jacobian must be 'rows' or 'gramian', got {jacobian!r}")
        return cls(
            weighting=weighting,
            power=p,
            mu=None if m is None else check_number("mu", m, positive=True),
            normalize=str(normalize),
            normalized_update=normalized_update,
            nonfinite=nonfinite,  # type: ignore[arg-type]
            max_iter=iters,
            tol=tolerance,
            jacobian=str(jacobian),
        )

    def weighting_name(self) -> str:
        """The weighting as the checkpoint records it."""
        w = self.weighting
        if isinstance(w, Weighting):
            return repr(w)
        return getattr(w, "__qualname__", None) or repr(w)

    def config(self) -> dict[str, Any]:
        """The options a checkpoint records (and compares on load)."""
        return {
            "weights": self.weighting_name(),
            "power": self.power,
            "mu": self.mu,
            "normalize": self.normalize,
            "normalized_update": self.normalized_update,
        }

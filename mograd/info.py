"""What a step reports: :class:`StepInfo`, and :class:`NonFiniteError`.

Every tensor of a :class:`StepInfo` is detached and built without a device-to-host
synchronization; ``grad_norms`` and ``cosines`` are derived from the step's Gram matrix only
when first read.
"""

from __future__ import annotations

from typing import Any

import torch

from .weightings import Combination

__all__ = ["NonFiniteError", "StepInfo"]


class NonFiniteError(FloatingPointError):
    """A loss or a gradient is NaN or infinite (raised with ``nonfinite="raise"``)."""


class StepInfo:
    r"""Diagnostics of one multi-objective backward pass.

    All tensor fields are detached, on the parameters' device, and computed without a
    device-to-host synchronization; call ``.tolist()`` or :meth:`as_dict` to read them.
    ``grad_norms`` and ``cosines`` are derived from the Gram matrix when first read, so a
    step whose diagnostics nobody reads does not pay for them.

    Attributes:
        weights: The weighting's weights $w$ (min-norm $w^*$ by default), ``(k,)``.
        reweighted: $\tilde w = w^p$, $p$ = ``power``, shape ``(k,)``.
        coefficients: The coefficients $c$ on the raw per-loss gradients: the combined
            gradient is $\sum_i c_i \nabla L_i$, shape ``(k,)``.
        losses: Loss values in at least float32 (averaged over the process group when
            distributed), ``(k,)``.
        grad_norms: Norms $\lVert g_i \rVert = \sqrt{G_{ii}}$ of the per-loss gradients on
            the shared parameters (or on the features in representation mode), ``(k,)``;
            NaN for loss-level weightings, which form no per-loss gradient.
        cosines: Pairwise cosine similarities of those gradients,
            $G_{ij} / (\lVert g_i \rVert \, \lVert g_j \rVert)$, ``(k, k)``.
        iterations: Solver iterations (0 for $k = 1$ and for weightings without a solver,
            1 for the $k = 2$ closed form).
        skipped: ``True`` when a non-finite value made the step a no-op
            (``nonfinite="skip"``).
        normalizers: The gradient normalizers $n$ (all ones for ``normalize="none"``).
    """

    _FIELDS = (
        "weights",
        "reweighted",
        "coefficients",
        "losses",
        "grad_norms",
        "cosines",
        "iterations",
        "skipped",
        "normalizers",
    )

    def __init__(
        self,
        weights: torch.Tensor,
        reweighted: torch.Tensor,
        coefficients: torch.Tensor,
        losses: torch.Tensor,
        grad_norms: torch.Tensor,
        cosines: torch.Tensor,
        iterations: int,
        skipped: bool = False,
        normalizers: torch.Tensor | None = None,
    ) -> None:
        self.weights = weights
        self.reweighted = reweighted
        self.coefficients = coefficients
        self.losses = losses
        self._grad_norms: torch.Tensor | None = grad_norms
        self._cosines: torch.Tensor | None = cosines
        self._gram: torch.Tensor | None = None
        self._dtype = weights.dtype
        self.iterations = iterations
        self.skipped = skipped
        self.normalizers = normalizers

    @classmethod
    def _of_step(
        cls,
        comb: Combination,
        values: torch.Tensor,
        gram: torch.Tensor | None,
        dtype: torch.dtype,
    ) -> StepInfo:
        """The step's diagnostics: its combination in ``dtype`` (the dtype of the step's
        gradients) and the unscaled Gram matrix (``None`` for loss-level weightings, whose
        ``grad_norms`` and ``cosines`` are then NaN)."""
        info = cls.__new__(cls)
        info.weights = _as(comb.weights, dtype)
        # without reweighting or smoothing these are the same tensor: converted once
        same = comb.reweighted is comb.weights
        info.reweighted = info.weights if same else _as(comb.reweighted, dtype)
        same = comb.coefficients is comb.reweighted
        info.coefficients = info.reweighted if same else _as(comb.coefficients, dtype)
        info.losses = values
        info._grad_norms = info._cosines = None
        info._gram = None if gram is None else gram.detach()
        info._dtype = dtype
        info.iterations = comb.iterations
        info.skipped = False
        info.normalizers = _as(comb.normalizers, dtype)
        return info

    def _derive(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._grad_norms is None or self._cosines is None:
            if self._gram is None:
                k = self.weights.shape[0]
                nan = torch.full((k,), float("nan"), dtype=self.weights.dtype)
                norms, cosines = nan.to(self.weights.device), torch.outer(nan, nan)
            else:
                norms, cosines = _diagnostics(self._gram)
                norms, cosines = norms.to(self._dtype), cosines.to(self._dtype)
            if self._grad_norms is None:
                self._grad_norms = norms
            if self._cosines is None:
                self._cosines = cosines
        return self._grad_norms, self._cosines

    @property
    def grad_norms(self) -> torch.Tensor:
        return self._derive()[0]

    @grad_norms.setter
    def grad_norms(self, value: torch.Tensor) -> None:
        self._grad_norms = value

    @property
    def cosines(self) -> torch.Tensor:
        return self._derive()[1]

    @cosines.setter
    def cosines(self, value: torch.Tensor) -> None:
        self._cosines = value

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._FIELDS)
        return f"StepInfo({inner})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StepInfo):
            return NotImplemented
        return all(_same(getattr(self, n), getattr(other, n)) for n in self._FIELDS)

    __hash__ = None  # type: ignore[assignment]

    def as_dict(self) -> dict[str, Any]:
        """Plain Python numbers and lists (one host synchronization), e.g. for logging."""
        out: dict[str, Any] = {}
        for name in ("weights", "reweighted", "coefficients", "losses", "grad_norms", "cosines"):
            out[name] = getattr(self, name).tolist()
        if self.normalizers is not None:
            out["normalizers"] = self.normalizers.tolist()
        out["iterations"] = self.iterations
        out["skipped"] = self.skipped
        return out


def _as(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t.to(dtype)`` without the dispatch when it is already ``dtype``."""
    return t if t.dtype == dtype else t.to(dtype)


def _same(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and bool(torch.equal(a, b))
    return a == b


def _diagnostics(gram_matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    norms = gram_matrix.diagonal().clamp_min(0).sqrt()
    denom = (norms[:, None] * norms[None, :]).clamp_min(torch.finfo(gram_matrix.dtype).tiny)
    return norms, gram_matrix / denom

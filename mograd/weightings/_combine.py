r"""From the Gram matrix to the per-loss coefficients: normalization, weighting, MIB.

:func:`combine` is the whole pure part of a mograd step, in order:

1. normalizers $n_i$ (not in the paper; the MGDA reference code and LibMTL have them):
   $1$ (``"none"``), $\lVert g_i \rVert$ (``"l2"``), $\lvert L_i \rvert$ (``"loss"``),
   $\lvert L_i \rvert \, \lVert g_i \rVert$ (``"loss+"``), with
   $\lVert g_i \rVert = \sqrt{G_{ii}}$; a zero normalizer counts as 1;
2. the weights $w$ of any :class:`~mograd.weightings.Weighting` on the normalized Gram
   matrix $\tilde G_{ij} = G_{ij} / (n_i n_j)$ (paper eq. 8 for ``MinNorm``);
3. MIB's nonlinear reweighting $\tilde w = w^p$ (paper eq. 12);
4. MIB's Smooth-IB coefficients
   $c = \tilde w \odot \big(1 + \operatorname{softmax}(\tilde w \odot \tilde L / \mu)\big)$
   with $\tilde L = L / n$ (paper eqs. 13-14; $c = \tilde w$ without smoothing);
5. the coefficients on the raw per-loss gradients: $c / n$ (LibMTL convention, the update
   is $\sum_i c_i g_i / n_i$) or $c$ (the original MGDA code's convention: the weights of
   the normalized problem applied to the raw gradients).

See ``docs/derivation.md`` for the derivation of step 4.

A loss-level weighting (``weighting.needs_gram`` is ``False``) needs no Gram matrix:
``combine(None, losses, weighting)`` computes its coefficients from the loss values alone,
with ``normalize`` ``"none"`` or ``"loss"`` (the other two need the gradient norms).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple

import torch

from ..weighting import reweight, smooth_coefficients
from ._base import Weighting, check_gram, check_loss_vector
from ._min_norm import MinNorm

__all__ = ["NORMALIZATIONS", "Combination", "Normalization", "combine", "normalizers"]

Normalization = Literal["none", "l2", "loss", "loss+"]
NORMALIZATIONS: tuple[str, ...] = ("none", "l2", "loss", "loss+")

WeightFn = Weighting | Callable[[torch.Tensor], torch.Tensor]


class Combination(NamedTuple):
    r"""What :func:`combine` computed, every tensor of shape ``(k,)``.

    Attributes:
        weights: $w$ from the weighting, on the normalized problem.
        reweighted: $\tilde w = w^p$, $p$ = ``power``.
        coefficients: $c$: the combined gradient is $\sum_i c_i g_i$ on the raw
            per-loss gradients $g_i$.
        normalizers: $n$ (all ones for ``"none"``).
        iterations: Solver iterations (``MinNorm`` only; otherwise 0).
    """

    weights: torch.Tensor
    reweighted: torch.Tensor
    coefficients: torch.Tensor
    normalizers: torch.Tensor
    iterations: int


def normalizers(gram: torch.Tensor | None, losses: torch.Tensor, mode: str) -> torch.Tensor:
    """Gradient normalizers $n$ (tensor operations only, no host synchronization).

    Args:
        gram: The ``(k, k)`` Gram matrix of the raw gradients (``None`` only for ``"none"``
            and ``"loss"``, which do not use it).
        losses: The ``(k,)`` loss values.
        mode: ``"none"``, ``"l2"``, ``"loss"`` or ``"loss+"``.

    Returns:
        $n$ of shape ``(k,)`` in ``gram``'s dtype; zeros are replaced by 1 so that a zero
        gradient or a zero loss stays zero instead of turning into NaN.

    Example:
        >>> import torch
        >>> from mograd.weightings import normalizers
        >>> normalizers(torch.diag(torch.tensor([9.0, 4.0])), torch.tensor([2.0, 0.5]), "loss+")
        tensor([6., 1.])
    """
    if mode not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {mode!r}")
    if gram is None and mode not in _LOSS_ONLY:
        raise ValueError(f"normalize={mode!r} needs the Gram matrix (its diagonal)")
    dtype, device = _like(gram, losses)
    k = losses.shape[0]
    if mode == "none":
        return torch.ones(k, dtype=dtype, device=device)
    loss_abs = losses.to(dtype).abs()
    if mode == "loss":
        n = loss_abs
    else:
        assert gram is not None
        norms = gram.diagonal().clamp_min(0).sqrt()
        n = norms if mode == "l2" else norms * loss_abs
    return torch.where(n > 0, n, torch.ones_like(n))


_LOSS_ONLY = ("none", "loss")


def _like(gram: torch.Tensor | None, losses: torch.Tensor) -> tuple[torch.dtype, torch.device]:
    """The dtype and device of the coefficients: the Gram matrix's, else the losses' (at
    least float32)."""
    if gram is not None:
        return gram.dtype, gram.device
    dtype = losses.dtype if losses.dtype in (torch.float32, torch.float64) else torch.float32
    return dtype, losses.device


def _solve(
    weighting: WeightFn, gram: torch.Tensor | None, losses: torch.Tensor
) -> tuple[torch.Tensor, int]:
    # Every weighting answers a non-finite input with NaN weights (no raise): the
    # optimizer's nonfinite= policy decides what happens next.
    if isinstance(weighting, MinNorm):
        assert gram is not None
        res = weighting.solve(gram)
        return res.weights, res.iterations
    if isinstance(weighting, Weighting):
        return weighting(gram, losses), 0  # type: ignore[arg-type]
    assert gram is not None
    k = gram.shape[0]
    w = weighting(gram)
    if not isinstance(w, torch.Tensor) or tuple(w.shape) != (k,):
        got = tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__
        raise ValueError(f"the weights callable must return a tensor of shape ({k},), got {got}")
    return w.to(device=gram.device, dtype=gram.dtype), 0


def combine(
    gram: torch.Tensor | None,
    losses: torch.Tensor,
    weighting: WeightFn,
    *,
    power: float = 1.0,
    mu: float | None = None,
    normalize: str = "none",
    normalized_update: bool = True,
) -> Combination:
    r"""Per-loss coefficients from the Gram matrix and the loss values (the pure step).

    Args:
        gram: ``(k, k)`` Gram matrix of the raw per-loss gradients, or ``None`` for a
            loss-level weighting (``weighting.needs_gram`` false).
        losses: ``(k,)`` loss values (detached).
        weighting: A :class:`~mograd.weightings.Weighting`, or any callable
            ``gram -> weights`` used as is.
        power: Reweighting exponent $p > 0$ (paper eq. 12; ``1.0`` none, ``2.0`` MIB).
        mu: Smooth-IB temperature $\mu$ (paper eq. 13; ``0.2`` MIB), or ``None`` for none.
        normalize: ``"none"``, ``"l2"``, ``"loss"`` or ``"loss+"``.
        normalized_update: ``True`` (LibMTL): coefficients $c / n$ on the raw gradients,
            i.e. the update is built from the normalized gradients. ``False`` (original MGDA
            code): $c$ on the raw gradients.

    Returns:
        A :class:`Combination` (on ``gram``'s device and dtype, or the losses' for
        ``gram=None``).

    Raises:
        ValueError: If ``gram`` is ``None`` for a weighting that needs it, or with
            ``normalize`` ``"l2"`` or ``"loss+"``; for a bad ``normalize``.

    Example:
        >>> import torch
        >>> from mograd.weightings import MinNorm, combine
        >>> G = torch.tensor([[1.0, 0.0], [0.0, 4.0]])
        >>> combine(G, torch.tensor([1.0, 1.0]), MinNorm(), normalize="l2").coefficients
        tensor([0.5000, 0.2500])
        >>> from mograd.weightings import GLS
        >>> combine(None, torch.tensor([1.0, 4.0]), GLS()).coefficients
        tensor([1.0000, 0.2500])
    """
    _check_inputs(gram, losses, weighting, normalize)
    dtype, device = _like(gram, losses)
    if normalize == "none":
        # Bit-identical to an unnormalized step: no division at all.
        n = torch.ones(losses.shape[0], dtype=dtype, device=device)
        w, iters = _solve(weighting, gram, losses)
        w_tilde = reweight(w, power)
        return Combination(w, w_tilde, smooth_coefficients(w_tilde, losses, mu), n, iters)
    n = normalizers(gram, losses, normalize)
    gram_n = None if gram is None else gram / (n[:, None] * n[None, :])
    losses_n = losses.to(dtype) / n
    w, iters = _solve(weighting, gram_n, losses_n)
    w_tilde = reweight(w, power)
    c = smooth_coefficients(w_tilde, losses_n, mu)
    return Combination(w, w_tilde, c / n if normalized_update else c, n, iters)


def _check_inputs(
    gram: torch.Tensor | None, losses: torch.Tensor, weighting: WeightFn, normalize: str
) -> None:
    if gram is not None:
        check_gram(gram, losses)
        return
    check_loss_vector(losses)
    if getattr(weighting, "needs_gram", True):
        name = type(weighting).__name__ if isinstance(weighting, Weighting) else "a callable"
        raise ValueError(
            f"gram=None needs a loss-level weighting (needs_gram False); {name} needs the "
            "Gram matrix"
        )
    if normalize not in _LOSS_ONLY:
        raise ValueError(
            f"normalize={normalize!r} needs the Gram matrix; without it only "
            f"{_LOSS_ONLY} are allowed"
        )

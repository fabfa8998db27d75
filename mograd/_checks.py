"""One validation style for the options and inputs of mograd (messages name the value)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["check_gram", "check_int", "check_losses", "check_number", "loss_values"]


def check_number(
    name: str, value: object, *, positive: bool = False, nonnegative: bool = False
) -> float:
    """A finite real number (``> 0`` when ``positive``, ``>= 0`` when ``nonnegative``), as
    a float. The one number check of mograd: options, weightings and the solver use it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if positive and v <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    if nonnegative and v < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


def check_int(name: str, value: object, minimum: int = 1) -> int:
    """An ``int`` (not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def check_losses(losses: object) -> list[torch.Tensor]:
    """k >= 1 scalar tensors that require grad, on one device, returned as 0-d tensors."""
    if isinstance(losses, torch.Tensor):
        raise TypeError(
            "losses must be a list of scalar tensors, got a single tensor; "
            "wrap it as [loss] or split a vector with list(losses.unbind())"
        )
    if not isinstance(losses, Sequence) and not hasattr(losses, "__iter__"):
        raise TypeError(f"losses must be a sequence of scalar tensors, got {type(losses).__name__}")
    out = list(losses)
    if not out:
        raise ValueError("losses is empty: pass at least one scalar loss")
    device = None
    for i, loss in enumerate(out):
        if not isinstance(loss, torch.Tensor):
            raise TypeError(f"losses[{i}] is a {type(loss).__name__}, not a tensor")
        if loss.numel() != 1 or loss.dim() > 1:
            raise ValueError(
                f"losses[{i}] must be a scalar, got shape {tuple(loss.shape)}; "
                "reduce it first (e.g. .mean())"
            )
        if not loss.is_floating_point() and not loss.is_complex():
            raise ValueError(f"losses[{i}] must have a floating dtype, got {loss.dtype}")
        if not loss.requires_grad:
            hint = (
                " (gradients are disabled here: was it computed under torch.no_grad()?)"
                if not torch.is_grad_enabled()
                else ": it is not connected to any parameter"
            )
            raise ValueError(f"losses[{i}] does not require grad{hint}")
        if device is None:
            device = loss.device
        elif loss.device != device:
            raise ValueError(
                f"losses are on different devices: losses[0] on {device}, "
                f"losses[{i}] on {loss.device}"
            )
    return [loss if loss.dim() == 0 else loss.reshape(()) for loss in out]


def loss_values(losses: list[torch.Tensor]) -> torch.Tensor:
    """Detached loss values in at least float32 (fp16/bf16 losses are promoted, so that
    the values of mixed-precision losses are neither rounded nor overflowed)."""
    with torch.no_grad():
        values = torch.stack(losses)  # promotes mixed dtypes; one op for any k
    if values.dtype in (torch.float16, torch.bfloat16):
        values = values.float()
    return values


def check_gram(gram: object, losses: object = None) -> None:
    """Validate a Gram matrix (and optional loss values) without a host synchronization.

    Args:
        gram: The candidate ``(k, k)`` Gram matrix.
        losses: Optional loss values, shape ``(k,)``.

    Raises:
        TypeError: If ``gram`` (or ``losses``) is not a tensor.
        ValueError: If ``gram`` is not a non-empty square floating matrix, or ``losses`` has
            the wrong shape.
    """
    if not isinstance(gram, torch.Tensor):
        raise TypeError(f"gram must be a torch.Tensor, got {type(gram).__name__}")
    if gram.dim() != 2 or gram.shape[0] != gram.shape[1] or gram.shape[0] == 0:
        raise ValueError(
            f"gram must be a non-empty square k x k matrix, got shape {tuple(gram.shape)}"
        )
    if not gram.is_floating_point():
        raise ValueError(f"gram must have a floating dtype, got {gram.dtype}")
    if losses is not None:
        if not isinstance(losses, torch.Tensor):
            raise TypeError(f"losses must be a torch.Tensor, got {type(losses).__name__}")
        if tuple(losses.shape) != (gram.shape[0],):
            raise ValueError(
                f"losses must have shape ({gram.shape[0]},) to match gram, "
                f"got {tuple(losses.shape)}"
            )

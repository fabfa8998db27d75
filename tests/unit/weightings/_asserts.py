"""Shared assertions of the weighting tests."""

from __future__ import annotations

from collections.abc import Callable

import torch

from mograd.weightings import Weighting

from ._inputs import SCALES

Factory = Callable[[], Weighting]


def rel_diff(jac: torch.Tensor, w: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative difference of the aggregated vectors ``J^T w`` and ``J^T ref``."""
    a, b = jac.T @ w.to(jac.dtype), jac.T @ ref.to(jac.dtype)
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def assert_aggregates_close(
    jac: torch.Tensor, w: torch.Tensor, ref: torch.Tensor, tol: float
) -> None:
    """``|J^T w - J^T ref| <= tol |J^T ref|``."""
    d = rel_diff(jac, w, ref)
    assert d <= tol, f"relative difference of J^T w {d:.3e} > {tol:g}; w={w}, reference={ref}"


def assert_permutation_equivariant(factory: Factory, gram: torch.Tensor, seed: int = 0) -> None:
    """``w(P G P^T) = P w(G)`` for a random permutation ``P`` (fresh instances each)."""
    k = gram.shape[0]
    perm = torch.randperm(k, generator=torch.Generator().manual_seed(seed))
    w = factory()(gram)
    wp = factory()(gram[perm][:, perm])
    torch.testing.assert_close(wp, w[perm], rtol=1e-6, atol=1e-9)


def assert_scale_behaviour(
    factory: Factory, gram: torch.Tensor, power: float = 0.0, rtol: float = 1e-6
) -> None:
    """``w(s G) = s**power w(G)`` for Gram scales ``s`` from 1e-20 to 1e30 (gradients 1e-10..1e15)."""
    w = factory()(gram)
    for scale in SCALES:
        s = scale * scale
        ws = factory()(gram * s)
        assert torch.isfinite(ws).all(), (scale, ws)
        torch.testing.assert_close(
            ws, w * s**power, rtol=rtol, atol=1e-12 * float(w.abs().max()) * s**power
        )

"""The private QP solver of the weightings: KKT conditions, both dual-cone code paths."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mograd.weightings._qp import (
    RIDGE,
    _primal_dual_active_set,
    normalized,
    project_dual_cone,
    solve_qp,
)

from ._inputs import jacobians


def problem(j: torch.Tensor) -> np.ndarray:
    g, tr = normalized((j @ j.T).numpy())
    if tr == 0.0:
        g = np.eye(j.shape[0])
    return g + RIDGE * np.eye(j.shape[0])


@settings(max_examples=60, deadline=None)
@given(jacobians(max_k=8), st.integers(0, 2**31))
def test_box_qp_kkt_and_both_code_paths_agree(j: torch.Tensor, seed: int) -> None:
    q = problem(j)
    k = q.shape[0]
    u = np.random.default_rng(seed).random(k)
    v = solve_qp(q, np.zeros(k), u)
    lam = q @ v
    scale = 1.0 + float(np.abs(lam).max()) + float(np.abs(v).max())
    assert (v >= u).all()
    assert lam.min() >= -1e-9 * scale
    assert np.abs((v - u) * lam).max() <= 1e-9 * scale**2
    fast = _primal_dual_active_set(q, u)
    if fast is not None:
        np.testing.assert_allclose(q @ fast, q @ v, atol=1e-9 * scale)
    np.testing.assert_allclose(
        q @ project_dual_cone(q - RIDGE * np.eye(k), u), lam, atol=1e-9 * scale
    )


@settings(max_examples=60, deadline=None)
@given(jacobians(max_k=8), st.integers(0, 2**31))
def test_simplex_qp_kkt(j: torch.Tensor, seed: int) -> None:
    q = problem(j)
    k = q.shape[0]
    c = np.random.default_rng(seed).normal(size=k)
    x = solve_qp(q, c, np.zeros(k), simplex=True)
    assert x.min() >= 0 and abs(x.sum() - 1.0) <= 1e-12
    grad = q @ x + c
    nu = grad[x > 0].min()
    scale = 1.0 + float(np.abs(grad).max())
    # stationarity on the support, non-negative multipliers off it
    assert np.abs(grad[x > 0] - nu).max() <= 1e-9 * scale
    assert (grad - nu).min() >= -1e-9 * scale

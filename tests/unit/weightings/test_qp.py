"""The private QP solvers of the weightings: KKT conditions of the primal active-set method,
its primal-dual fast path, and the exact (ridge-free) dual active-set method."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mograd.weightings._dual_set import dual_active_set, gram_factor
from mograd.weightings._qp import (
    RIDGE,
    WELL_CONDITIONED,
    _primal_active_set,
    _primal_dual_active_set,
    _simplex_primal_dual,
    normalized,
    project_dual_cone,
    psd_part,
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
def test_box_qp_kkt_and_the_fast_path_agree(j: torch.Tensor, seed: int) -> None:
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


@settings(max_examples=80, deadline=None)
@given(jacobians(max_k=8), st.integers(0, 2**31))
def test_dual_cone_projection_kkt_without_a_ridge(j: torch.Tensor, seed: int) -> None:
    """``min v^T G v`` s.t. ``v >= u`` on the PSD ``G`` itself: ``v >= u``, ``G v >= 0`` and
    ``(v - u)_i (G v)_i = 0``, at the rounding level of the multipliers."""
    g, tr = normalized(psd_part((j @ j.T).numpy()))
    if tr == 0.0:
        return
    k = g.shape[0]
    u = np.random.default_rng(seed).random(k)
    v = project_dual_cone(g, u)
    lam = g @ v
    scale = 1.0 + float(np.abs(v).sum())
    assert (v >= u).all()
    assert lam.min() >= -1e-10 * scale
    assert np.abs((v - u) * lam).max() <= 1e-10 * scale**2


@settings(max_examples=60, deadline=None)
@given(jacobians(max_k=7), st.floats(0.0, 0.5), st.integers(0, 2**31))
def test_dual_active_set_kkt_with_bounds_and_a_free_index(j, tau: float, seed: int) -> None:
    """PCD's form: ``d = F^T (e_0 + mu)``, ``g_j^T d >= tau |g_j|^2`` for ``j >= 1``: feasible,
    ``mu >= 0``, complementary, and not dropped for a feasible problem."""
    g, tr = normalized(psd_part((j @ j.T).numpy()))
    k = g.shape[0]
    if tr == 0.0 or k < 2:
        return
    f = gram_factor(g)
    e0 = np.eye(k)[0]
    b = np.concatenate([[0.0], tau * np.diag(g)[1:]])
    cons = np.arange(k) > 0
    v, feasible = dual_active_set(f, e0, b, cons)
    mu = v - e0
    assert mu[0] == 0.0 and (mu >= 0).all()
    if not feasible:
        return
    slack = (g @ v - b)[1:]
    scale = 1.0 + float(np.abs(v).sum())
    assert slack.min() >= -1e-10 * scale
    assert np.abs(mu[1:] * slack).max() <= 1e-10 * scale**2


def test_dual_active_set_reports_infeasibility() -> None:
    """Two opposed secondary gradients cannot both progress (``tau > 0``)."""
    f = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    b = np.array([0.0, 0.1, 0.1])
    _, feasible = dual_active_set(f, np.eye(3)[0], b, np.arange(3) > 0)
    assert not feasible


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
    # the primal-dual fast path (cold and warm-started) and the primal active-set method
    # agree wherever the fast path answers
    slow = _primal_active_set(q, c, np.zeros(k), True, None, None)
    for x0 in (None, slow, np.full(k, 1.0 / k)):
        fast = _simplex_primal_dual(q, c, x0)
        if fast is not None:
            np.testing.assert_allclose(q @ fast, q @ slow, atol=1e-8 * scale)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 40), st.integers(0, 2**31))
def test_dual_cone_fast_path_on_a_well_conditioned_gram_matches_the_exact_method(
    k: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    j = rng.normal(size=(k, 3 * k))  # full row rank: cond(G) in the tens to hundreds
    g, _ = normalized(j @ j.T)
    assert np.linalg.eigvalsh(g)[0] >= WELL_CONDITIONED
    u = rng.random(k) * (rng.random(k) < 0.5)
    fast = project_dual_cone(g, u, well_conditioned=True)
    exact = project_dual_cone(g, u)
    np.testing.assert_allclose(fast, exact, rtol=0, atol=1e-8 * (1.0 + np.abs(exact).max()))

"""Property tests of the min-norm solver against an exact reference implemented here."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mograd import min_norm_solve, min_norm_weights

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def exact_min_norm(g: np.ndarray) -> float:
    """Exact optimum by enumerating supports: on each face, solve the KKT system exactly.

    The optimum with the smallest support is the unique minimizer of the quadratic on that
    face's affine hull, so it is one of the candidates; every candidate is feasible.
    """
    k = g.shape[0]
    best = float(np.min(np.diag(g)))
    for m in range(2, k + 1):
        for support in itertools.combinations(range(k), m):
            idx = list(support)
            kkt = np.zeros((m + 1, m + 1))
            kkt[:m, :m] = g[np.ix_(idx, idx)]
            kkt[:m, m] = 1.0
            kkt[m, :m] = 1.0
            rhs = np.zeros(m + 1)
            rhs[m] = 1.0
            sol = np.linalg.lstsq(kkt, rhs, rcond=None)[0][:m]
            clipped = np.clip(sol, 0, None)
            if np.all(sol >= -1e-12) and np.all(np.isfinite(sol)) and clipped.sum() > 0:
                w = np.zeros(k)
                w[idx] = clipped / clipped.sum()
                best = min(best, float(w @ g @ w))
    return max(best, 0.0)


def rel_gap(g: np.ndarray, w: np.ndarray) -> float:
    scale = float(np.max(np.diag(g)))
    if scale == 0.0:
        return 0.0
    return (float(w @ g @ w) - exact_min_norm(g)) / scale


@st.composite
def jacobians(draw, kmin: int = 2, kmax: int = 8) -> np.ndarray:
    """Gradient matrices J (k x d) of every kind the issue lists; G = J J^T."""
    k = draw(st.integers(kmin, kmax))
    kind = draw(
        st.sampled_from(
            ["random", "rank_deficient", "collinear", "identical", "opposed", "zero", "mixed"]
        )
    )
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    d = draw(st.integers(1, 12))
    if kind == "random":
        jac = rng.standard_normal((k, max(d, k)))
    elif kind == "rank_deficient":
        r = draw(st.integers(1, max(1, k - 1)))
        jac = rng.standard_normal((k, r)) @ rng.standard_normal((r, max(d, 2)))
    elif kind == "collinear":
        jac = rng.standard_normal((k, 1)) * rng.standard_normal((1, d))
    elif kind == "identical":
        jac = np.tile(rng.standard_normal((1, d)), (k, 1))
    elif kind == "opposed":
        v = rng.standard_normal((1, d))
        jac = np.concatenate([v, -v, rng.standard_normal((k - 2, d))], axis=0)
    elif kind == "zero":
        jac = np.zeros((k, d))
    else:
        jac = rng.standard_normal((k, d)) * 10.0 ** rng.uniform(-3, 3, size=(k, 1))
    exponent = draw(st.floats(-5.0, 7.5))  # G is scaled by 1e-10 ... 1e15
    return jac * 10.0**exponent


def gram_of(jac: np.ndarray, dtype=torch.float64) -> torch.Tensor:
    return torch.tensor(jac @ jac.T, dtype=dtype)


@SETTINGS
@given(jacobians())
def test_simplex_finite_and_exact_float64(jac: np.ndarray) -> None:
    gram = gram_of(jac)
    res = min_norm_solve(gram)
    w = res.weights
    assert w.dtype == torch.float64 and w.shape == (jac.shape[0],)
    assert torch.isfinite(w).all()
    assert (w >= 0).all()
    assert abs(float(w.sum()) - 1.0) < 1e-12
    assert rel_gap(gram.numpy(), w.numpy()) <= 1e-6
    assert res.iterations <= 1000


@SETTINGS
@given(jacobians())
def test_optimality_conditions(jac: np.ndarray) -> None:
    """KKT of min w^T G w on the simplex: (G w)_j >= w^T G w for every j (to tolerance)."""
    g = gram_of(jac).numpy()
    w = min_norm_weights(torch.tensor(g)).numpy()
    scale = max(float(np.max(np.diag(g))), 1e-300)
    d = g @ w
    assert np.all(d >= float(w @ d) - 1e-6 * scale)


@SETTINGS
@given(jacobians(), st.randoms(use_true_random=False))
def test_permutation_equivariance(jac: np.ndarray, rnd) -> None:
    k = jac.shape[0]
    perm = list(range(k))
    rnd.shuffle(perm)
    g = gram_of(jac)
    gp = g[perm][:, perm]
    w = min_norm_weights(g).numpy()
    wp = min_norm_weights(gp).numpy()
    scale = max(float(torch.diagonal(g).max()), 1e-300)
    # The objective value is always equivariant; the weights themselves where unique.
    assert abs(float(wp @ gp.numpy() @ wp) - float(w @ g.numpy() @ w)) <= 1e-6 * scale
    if torch.linalg.eigvalsh(g).min() > 1e-6 * scale:
        np.testing.assert_allclose(wp, w[perm], atol=1e-6)


@SETTINGS
@given(jacobians(), st.floats(-6.0, 6.0))
def test_positive_scale_invariance(jac: np.ndarray, log_scale: float) -> None:
    g = gram_of(jac)
    a = 10.0**log_scale
    w = min_norm_weights(g).numpy()
    wa = min_norm_weights(g * a).numpy()
    scale = max(float(torch.diagonal(g).max()), 1e-300)
    assert abs(float(wa @ g.numpy() @ wa) - float(w @ g.numpy() @ w)) <= 1e-6 * scale
    if torch.linalg.eigvalsh(g).min() > 1e-6 * scale:
        np.testing.assert_allclose(wa, w, atol=1e-6)


@SETTINGS
@given(jacobians(kmin=2, kmax=2))
def test_two_closed_form(jac: np.ndarray) -> None:
    g = gram_of(jac)
    w = min_norm_weights(g)
    g11, g22, g12 = float(g[0, 0]), float(g[1, 1]), float(g[0, 1])
    den = g11 + g22 - 2 * g12
    if den > 1e-12 * (g11 + g22):
        expected = min(max((g22 - g12) / den, 0.0), 1.0)
        assert abs(float(w[0]) - expected) <= 1e-9
    assert rel_gap(g.numpy(), w.numpy()) <= 1e-9


@SETTINGS
@given(jacobians(kmin=2, kmax=2))
def test_two_closed_form_host_and_tensor_paths_are_bit_identical(jac: np.ndarray) -> None:
    from mograd.solver import _closed_form_2_host, _closed_form_2_tensor

    g = gram_of(jac)
    inf, nan = float("inf"), float("nan")
    specials = [
        torch.zeros(2, 2),
        torch.ones(2, 2),
        torch.tensor([[1.0, 1e300], [1e300, 1.0]]),
        torch.tensor([[4.0, 1.0], [1.0, 1.0]]),
        torch.tensor([[inf, 1.0], [1.0, 2.0]]),
        torch.tensor([[nan, 0.0], [0.0, 1.0]]),
    ]
    for m in [g, *(x.double() for x in specials)]:
        host, tensor = _closed_form_2_host(m), _closed_form_2_tensor(m)
        assert host.dtype == tensor.dtype == torch.float64
        torch.testing.assert_close(host, tensor, rtol=0, atol=0, equal_nan=True)


@SETTINGS
@given(jacobians())
def test_float32_documented_bound(jac: np.ndarray) -> None:
    g32 = gram_of(jac, torch.float32)
    w = min_norm_weights(g32)
    assert w.dtype == torch.float32
    assert torch.isfinite(w).all() and (w >= 0).all()
    assert abs(float(w.sum()) - 1.0) < 1e-6
    # Against the exact optimum of the float32 matrix itself (as float64).
    assert rel_gap(g32.double().numpy(), w.double().numpy()) <= 1e-4


def test_special_matrices() -> None:
    eye = torch.eye(3, dtype=torch.float64)
    np.testing.assert_allclose(min_norm_weights(eye).numpy(), [1 / 3] * 3, atol=1e-12)
    zero = torch.zeros(4, 4, dtype=torch.float64)
    assert torch.allclose(min_norm_weights(zero), torch.full((4,), 0.25, dtype=torch.float64))
    opposed = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    assert torch.allclose(min_norm_weights(opposed), torch.tensor([0.5, 0.5]))
    one = min_norm_solve(torch.tensor([[3.0]]))
    assert one.weights.tolist() == [1.0] and one.iterations == 0


def test_iteration_cap_is_respected() -> None:
    rng = np.random.default_rng(0)
    jac = rng.standard_normal((8, 3))
    res = min_norm_solve(gram_of(jac), max_iter=1, tol=0.0)
    assert res.iterations == 1
    assert abs(float(res.weights.sum()) - 1.0) < 1e-12 and (res.weights >= 0).all()


def test_keeps_device_and_dtype() -> None:
    for dtype in (torch.float32, torch.float64):
        for k in (1, 2, 5):
            g = torch.eye(k, dtype=dtype)
            w = min_norm_weights(g)
            assert w.dtype == dtype and w.device == g.device


@pytest.mark.parametrize(
    ("gram", "kwargs", "match"),
    [
        (torch.zeros(2, 3), {}, "square"),
        (torch.zeros(0, 0), {}, "square"),
        (torch.zeros(3), {}, "square"),
        (torch.eye(2, dtype=torch.int64), {}, "floating"),
        (torch.tensor([[1.0, float("nan")], [float("nan"), 1.0]]), {}, "non-finite"),
        (torch.tensor([[float("inf"), 0.0], [0.0, 1.0]]), {}, "non-finite"),
        (torch.eye(3), {"max_iter": 0}, "max_iter"),
        (torch.eye(3), {"tol": -1.0}, "tol"),
        (torch.eye(3), {"tol": float("nan")}, "tol"),
    ],
)
def test_bad_gram(gram: torch.Tensor, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        min_norm_weights(gram, **kwargs)


def test_not_a_tensor() -> None:
    with pytest.raises(TypeError, match="torch.Tensor"):
        min_norm_weights([[1.0, 0.0], [0.0, 1.0]])  # type: ignore[arg-type]

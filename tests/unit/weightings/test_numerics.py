"""Float32 Gram matrices of linearly dependent gradients (issue 19, item 4).

1. UPGrad and DualProj against an independent exact solution: the projections onto the
   dual cone of the positive semi-definite part ``G_+`` of the float32 ``G``, solved in the
   space of a factor ``F`` (``F F^T = G_+``) by quadprog's Goldfarb-Idnani method with the
   identity Hessian: ``min |x - F^T u|^2`` s.t. ``F x >= 0``. Before the fix (a 1e-12 ridge on
   the indefinite ``G``) the float32 20 x 10 matrices were 1e-3 off (up to 0.24 on a
   20 x 100 one); the weights are now computed from ``G_+`` without a ridge.
2. IMTL-G on rank-1 float32 matrices: the same answer as the exact formula (a fixed
   ``k sqrt(eps)`` cut-off on ``sum(v)`` zeroed it in float32 only).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mograd.weightings import IMTLG, DualProj, UPGrad
from mograd.weightings._qp import psd_part

from ._inputs import non_weak_matrix, strictly_weak_matrix, strong_matrix

quadprog = pytest.importorskip("quadprog")

CASES = [
    (fam, dims, seed)
    for fam in (strictly_weak_matrix, non_weak_matrix)
    for dims in ((20, 10, 10), (20, 10, 5), (9, 11, 5))
    for seed in range(3)
]


def factor(g: np.ndarray) -> np.ndarray:
    lam, vec = np.linalg.eigh(g)
    keep = lam > 0
    return vec[:, keep] * np.sqrt(lam[keep])


def project(f: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The projection of ``y`` onto ``{x : F x >= 0}`` (quadprog, identity Hessian)."""
    return quadprog.solve_qp(np.eye(f.shape[1]), y, f.T.copy(), np.zeros(f.shape[0]), 0)[0]


def exact(f: np.ndarray, upgrad: bool) -> np.ndarray:
    k = f.shape[0]
    p = np.full(k, 1.0 / k)
    if not upgrad:
        return project(f, f.T @ p)
    return sum(project(f, f.T @ (p[i] * np.eye(k)[i])) for i in range(k))


@pytest.mark.parametrize(("family", "dims", "seed"), CASES)
def test_dual_cone_methods_solve_the_psd_part_exactly(family, dims, seed: int) -> None:
    """On the float32 ``G``: weights (float64, from the float64 copy of ``G``) within 1e-6 of
    the exact solution for ``G_+``, and the float32 weights as returned within 1e-4."""
    j = family(*dims, torch.Generator().manual_seed(seed))
    g32 = j @ j.T
    g = g32.double().numpy()
    g = 0.5 * (g + g.T)
    f = factor(psd_part(g))
    for cls in (UPGrad, DualProj):
        x = exact(f, cls is UPGrad)
        scale = np.linalg.norm(x)
        w64 = cls()(torch.as_tensor(g)).numpy()
        assert np.linalg.norm(f.T @ w64 - x) <= 1e-6 * scale, cls.__name__
        w32 = cls()(g32).double().numpy()
        assert np.linalg.norm(f.T @ w32 - x) <= 1e-4 * scale, cls.__name__


def test_the_float32_gram_matrix_is_indefinite() -> None:
    """What made the ridge insufficient: eigenvalues of -1e-8 trace(G) (a 1e-12 ridge on
    ``G / trace(G)`` cannot make the QP convex)."""
    j = strictly_weak_matrix(20, 10, 10, torch.Generator().manual_seed(0))
    lam = torch.linalg.eigvalsh((j @ j.T).double())
    assert float(lam.min() / lam.sum()) < -1e-9


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("n", [10, 100])
def test_imtlg_rank_one_float32_matches_the_exact_formula(seed: int, n: int) -> None:
    """``v = G^+ sqrt(diag G)`` with the true rank (1), in float64 from the float32 rows."""
    j = strong_matrix(20, n, 1, torch.Generator().manual_seed(seed))
    jd = j.double()
    g = (jd @ jd.T).numpy()
    lam, vec = np.linalg.eigh(g)
    top = vec[:, -1:]
    v = top @ (top.T @ np.sqrt(np.diag(g))) / lam[-1]
    ref = jd.T @ torch.as_tensor(v / v.sum())
    for gram in (j @ j.T, jd @ jd.T):
        agg = jd.T @ IMTLG()(gram).double()
        assert float((agg - ref).norm()) <= 1e-4 * float(ref.norm()), gram.dtype


def test_imtlg_still_zero_for_opposed_gradients_in_float32() -> None:
    j = torch.tensor([[1.0, 2.0], [-1.0, -2.0]])
    assert torch.equal(IMTLG()(j @ j.T), torch.zeros(2))

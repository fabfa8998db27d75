"""ConFIG against TorchJD's ConFIG aggregator (pseudo-inverse of the unit gradients)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given, settings

from mograd.weightings import ConFIG

from ._asserts import assert_permutation_equivariant, assert_scale_behaviour
from ._inputs import KS_WIDE, degenerate_jacobians, gram, jacobian, jacobians

aggregation = pytest.importorskip("torchjd.aggregation")


@pytest.mark.parametrize("k", KS_WIDE)
@pytest.mark.parametrize("seed", range(2))
def test_matches_torchjd(k: int, seed: int) -> None:
    """Same formula in Gram form (d_u = U^+ 1 via (N G N)^+): 1e-10 (observed 1e-14)."""
    j = jacobian(k, seed)
    ours = j.T @ ConFIG()(j @ j.T)
    ref = aggregation.ConFIG()(j)
    assert float((ours - ref).norm()) <= 1e-10 * float(ref.norm())


def test_matches_torchjd_with_a_preference_and_rank_deficiency() -> None:
    """Rank 3 of 8 rows and a zero row: TorchJD's float64 pinv (rtol 8 eps) and ours
    (eigenvalues below 8 eps of the largest, of N G N) drop the same directions: 1e-8."""
    j = degenerate_jacobians()["rank3_k8"]
    pref = torch.linspace(0.5, 2.0, 8, dtype=torch.float64)
    ref = aggregation.ConFIG(pref_vector=pref)(j)
    ours = j.T @ ConFIG(pref_vector=pref)(j @ j.T)
    assert float((ours - ref).norm()) <= 1e-8 * float(ref.norm())
    j0 = degenerate_jacobians()["one_zero_row"]  # TorchJD: nan_to_num of 0 / 0; ours: N_ii = 0
    ref0 = aggregation.ConFIG()(j0)
    assert float((j0.T @ ConFIG()(j0 @ j0.T) - ref0).norm()) <= 1e-10 * float(ref0.norm())


@settings(max_examples=60, deadline=None)
@given(jacobians(full_rank=True, exp=2))
def test_equal_positive_projections_on_every_unit_gradient(j: torch.Tensor) -> None:
    """For linearly independent gradients, d . g_i / |g_i| is the same for every i, > 0,
    and |d| = sum_i g_i . e (e the unit direction)."""
    g = j @ j.T
    k = g.shape[0]
    evals = torch.linalg.eigvalsh(g / g.diagonal().sqrt().outer(g.diagonal().sqrt()))
    assume(k <= j.shape[1] and float(evals.min()) > 1e-6 * float(evals.max()))
    w = ConFIG()(g)
    d = j.T @ w
    proj = (j @ d) / j.norm(dim=1)
    torch.testing.assert_close(proj, proj.mean().expand(k), rtol=1e-7, atol=0)
    assert float(proj.min()) > 0
    torch.testing.assert_close(d.norm(), (j @ (d / d.norm())).sum())


def test_permutation_and_scale() -> None:
    g = gram(5, 2)
    assert_permutation_equivariant(ConFIG, g)
    assert_scale_behaviour(ConFIG, g, power=0.0)

"""Aligned-MTL against TorchJD's AlignedMTLWeighting, and its defining property."""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given, settings

from mograd.weightings import AlignedMTL

from ._asserts import (
    assert_aggregates_close,
    assert_permutation_equivariant,
    assert_scale_behaviour,
)
from ._inputs import KS, gram, jacobian, jacobians

aggregation = pytest.importorskip("torchjd.aggregation")


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("mode", ["min", "median", "rmse"])
def test_matches_torchjd(k: int, seed: int, mode: str) -> None:
    j = jacobian(k, seed)
    g = j @ j.T
    ref = aggregation.AlignedMTLWeighting(scale_mode=mode)(g)
    assert_aggregates_close(j, AlignedMTL(scale_mode=mode)(g), ref, 1e-10)


def test_matches_torchjd_with_a_preference_vector_and_rank_deficiency() -> None:
    j = jacobian(3, 2)
    j = torch.cat([j, j[:1] - j[2:3]])  # rank 3 of 4
    g = j @ j.T
    pref = torch.tensor([0.1, 0.4, 0.2, 0.3], dtype=torch.float64)
    ref = aggregation.AlignedMTLWeighting(pref)(g)
    assert_aggregates_close(j, AlignedMTL(pref_vector=pref)(g), ref, 1e-8)


@settings(max_examples=60, deadline=None)
@given(jacobians(full_rank=True, exp=1))
def test_balanced_gradients_are_orthogonal_with_equal_norms(j: torch.Tensor) -> None:
    """With B the balance transformation (B e_i = AlignedMTL(pref=e_i)), B G B = s P_range."""
    g = j @ j.T
    k = g.shape[0]
    evals = torch.linalg.eigvalsh(g)
    assume(float(evals.min()) > 1e-6 * float(evals.max()))  # full rank: P_range = I
    b = torch.stack([AlignedMTL(pref_vector=torch.eye(k)[i])(g) for i in range(k)], dim=1)
    bgb = b.T @ g @ b
    s = float(evals.min())
    torch.testing.assert_close(bgb, s * torch.eye(k, dtype=g.dtype), rtol=1e-6, atol=1e-7 * s)


def test_permutation_and_scale() -> None:
    g = gram(4, 6)
    assert_permutation_equivariant(AlignedMTL, g)
    assert_scale_behaviour(AlignedMTL, g, power=0.0)

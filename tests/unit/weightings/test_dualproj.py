"""DualProj against TorchJD's DualProjWeighting, and its defining property."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings

from mograd.weightings import DualProj

from ._asserts import (
    assert_aggregates_close,
    assert_permutation_equivariant,
    assert_scale_behaviour,
)
from ._inputs import KS, gram, jacobian, jacobians

aggregation = pytest.importorskip("torchjd.aggregation")
pytest.importorskip("qpsolvers")
pytest.importorskip("quadprog")
from torchjd.linalg import QuadprogProjector  # noqa: E402


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("seed", range(3))
def test_matches_torchjd(k: int, seed: int) -> None:
    j = jacobian(k, seed)
    g = j @ j.T
    exact = aggregation.DualProjWeighting(projector=QuadprogProjector(norm_eps=0.0, reg_eps=0.0))
    assert_aggregates_close(j, DualProj()(g), exact(g), 1e-8)
    assert_aggregates_close(j, DualProj(reg_eps=1e-4)(g), aggregation.DualProjWeighting()(g), 1e-8)


def test_matches_torchjd_with_a_preference_vector() -> None:
    j = jacobian(3, 4)
    g = j @ j.T
    pref = torch.tensor([0.5, 0.2, 0.3], dtype=torch.float64)
    ref = aggregation.DualProjWeighting(pref, QuadprogProjector(norm_eps=0.0, reg_eps=0.0))(g)
    assert_aggregates_close(j, DualProj(pref_vector=pref)(g), ref, 1e-8)


@settings(max_examples=60, deadline=None)
@given(jacobians())
def test_never_conflicts_and_is_the_closest_such_vector(j: torch.Tensor) -> None:
    """(G w)_i >= 0; w >= p; and complementary slackness (w_i - p_i) (G w)_i = 0, on G
    itself (the solve is exact: no ridge)."""
    g = j @ j.T
    k = g.shape[0]
    p = torch.full((k,), 1.0 / k, dtype=g.dtype)
    w = DualProj()(g)
    tr = float(g.diagonal().sum())
    scale = tr * float(w.abs().sum() + 1)
    assert float((g @ w).min()) >= -1e-9 * scale
    assert float((w - p).min()) >= -1e-12
    assert float(((w - p) * (g @ w)).abs().max()) <= 1e-9 * scale * float(w.abs().sum() + 1)


def test_permutation_and_scale() -> None:
    g = gram(6, 3)
    assert_permutation_equivariant(DualProj, g)
    assert_scale_behaviour(DualProj, g, power=0.0)

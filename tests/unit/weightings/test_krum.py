"""Krum / Multi-Krum against TorchJD's KrumWeighting and the paper's scores; Sum and Mean
against TorchJD."""

from __future__ import annotations

import itertools

import pytest
import torch

from mograd.weightings import Krum, Mean, Sum

from ._inputs import KS_WIDE, jacobian

aggregation = pytest.importorskip("torchjd.aggregation")


@pytest.mark.parametrize("k", [k for k in KS_WIDE if k >= 3])
@pytest.mark.parametrize("f", [0, 1, 2])
@pytest.mark.parametrize("m", [1, 2])
def test_matches_torchjd_with_distances(k: int, f: int, m: int) -> None:
    """TorchJD scores with distances (not squared): squared=False gives the same selection,
    equal weights. With one neighbour (k - f - 2 = 1) the two mutually nearest gradients
    always tie, which each breaks its own way: those cases are left out."""
    if k < max(f + 3, m) or k - f - 2 < 2:
        return
    j = jacobian(k, k + f)
    g = j @ j.T
    ref = aggregation.KrumWeighting(n_byzantine=f, n_selected=m)(g)
    assert torch.equal(Krum(n_byzantine=f, n_selected=m, squared=False)(g), ref)


@pytest.mark.parametrize("seed", range(5))
def test_paper_scores_with_squared_distances(seed: int) -> None:
    """score(i) = sum of the k - f - 2 smallest |g_i - g_j|^2 (j != i), from the rows."""
    k, f = 7, 2
    j = jacobian(k, seed)
    j[seed % k] += 10.0  # one far gradient
    scores = []
    for i in range(k):
        d = sorted(float((j[i] - j[o]).pow(2).sum()) for o in range(k) if o != i)
        scores.append(sum(d[: k - f - 2]))
    best = min(range(k), key=lambda i: scores[i])
    expect = torch.zeros(k, dtype=j.dtype)
    expect[best] = 1.0
    assert torch.equal(Krum(n_byzantine=f)(j @ j.T), expect)
    assert Krum(n_byzantine=f)(j @ j.T)[seed % k] == 0


def test_multi_krum_averages_the_lowest_scores_and_ties_go_to_the_lowest_index() -> None:
    j = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [-4.0, 2.0]])
    w = Krum(n_selected=2)(j @ j.T)
    assert torch.equal(w, torch.tensor([0.5, 0.5, 0.0, 0.0]))
    for perm in itertools.permutations(range(3)):
        jp = j[[*perm, 3]]
        assert torch.equal(Krum()(jp @ jp.T), torch.tensor([1.0, 0.0, 0.0, 0.0]))


@pytest.mark.parametrize("k", KS_WIDE)
def test_sum_and_mean_match_torchjd(k: int) -> None:
    j = jacobian(k, 1)
    g = j @ j.T
    assert torch.equal(Sum()(g), aggregation.SumWeighting()(j))
    torch.testing.assert_close(Mean()(g), aggregation.MeanWeighting()(j), rtol=0, atol=1e-16)

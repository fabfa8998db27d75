"""combine() without a Gram matrix, for the loss-level weightings (one backward pass)."""

from __future__ import annotations

import re

import pytest
import torch

from mograd.weightings import FAMO, STCH, UPGrad, combine


def test_loss_level_combination_without_gram() -> None:
    losses = torch.tensor([1.0, 3.0])
    comb = combine(None, losses, STCH(mu=0.5))
    torch.testing.assert_close(comb.coefficients, STCH(mu=0.5)(None, losses))
    assert comb.iterations == 0 and torch.equal(comb.normalizers, torch.ones(2))
    assert comb.coefficients.dtype == torch.float32


def test_the_same_coefficients_with_or_without_the_gram_matrix() -> None:
    losses = torch.tensor([1.0, 3.0, 0.5], dtype=torch.float64)
    g = torch.eye(3, dtype=torch.float64)
    a = combine(None, losses, FAMO(), normalize="loss", power=2.0, mu=0.2)
    b = combine(g, losses, FAMO(), normalize="loss", power=2.0, mu=0.2)
    torch.testing.assert_close(a.coefficients, b.coefficients)
    torch.testing.assert_close(a.normalizers, losses)


@pytest.mark.parametrize("mode", ["l2", "loss+"])
def test_gradient_normalizations_need_the_gram_matrix(mode: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"normalize={mode!r} needs the Gram matrix")):
        combine(None, torch.ones(2), STCH(), normalize=mode)


def test_a_gram_weighting_needs_the_gram_matrix() -> None:
    with pytest.raises(ValueError, match="UPGrad needs the Gram matrix"):
        combine(None, torch.ones(2), UPGrad())
    with pytest.raises(ValueError, match="a callable needs the Gram matrix"):
        combine(None, torch.ones(2), lambda g: torch.ones(2))
    with pytest.raises(ValueError, match="1-d"):
        combine(None, torch.ones(2, 2), STCH())

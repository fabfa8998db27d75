"""The weighting layer against the paper's literal equations."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mograd.weighting import reweight, smooth_coefficients, smooth_ib_loss

floats = st.floats(-50.0, 50.0, allow_nan=False)


def literal_eq13(w_tilde: torch.Tensor, losses: torch.Tensor, mu: float) -> torch.Tensor:
    """Paper eq. 13 written term by term, independently of mograd.weighting."""
    terms = [w_tilde[i].detach() * losses[i] for i in range(len(losses))]
    m = min(terms, key=lambda t: float(t.detach()))
    lse = sum(torch.exp((t - m) / mu) for t in terms)
    return sum(terms) + mu * torch.log(lse) + m


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 6).flatmap(
        lambda k: st.tuples(
            st.lists(st.floats(0.0, 1.0), min_size=k, max_size=k),
            st.lists(floats, min_size=k, max_size=k),
        )
    ),
    st.floats(0.01, 5.0),
)
def test_coefficients_equal_autograd_of_eq13(data, mu: float) -> None:
    w_raw, loss_raw = data
    w = torch.tensor(w_raw, dtype=torch.float64)
    if float(w.sum()) == 0.0:
        w = torch.full_like(w, 1.0 / len(w))
    w = w / w.sum()
    w_tilde = reweight(w, 2.0)
    losses = torch.tensor(loss_raw, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(literal_eq13(w_tilde, losses, mu), losses)
    ours = smooth_coefficients(w_tilde, losses.detach(), mu)
    assert torch.isfinite(ours).all()
    if not torch.isfinite(grad).all():  # the literal exp overflows past (x_i - min x) / mu > 709
        return
    torch.testing.assert_close(ours, grad)
    # mograd's own literal form agrees too
    (grad2,) = torch.autograd.grad(smooth_ib_loss(w_tilde, losses, mu), losses)
    torch.testing.assert_close(grad2, grad)


def test_eq13_equals_logsumexp_form() -> None:
    """Paper eq. 13 = sum x + mu * logsumexp(x / mu)."""
    w = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    losses = torch.tensor([3.0, -1.0, 0.5], dtype=torch.float64)
    x = w * losses
    lhs = smooth_ib_loss(w, losses, 0.2)
    torch.testing.assert_close(lhs, x.sum() + 0.2 * torch.logsumexp(x / 0.2, 0))


def test_no_smoothing_and_powers() -> None:
    w = torch.tensor([0.25, 0.75])
    assert torch.equal(smooth_coefficients(w, torch.tensor([5.0, 1.0]), None), w)
    assert torch.equal(reweight(w, 1.0), w)
    torch.testing.assert_close(reweight(w, 2.0), torch.tensor([0.0625, 0.5625]))
    torch.testing.assert_close(reweight(w, 3.0), w**3)
    # paper eq. 12: p = 1 + sqrt(sqrted)
    for sqrted in (False, True):
        torch.testing.assert_close(reweight(w, 1 + float(sqrted) ** 0.5), w ** (1 + sqrted))


def test_coefficients_are_shift_stable_for_large_losses() -> None:
    c = smooth_coefficients(torch.tensor([0.5, 0.5]), torch.tensor([1e6, 1e6 + 1.0]), 0.2)
    assert torch.isfinite(c).all()
    torch.testing.assert_close(c, torch.tensor([0.5 * (1 + 0.07585818), 0.5 * (1 + 0.92414182)]))


def test_smooth_ib_is_the_weighted_sum_plus_stch() -> None:
    """Paper eqs. 13-14 and STCH (Lin et al. 2024) are the same soft maximum: the Smooth-IB
    coefficients are w~ plus the STCH coefficients with preference w~ and temperature mu."""
    from mograd.weightings import STCH

    w = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    losses = torch.tensor([3.0, -1.0, 0.5], dtype=torch.float64)
    stch = STCH(mu=0.2, pref_vector=w)(None, losses)
    torch.testing.assert_close(smooth_coefficients(w, losses, 0.2), w + stch)

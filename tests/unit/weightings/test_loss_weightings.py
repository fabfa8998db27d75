"""The loss-level weightings against TorchJD 0.18's scalarizers (the coefficients are the
autograd gradient of the scalarized loss with respect to the loss values; the learned
parameters follow torch.optim.Adam on TorchJD's parameters) and their defining equations."""

from __future__ import annotations

import pytest
import torch

from mograd.weightings import COSMOS, DWA, FAMO, GLS, IMTLL, PBI, STCH, UW, Random

scalarization = pytest.importorskip("torchjd.scalarization")

K = (1, 2, 3, 5, 8, 16, 32)


def values(k: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return 0.2 + 2.0 * torch.rand(k, generator=gen, dtype=torch.float64)


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-12) -> None:
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def torchjd_coefficients(scalarizer, losses: torch.Tensor) -> torch.Tensor:
    x = losses.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(scalarizer(x), x)
    return grad


@pytest.mark.parametrize("k", K)
@pytest.mark.parametrize(("ours", "theirs"), [(UW, "UW"), (IMTLL, "IMTLL")])
def test_learned_scales_match_torchjd_trained_by_adam(k: int, ours, theirs: str) -> None:
    """Ten steps: the coefficients equal TorchJD's gradient (1e-12), and the parameters
    equal TorchJD's after torch.optim.Adam (lr 0.05) on its scalarized loss (1e-12)."""
    ref = getattr(scalarization, theirs)(k).double()
    opt = torch.optim.Adam(ref.parameters(), lr=0.05, foreach=False)
    w = ours(lr=0.05)
    for s in range(10):
        losses = values(k, s)
        close(w(None, losses), torchjd_coefficients(ref, losses))
        opt.zero_grad()
        ref(losses).backward()
        opt.step()
        param = next(iter(ref.parameters())).detach()
        torch.testing.assert_close(w.state_dict()["adam"]["param"], param, rtol=1e-12, atol=1e-12)


def test_uw_and_imtll_reach_their_optima() -> None:
    """UW's optimum is exp(s_i) = L_i (weights 1 / (2 L_i)); IMTL-L's makes exp(s_i) L_i = 1."""
    losses = torch.tensor([0.5, 2.0, 8.0], dtype=torch.float64)
    uw, il = UW(lr=0.05), IMTLL(lr=0.05)
    for _ in range(2000):
        cu, ci = uw(None, losses), il(None, losses)
    torch.testing.assert_close(cu, 0.5 / losses, rtol=1e-3, atol=0)
    torch.testing.assert_close(ci * losses, torch.ones(3, dtype=torch.float64), rtol=1e-3, atol=0)


@pytest.mark.parametrize("k", K)
@pytest.mark.parametrize("mu", [0.05, 1.0])
def test_stch_matches_torchjd(k: int, mu: float) -> None:
    gen = torch.Generator().manual_seed(k)
    pref = torch.rand(k, generator=gen, dtype=torch.float64) + 0.1
    ref_point = -torch.rand(k, generator=gen, dtype=torch.float64)
    losses = values(k, 1)
    theirs = scalarization.STCH(mu=mu, weights=pref, reference=ref_point)
    ours = STCH(mu=mu, pref_vector=pref, reference=ref_point)
    close(ours(None, losses), torchjd_coefficients(theirs, losses))
    close(STCH(mu=mu)(None, losses), torchjd_coefficients(scalarization.STCH(mu=mu), losses))


def test_stch_tends_to_the_tchebycheff_subgradient() -> None:
    losses = torch.tensor([1.0, 3.0, 2.0], dtype=torch.float64)
    c = STCH(mu=1e-4)(None, losses)
    torch.testing.assert_close(c, torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64) / 3)


@pytest.mark.parametrize("k", K)
def test_gls_matches_torchjd_and_balances_the_scaled_losses(k: int) -> None:
    losses = values(k, 2)
    c = GLS()(None, losses)
    close(c, torchjd_coefficients(scalarization.GeometricMean(), losses))
    torch.testing.assert_close(c * losses, (c * losses).mean().expand(k))  # = S / k each
    assert torch.isnan(GLS()(None, torch.tensor([1.0, 0.0]))).all()


@pytest.mark.parametrize("k", [k for k in K if k >= 2])
@pytest.mark.parametrize("theta", [0.0, 5.0])
def test_pbi_matches_torchjd(k: int, theta: float) -> None:
    """TorchJD smooths d_2 by an absolute 1e-12 under the root, ours by (1e-6 |f|)^2: away
    from the ray (|d_2| ~ 0.1 to 1 here) the coefficients agree to 1e-9."""
    gen = torch.Generator().manual_seed(k)
    pref = torch.rand(k, generator=gen, dtype=torch.float64) + 0.1
    ref_point = -torch.rand(k, generator=gen, dtype=torch.float64)
    losses = values(k, 3)
    theirs = scalarization.PBI(theta=theta, weights=pref, reference=ref_point)
    ours = PBI(theta=theta, pref_vector=pref, reference=ref_point)
    torch.testing.assert_close(
        ours(None, losses), torchjd_coefficients(theirs, losses), rtol=1e-9, atol=1e-9
    )


def test_pbi_on_the_ray_is_the_direction() -> None:
    c = PBI(theta=5.0, pref_vector=[1.0, 2.0])(None, torch.tensor([1.0, 2.0], dtype=torch.float64))
    torch.testing.assert_close(c, torch.tensor([1.0, 2.0], dtype=torch.float64) / 5**0.5)


@pytest.mark.parametrize("k", [k for k in K if k >= 2])
@pytest.mark.parametrize("lam", [0.0, 0.5, 8.0])
def test_cosmos_matches_torchjd(k: int, lam: float) -> None:
    cos = COSMOS(lambda_=lam, seed=k)
    pref = cos.sample_pref(k)
    losses = values(k, 4)
    theirs = scalarization.COSMOS(lambda_=lam, weights=pref)
    close(cos(None, losses), torchjd_coefficients(theirs, losses))
    assert (pref > 0).all() and float(pref.sum()) == pytest.approx(1.0)


@pytest.mark.parametrize("k", [1, 2, 5])
def test_dwa_matches_torchjd_over_epochs(k: int) -> None:
    """Four epochs of three batches: the same coefficients (TorchJD's step() = our
    end_epoch()), also with period=3 instead of end_epoch()."""
    theirs, ours, auto = scalarization.DWA(temperature=2.0), DWA(), DWA(period=3)
    for epoch in range(4):
        for b in range(3):
            losses = values(k, 10 * epoch + b) / (epoch + 1)
            ref = torchjd_coefficients(theirs, losses)
            close(ours(None, losses), ref)
            close(auto(None, losses), ref)
        theirs.step()
        ours.end_epoch()


@pytest.mark.parametrize("k", [1, 2, 5, 32])
def test_famo_matches_torchjd_with_update(k: int) -> None:
    """Five steps with update() on recomputed losses: coefficients and logits equal TorchJD's
    (its internal Adam on the same gradient) to 1e-12."""
    theirs = scalarization.FAMO(k).double()
    ours = FAMO()
    for s in range(5):
        losses = values(k, s)
        close(ours(None, losses), torchjd_coefficients(theirs, losses))
        after = losses * (0.7 + 0.3 * values(k, 100 + s) / 2.2)
        theirs.update(after)
        ours.update(after)
        torch.testing.assert_close(
            ours.state_dict()["adam"]["param"], theirs._w.detach(), rtol=1e-12, atol=1e-12
        )


def test_famo_without_update_learns_from_the_next_batch() -> None:
    """Not calling update(): each call first updates with its own losses as the 'after' of
    the previous step, which is TorchJD's update() fed with the next batch's losses."""
    k = 3
    theirs, ours = scalarization.FAMO(k).double(), FAMO()
    batches = [values(k, s) for s in range(6)]
    for s, losses in enumerate(batches):
        if s > 0:
            theirs.update(losses)
        close(ours(None, losses), torchjd_coefficients(theirs, losses))
    with pytest.raises(ValueError, match="must follow a call"):
        FAMO().update(batches[0])


def test_famo_coefficients_decrease_log_losses_at_equal_rates() -> None:
    """With z uniform, c_i L_i is the same for every i: the first-order decrease of
    log L_i under the update is equal when the gradients are orthonormal."""
    losses = torch.tensor([0.5, 2.0, 4.0], dtype=torch.float64)
    c = FAMO()(None, losses)
    torch.testing.assert_close(c * losses, (c * losses).mean().expand(3))
    assert float(c.sum()) == pytest.approx(1.0)


def test_random_matches_torchjd_scalarizer() -> None:
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(4)
        ours = Random(seed=4)
        for s in range(3):
            losses = values(5, s)
            ref = torchjd_coefficients(scalarization.Random(), losses)
            torch.testing.assert_close(ours(None, losses), ref, rtol=1e-15, atol=1e-15)
    finally:
        torch.random.set_rng_state(state)


def test_output_device_and_dtype_follow_the_losses() -> None:
    for dtype, out in ((torch.float16, torch.float32), (torch.float32, torch.float32)):
        c = UW()(None, torch.ones(3, dtype=dtype))
        assert c.dtype == out
    c = STCH()(torch.eye(3, dtype=torch.float64), torch.ones(3))
    assert c.dtype == torch.float64

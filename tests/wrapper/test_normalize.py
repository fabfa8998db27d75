"""Gradient normalization and the choice of weighting in the optimizer (docs/api.md)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mograd import MOWrapper, min_norm_solve, reweight, smooth_coefficients
from mograd.weightings import Mean, MinNorm, combine, normalizers


def model_and_losses(seed: int = 0, scales=(1.0, 1.0, 1.0)):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    x = torch.randn(16, 5, dtype=torch.float64)
    z = model[1](model[0](x))
    out = model[2](z)
    losses = [
        out[:, 0].pow(2).mean() + 0.1,
        (out[:, 1] - 1).pow(2).mean() + out[:, 0].mean().abs(),
        z.pow(2).mean() + 0.2,
    ]
    return model, z, [s * loss for s, loss in zip(scales, losses)]


def grads_after(scales, repr_mode=False, **kw):
    model, z, losses = model_and_losses(scales=scales)
    opt = MOWrapper(torch.optim.SGD(model.parameters(), lr=1.0), **kw)
    info = opt.backward(losses, features=z if repr_mode else None)
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()]), info


@pytest.mark.parametrize("normalize", ["l2", "loss"])
@pytest.mark.parametrize("weights", ["min_norm", "mgda", "mean"])
@pytest.mark.parametrize("repr_mode", [False, True])
@pytest.mark.parametrize("scales", [(1.0, 1e3, 1.0), (1e-4, 1.0, 7.0)])
def test_normalized_update_is_invariant_to_loss_scale(normalize, weights, repr_mode, scales) -> None:
    base, _ = grads_after((1.0, 1.0, 1.0), repr_mode, weights=weights, normalize=normalize)
    scaled, _ = grads_after(scales, repr_mode, weights=weights, normalize=normalize)
    torch.testing.assert_close(scaled, base, rtol=1e-8, atol=1e-12)


def test_unnormalized_update_is_not_invariant() -> None:
    base, _ = grads_after((1.0, 1.0, 1.0), weights="min_norm")
    scaled, _ = grads_after((1.0, 1e3, 1.0), weights="min_norm")
    assert not torch.allclose(scaled, base)


def test_none_is_the_plain_composition_bit_for_bit() -> None:
    gen = torch.Generator().manual_seed(3)
    for k in (2, 3, 6):
        j = torch.randn(k, 40, generator=gen)
        g = j @ j.T
        values = torch.rand(k, generator=gen) + 0.5
        comb = combine(g, values, MinNorm(), power=2.0, mu=0.2)
        w = min_norm_solve(g, validate=False).weights
        c = smooth_coefficients(reweight(w, 2.0), values, 0.2)
        assert torch.equal(comb.weights, w) and torch.equal(comb.coefficients, c)
        assert torch.equal(comb.normalizers, torch.ones(k))


@pytest.mark.parametrize("mode", ["l2", "loss", "loss+"])
def test_normalizers_and_both_update_conventions(mode) -> None:
    model, _, losses = model_and_losses()
    params = list(model.parameters())
    rows = []
    for loss in losses:
        gs = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        rows.append(torch.cat([torch.zeros_like(p).reshape(-1) if g is None else g.reshape(-1) for p, g in zip(params, gs)]))
    j = torch.stack(rows)
    values = torch.stack([v.detach() for v in losses])
    norms = j.norm(dim=1)
    expected_n = {"l2": norms, "loss": values, "loss+": values * norms}[mode]
    n = normalizers(j @ j.T, values, mode)
    torch.testing.assert_close(n, expected_n)
    # LibMTL convention: weights of the normalized problem on the normalized gradients
    jn = j / n[:, None]
    w = min_norm_solve(jn @ jn.T).weights
    c = smooth_coefficients(reweight(w, 2.0), values / n, 0.2)
    g_lib, info = grads_after((1.0, 1.0, 1.0), normalize=mode)
    torch.testing.assert_close(info.weights, w)
    torch.testing.assert_close(info.normalizers, n)
    torch.testing.assert_close(g_lib, c @ jn)
    # original MGDA convention: the same coefficients on the raw gradients
    g_raw, info_raw = grads_after((1.0, 1.0, 1.0), normalize=mode, normalized_update=False)
    torch.testing.assert_close(info_raw.weights, w)
    torch.testing.assert_close(g_raw, c @ j)


def test_mib_spellings_keep_mib_and_other_weightings_are_used_as_is() -> None:
    model = nn.Linear(2, 2)
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    for spelling in ("min_norm", "mib", "equal", (0.3, 0.7)):
        opt = MOWrapper(sgd, weights=spelling)
        assert (opt.power, opt.mu) == (2.0, 0.2)
    for spelling in ("mgda", "mean", Mean(), MinNorm(), lambda g: torch.ones(g.shape[0])):
        opt = MOWrapper(sgd, weights=spelling)
        assert (opt.power, opt.mu) == (1.0, None)
    composed = MOWrapper(sgd, weights=Mean(), power=2.0, mu=0.2)
    assert (composed.power, composed.mu) == (2.0, 0.2)


def test_callable_weighting_is_used_as_is() -> None:
    calls = []

    def first_only(gram: torch.Tensor) -> torch.Tensor:
        calls.append(gram.shape)
        w = torch.zeros(gram.shape[0], dtype=gram.dtype)
        w[0] = 1.0
        return w

    model, _, losses = model_and_losses()
    opt = MOWrapper(torch.optim.SGD(model.parameters(), lr=1.0), weights=first_only)
    info = opt.backward(losses)
    ref_model, _, ref_losses = model_and_losses()
    expected = torch.autograd.grad(ref_losses[0], list(ref_model.parameters()))
    assert calls == [(3, 3)]
    assert torch.equal(info.coefficients, torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    got = [p.grad for p in model.parameters()]
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)


def test_callable_returning_a_bad_shape_is_named() -> None:
    model, _, losses = model_and_losses()
    opt = MOWrapper(torch.optim.SGD(model.parameters(), lr=1.0), weights=lambda g: torch.ones(2))
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        opt.backward(losses)


def test_normalize_option_is_validated() -> None:
    with pytest.raises(ValueError, match="normalize must be one of .* got 'L2'"):
        MOWrapper(torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1), normalize="L2")

"""The contract every built-in weighting keeps: validation, degenerate inputs, device, state."""

from __future__ import annotations

import pytest
import torch

from mograd.weightings import (
    IMTLG,
    WEIGHTINGS,
    AlignedMTL,
    CAGrad,
    DualProj,
    NashMTL,
    PCGrad,
    Random,
    UPGrad,
    Weighting,
    from_name,
)

from ._inputs import SCALES, degenerate_grams, gram

NEW = {
    "upgrad": UPGrad,
    "dualproj": DualProj,
    "imtlg": IMTLG,
    "aligned_mtl": AlignedMTL,
    "cagrad": CAGrad,
    "pcgrad": PCGrad,
    "nash_mtl": NashMTL,
    "random": Random,
}
ALL = sorted(WEIGHTINGS)
DEGENERATE = degenerate_grams()


def test_names_are_registered() -> None:
    for name, cls in NEW.items():
        assert WEIGHTINGS[name] is cls
        w = from_name(name)
        assert isinstance(w, cls) and isinstance(w, Weighting)
        assert isinstance(cls.host_sync, bool) and cls.needs_losses is False
        assert repr(w).startswith(cls.__name__ + "(")
    assert from_name("Nash-MTL").__class__ is NashMTL


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize(
    ("bad", "exc", "match"),
    [
        ([[1.0, 0.0], [0.0, 1.0]], TypeError, "torch.Tensor"),
        (torch.ones(3), ValueError, "square"),
        (torch.ones(2, 3), ValueError, "square"),
        (torch.ones(0, 0), ValueError, "non-empty"),
        (torch.ones(2, 2, 2), ValueError, "square"),
        (torch.eye(2, dtype=torch.int64), ValueError, "floating"),
    ],
)
def test_bad_gram_raises(name: str, bad: object, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        from_name(name)(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: UPGrad(pref_vector=[1.0, -1.0]), r"pref_vector\[1\].*-1.0"),
        (lambda: UPGrad(pref_vector=[0.0, 0.0]), "all zero"),
        (lambda: UPGrad(pref_vector=torch.ones(2, 2)), "1-d"),
        (lambda: UPGrad(pref_vector="ab"), "'ab'"),
        (lambda: UPGrad(pref_vector=[]), "empty"),
        (lambda: UPGrad(reg_eps=-1.0), "reg_eps.*-1.0"),
        (lambda: DualProj(pref_vector=[float("nan")]), "nan"),
        (lambda: DualProj(reg_eps=float("inf")), "inf"),
        (lambda: AlignedMTL(scale_mode="max"), "'max'"),
        (lambda: AlignedMTL(pref_vector=[1.0, float("inf")]), "inf"),
        (lambda: CAGrad(c=-0.5), "c must.*-0.5"),
        (lambda: CAGrad(c="1"), "'1'"),
        (lambda: CAGrad(rescale=1), "rescale.*1"),
        (lambda: CAGrad(norm_eps=0.0), "norm_eps.*> 0.*0.0"),
        (lambda: PCGrad(seed=-1), "seed.*-1"),
        (lambda: PCGrad(seed=1.5), "seed.*1.5"),
        (lambda: Random(seed=True), "seed.*True"),
        (lambda: NashMTL(max_norm=-1.0), "max_norm.*-1.0"),
        (lambda: NashMTL(update_weights_every=0), "update_weights_every.*0"),
        (lambda: NashMTL(max_iter=2.0), "max_iter.*2.0"),
        (lambda: NashMTL(reg_eps=float("nan")), "reg_eps.*nan"),
    ],
)
def test_bad_options_raise_value_error_naming_the_value(make, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("cls", [UPGrad, DualProj, AlignedMTL])
def test_pref_vector_of_the_wrong_length(cls) -> None:
    with pytest.raises(ValueError, match="pref_vector of 2 entries but the Gram matrix is 3 x 3"):
        cls(pref_vector=[1.0, 2.0])(torch.eye(3))


@pytest.mark.parametrize("name", sorted(NEW))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_finite_weights_on_degenerate_grams(name: str, dtype: torch.dtype) -> None:
    """Zero, identical, opposed, rank-deficient Gram matrices, k up to 8, gradient scales
    1e-10 to 1e15: finite weights of the right shape, dtype and device (NaN only where the
    Gram matrix itself overflows the dtype)."""
    for label, g in DEGENERATE.items():
        for scale in SCALES:
            gs = (g * (scale * scale)).to(dtype)
            w = from_name(name)(gs)
            assert w.shape == (g.shape[0],) and w.dtype == dtype and w.device == gs.device
            if torch.isfinite(gs).all():
                assert torch.isfinite(w).all(), (name, label, scale, dtype, w)


@pytest.mark.parametrize("name", sorted(set(NEW) - {"random"}))
def test_non_finite_gram_gives_nan_weights(name: str) -> None:
    g = gram(3, 0)
    g[0, 1] = g[1, 0] = float("nan")
    assert torch.isnan(from_name(name)(g)).all()
    g[0, 1] = g[1, 0] = float("inf")
    assert torch.isnan(from_name(name)(g)).all()


def test_random_ignores_the_gram_values() -> None:
    g = torch.full((3, 3), float("nan"))
    assert torch.isfinite(Random()(g)).all()


@pytest.mark.parametrize("name", sorted(NEW))
def test_float32_matches_float64(name: str) -> None:
    g = gram(4, 3)
    w64 = from_name(name)(g)
    w32 = from_name(name)(g.float())
    assert w32.dtype == torch.float32
    torch.testing.assert_close(w32.double(), w64, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("name", sorted(NEW))
def test_stateless_or_resumable(name: str) -> None:
    """Stateful weightings resume bit-identically from ``state_dict``; others have none."""
    grams = [gram(3, s) for s in range(4)]
    a = from_name(name)
    for g in grams[:2]:
        a(g)
    state = a.state_dict()
    b = from_name(name)
    b.load_state_dict(state)
    for g in grams[2:]:
        assert torch.equal(a(g), b(g))
    if name not in ("random", "pcgrad", "nash_mtl"):
        assert state == {}
        with pytest.raises(ValueError, match="no state"):
            b.load_state_dict({"x": 1})
    else:
        with pytest.raises(ValueError, match="state must hold"):
            b.load_state_dict({"x": 1})


@pytest.mark.parametrize("name", ["random", "pcgrad"])
def test_same_seed_same_draws_different_seed_different(name: str) -> None:
    """What makes distributed ranks agree: the draws depend on the seed only."""
    g = gram(5, 1)
    cls = NEW[name]
    a, b, c = cls(seed=3), cls(seed=3), cls(seed=4)
    wa = [a(g) for _ in range(3)]
    wb = [b(g) for _ in range(3)]
    wc = [c(g) for _ in range(3)]
    assert all(torch.equal(x, y) for x, y in zip(wa, wb))
    assert not all(torch.equal(x, y) for x, y in zip(wa, wc))
    assert not torch.equal(wa[0], wa[1])


def test_random_state_survives_torch_save(tmp_path) -> None:
    a = Random(seed=9)
    a(torch.eye(3))
    path = tmp_path / "s.pt"
    torch.save(a.state_dict(), path)
    b = Random(seed=0)
    b.load_state_dict(torch.load(path))
    assert torch.equal(a(torch.eye(3)), b(torch.eye(3)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", sorted(NEW))
def test_cuda_device_and_dtype(name: str) -> None:
    g = gram(4, 2).cuda()
    w = from_name(name)(g)
    assert w.device == g.device and w.dtype == g.dtype
    torch.testing.assert_close(w.cpu(), from_name(name)(g.cpu()))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", [n for n, c in NEW.items() if not c.host_sync])
def test_cuda_no_host_sync_when_host_sync_is_false(name: str) -> None:
    g = gram(4, 2).cuda()
    w = from_name(name)
    w(g)  # warm up (pinned memory pool)
    torch.cuda.set_sync_debug_mode("error")
    try:
        w(g)
    finally:
        torch.cuda.set_sync_debug_mode("default")

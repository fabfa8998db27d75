"""The contract every registered weighting keeps: validation, degenerate and non-finite
inputs, dtype and device, state (resume, deepcopy, torch.save)."""

from __future__ import annotations

import copy

import pytest
import torch

from mograd.weightings import (
    COSMOS,
    CRMOGM,
    DWA,
    FAMO,
    PBI,
    PCD,
    STCH,
    UW,
    WEIGHTINGS,
    AlignedMTL,
    CAGrad,
    ConFIG,
    DualProj,
    ExcessMTL,
    FairGrad,
    GradNorm,
    GradVac,
    Krum,
    LossWeighting,
    MoDo,
    NashMTL,
    PCGrad,
    Random,
    SDMGrad,
    UPGrad,
    Weighting,
    from_name,
)

from ._inputs import SCALES, degenerate_grams, gram

ALL = sorted(WEIGHTINGS)
GRAM = [n for n in ALL if WEIGHTINGS[n].needs_gram]
LOSS = [n for n in ALL if not WEIGHTINGS[n].needs_gram]
DEGENERATE = degenerate_grams()
#: Names whose state is an RNG that advances on every call (finite or not).
DRAWS_ON_EVERY_CALL = {"random", "rlw"}


def losses_for(k: int, dtype: torch.dtype = torch.float64, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (0.5 + torch.rand(k, generator=gen, dtype=torch.float64)).to(dtype)


def call(w: Weighting, g: torch.Tensor, losses: torch.Tensor | None = None) -> torch.Tensor:
    """A weighting on what the optimizer gives it: the Gram matrix (when it needs one) and
    the loss values."""
    losses = losses_for(g.shape[0], g.dtype) if losses is None else losses
    return w(g if w.needs_gram else None, losses)


def usable(name: str, k: int) -> bool:
    return not (name == "krum" and k < 3)


def test_names_are_registered() -> None:
    for name in ALL:
        cls = WEIGHTINGS[name]
        w = from_name(name)
        assert isinstance(w, cls) and isinstance(w, Weighting)
        assert isinstance(w.host_sync, bool) and isinstance(w.needs_losses, bool)
        assert w.needs_gram is not isinstance(w, LossWeighting)
        assert repr(w).startswith(cls.__name__ + "(")
    assert from_name("Nash-MTL").__class__ is NashMTL
    assert set(LOSS) == {"random", "rlw", "uw", "dwa", "famo", "stch", "imtl_l", "gls"} | {
        "geometric_mean",
        "cosmos",
        "pbi",
    }


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
        from_name(name)(bad, torch.ones(2))  # type: ignore[arg-type]


@pytest.mark.parametrize("name", LOSS)
@pytest.mark.parametrize(
    ("bad", "exc", "match"),
    [
        ([1.0, 2.0], TypeError, "losses must be a torch.Tensor"),
        (torch.ones(2, 2), ValueError, "1-d"),
        (torch.ones(0), ValueError, "non-empty"),
        (torch.ones(2, dtype=torch.int64), ValueError, "floating"),
    ],
)
def test_bad_losses_raise(name: str, bad: object, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        from_name(name)(None, bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", [n for n in ALL if from_name(n).needs_losses])
def test_missing_losses_raise(name: str) -> None:
    w = from_name(name)
    with pytest.raises(ValueError, match="needs the loss values"):
        w(None if not w.needs_gram else torch.eye(2))


@pytest.mark.parametrize("name", GRAM)
def test_missing_gram_raises(name: str) -> None:
    with pytest.raises(ValueError, match="needs the Gram matrix"):
        from_name(name)(None, torch.ones(3))  # type: ignore[arg-type]


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
        (lambda: FairGrad(alpha=-1.0), "alpha.*-1.0"),
        (lambda: FairGrad(max_iter=0), "max_iter.*0"),
        (lambda: ConFIG(pref_vector=[-1.0]), r"pref_vector\[0\]"),
        (lambda: GradVac(beta=1.5), r"beta must be in \[0, 1\].*1.5"),
        (lambda: GradVac(eps=-1e-8), "eps.*-1e-08"),
        (lambda: ExcessMTL(robust_step_size=0.0), "robust_step_size.*0.0"),
        (lambda: ExcessMTL(n_warmup_steps=-1), "n_warmup_steps.*-1"),
        (lambda: CRMOGM(alpha=2.0), "alpha.*2.0"),
        (lambda: CRMOGM(UW()), "Gram-matrix Weighting"),
        (lambda: CRMOGM(initial_weights=[-1.0]), "initial_weights"),
        (lambda: Krum(n_byzantine=-1), "n_byzantine.*-1"),
        (lambda: Krum(n_selected=0), "n_selected.*0"),
        (lambda: PCD(tau=1.5), "tau.*1.5"),
        (lambda: PCD(tau=[0.1, 2.0]), r"tau\[1\].*2.0"),
        (lambda: PCD(beta=1.0), r"beta must be in \[0, 1\)"),
        (lambda: MoDo(gamma=0.0), "gamma.*0.0"),
        (lambda: MoDo(rho=-1.0), "rho.*-1.0"),
        (lambda: SDMGrad(momentum=1.0), "momentum"),
        (lambda: SDMGrad(n_iter=0), "n_iter.*0"),
        (lambda: GradNorm(alpha=-1.0), "alpha.*-1.0"),
        (lambda: GradNorm(lr=-1.0), "lr.*-1.0"),
        (lambda: UW(lr=float("nan")), "lr.*nan"),
        (lambda: UW(init=float("inf")), "init.*inf"),
        (lambda: DWA(temperature=0.0), "temperature.*0.0"),
        (lambda: DWA(period=0), "period.*0"),
        (lambda: FAMO(weight_decay=-1.0), "weight_decay.*-1.0"),
        (lambda: FAMO(min_losses=[float("nan")]), "min_losses"),
        (lambda: STCH(mu=0.0), "mu.*0.0"),
        (lambda: STCH(reference=[float("inf")]), "reference"),
        (lambda: COSMOS(lambda_=-1.0), "lambda_.*-1.0"),
        (lambda: COSMOS(alpha=0.0), "alpha.*0.0"),
        (lambda: PBI(theta=-1.0), "theta.*-1.0"),
        (lambda: PBI(pref_vector=[0.0, 0.0]), "all zero"),
    ],
)
def test_bad_options_raise_value_error_naming_the_value(make, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("make", [UPGrad, DualProj, AlignedMTL, ConFIG, SDMGrad, STCH, PBI, COSMOS])
def test_pref_vector_of_the_wrong_length(make) -> None:
    w = make(pref_vector=[1.0, 2.0])
    with pytest.raises(ValueError, match="pref_vector of 2 entries"):
        call(w, torch.eye(3, dtype=torch.float64))


def test_krum_needs_enough_losses() -> None:
    with pytest.raises(ValueError, match="needs at least 4 losses, got 3"):
        Krum(n_byzantine=1)(torch.eye(3))


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_finite_weights_on_degenerate_grams(name: str, dtype: torch.dtype) -> None:
    """Zero, identical, opposed, rank-deficient Gram matrices, k up to 8, gradient scales
    1e-10 to 1e15: finite weights of the right shape, dtype and device (NaN only where the
    Gram matrix itself overflows the dtype)."""
    for label, g in DEGENERATE.items():
        if not usable(name, g.shape[0]):
            continue
        for scale in SCALES:
            gs = (g * (scale * scale)).to(dtype)
            w = call(from_name(name), gs)
            assert w.shape == (g.shape[0],) and w.dtype == dtype and w.device == gs.device
            if torch.isfinite(gs).all():
                assert torch.isfinite(w).all(), (name, label, scale, dtype, w)


def non_finite_grams() -> list[torch.Tensor]:
    inf_diag = torch.eye(3, dtype=torch.float64)
    inf_diag[2, 2] = float("inf")
    off = gram(3, 0)
    off[0, 1] = off[1, 0] = float("-inf")
    half = gram(3, 1)
    half[1, 2] = half[2, 1] = float("nan")
    return [inf_diag, torch.full((3, 3), float("nan"), dtype=torch.float64), off, half]


@pytest.mark.parametrize("name", ALL)
def test_non_finite_input_gives_nan_weights(name: str) -> None:
    """The one contract (issue 17, item 8): a Gram matrix or loss vector with a NaN or an
    infinity gives all-NaN weights of shape (k,), without raising."""
    for g in non_finite_grams():
        w = from_name(name)
        out = w(g, losses_for(3))  # a loss-level weighting still propagates a given G
        assert out.shape == (3,) and torch.isnan(out).all(), (name, g, out)
    if from_name(name).needs_losses or not from_name(name).needs_gram:
        for bad in (float("nan"), float("inf"), float("-inf")):
            losses = losses_for(3)
            losses[1] = bad
            out = call(from_name(name), gram(3, 0), losses)
            assert out.shape == (3,) and torch.isnan(out).all(), (name, bad, out)


@pytest.mark.parametrize("name", sorted(set(ALL) - DRAWS_ON_EVERY_CALL))
def test_a_non_finite_step_leaves_the_state_as_it_was(name: str) -> None:
    """Inserting a non-finite step changes none of the later weights."""
    k = 4
    grams = [gram(k, s) for s in range(3)]
    bad = torch.full((k, k), float("nan"), dtype=torch.float64)
    bad_losses = torch.full((k,), float("nan"), dtype=torch.float64)
    a, b = from_name(name), from_name(name)
    ref = [call(a, g, losses_for(k, seed=s)) for s, g in enumerate(grams)]
    got = [call(b, grams[0], losses_for(k, seed=0))]
    b(bad if b.needs_gram else None, bad_losses)
    got += [call(b, g, losses_for(k, seed=s)) for s, g in enumerate(grams) if s > 0]
    for x, y in zip(ref, got):
        assert torch.equal(x, y), (name, x, y)


@pytest.mark.parametrize("name", ALL)
def test_float32_matches_float64(name: str) -> None:
    g = gram(4, 3)
    w64 = call(from_name(name), g)
    w32 = call(from_name(name), g.float())
    assert w32.dtype == torch.float32
    torch.testing.assert_close(w32.double(), w64, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("name", ALL)
def test_stateless_or_resumable(name: str) -> None:
    """Stateful weightings resume bit-identically from ``state_dict`` (also after
    ``torch.save``) and from ``copy.deepcopy``; the others have no state."""
    grams = [gram(4, s) for s in range(5)]
    a = from_name(name)
    for s, g in enumerate(grams[:2]):
        call(a, g, losses_for(4, seed=s))
    state = a.state_dict()
    b = from_name(name)
    b.load_state_dict(state)
    c = copy.deepcopy(a)
    for s, g in enumerate(grams[2:], start=2):
        x = call(a, g, losses_for(4, seed=s))
        assert torch.equal(x, call(b, g, losses_for(4, seed=s)))
        assert torch.equal(x, call(c, g, losses_for(4, seed=s)))
    if state == {}:
        with pytest.raises(ValueError, match="no state"):
            b.load_state_dict({"x": 1})
    else:
        with pytest.raises(ValueError, match="state"):
            b.load_state_dict({"x": 1})


@pytest.mark.parametrize("name", [n for n in ALL if from_name(n).state_dict() or n == "dwa"])
def test_state_survives_torch_save(name: str, tmp_path) -> None:
    a = from_name(name)
    for s in range(2):
        call(a, gram(4, s), losses_for(4, seed=s))
    path = tmp_path / "s.pt"
    torch.save(a.state_dict(), path)
    b = from_name(name)
    b.load_state_dict(torch.load(path, weights_only=False))
    assert torch.equal(call(a, gram(4, 7)), call(b, gram(4, 7)))


@pytest.mark.parametrize("name", ["random", "pcgrad", "gradvac"])
def test_same_seed_same_draws_different_seed_different(name: str) -> None:
    """What makes distributed ranks agree: the draws depend on the seed only."""
    g = gram(5, 1)
    cls = WEIGHTINGS[name]
    a, b, c = cls(seed=3), cls(seed=3), cls(seed=4)  # type: ignore[call-arg]
    wa = [call(a, g) for _ in range(3)]
    wb = [call(b, g) for _ in range(3)]
    wc = [call(c, g) for _ in range(3)]
    assert all(torch.equal(x, y) for x, y in zip(wa, wb))
    assert not all(torch.equal(x, y) for x, y in zip(wa, wc))
    if name != "gradvac":  # GradVac's targets move: its draws matter less after step 1
        assert not torch.equal(wa[0], wa[1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ALL)
def test_cuda_device_and_dtype(name: str) -> None:
    g = gram(4, 2).cuda()
    w = call(from_name(name), g, losses_for(4).cuda())
    assert w.device == g.device and w.dtype == g.dtype
    torch.testing.assert_close(w.cpu(), call(from_name(name), g.cpu()))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", [n for n in ALL if not from_name(n).host_sync])
def test_cuda_no_host_sync_when_host_sync_is_false(name: str) -> None:
    g = gram(4, 2).cuda()
    losses = losses_for(4).cuda()
    w = from_name(name)
    call(w, g, losses)  # warm up (pinned memory pool, lazily created state)
    torch.cuda.set_sync_debug_mode("error")
    try:
        call(w, g, losses)
    finally:
        torch.cuda.set_sync_debug_mode("default")

"""Unit tests of the IB benchmark kit (benchmarks/ibkit): losses, models, methods, attacks, data."""

from __future__ import annotations

import copy
import functools
import gzip
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.ibkit import attacks as atk
from benchmarks.ibkit.data import DEBIAN_FASHION_MNIST, TensorData, load_dataset
from benchmarks.ibkit.losses import (
    gaussian_kl,
    info_plane_point,
    information_term,
    kde_mutual_information,
    lagrangian,
)
from benchmarks.ibkit.methods import (
    ALL_METHODS,
    INTERPRETATION_METHODS,
    PAPER_METHODS,
    canonical_name,
    get_method,
)
from benchmarks.ibkit.models import build_model
from benchmarks.ibkit.report import row_ranks, summarize, table_markdown
from benchmarks.ibkit.train import RunConfig, final_evaluation, make_scheduler

# ----------------------------------------------------------------------------- losses


def test_gaussian_kl_matches_numpy() -> None:
    """Batch-mean KL against the closed form evaluated in float64 numpy."""
    gen = torch.Generator().manual_seed(0)
    mu = torch.randn(7, 5, generator=gen, dtype=torch.float64)
    sigma = torch.rand(7, 5, generator=gen, dtype=torch.float64) * 2 + 0.05
    m, s = mu.numpy(), sigma.numpy()
    expected = np.mean(np.sum(0.5 * (m**2 + s**2 - 1.0 - np.log(s**2)), axis=1))
    assert gaussian_kl(mu, sigma).item() == pytest.approx(expected, rel=1e-12)


def test_gaussian_kl_zero_at_prior_and_positive_elsewhere() -> None:
    """KL(N(0, I) || N(0, I)) = 0; shifting the mean by 1 in one of K dims costs 1/2 nat."""
    mu = torch.zeros(3, 4)
    sigma = torch.ones(3, 4)
    assert gaussian_kl(mu, sigma).item() == pytest.approx(0.0, abs=1e-7)
    mu[:, 0] = 1.0
    assert gaussian_kl(mu, sigma).item() == pytest.approx(0.5, abs=1e-6)


def _kde_numpy(h: np.ndarray, s2: float) -> float:
    """Direct double loop of I_hat = log N - 1/N sum_i log sum_j exp(-|h_i - h_j|^2 / 2 s^2)."""
    n = h.shape[0]
    total = 0.0
    for i in range(n):
        terms = [math.exp(-float(np.sum((h[i] - h[j]) ** 2)) / (2.0 * s2)) for j in range(n)]
        total += math.log(sum(terms))
    return math.log(n) - total / n


@pytest.mark.parametrize("s2", [0.3, 1.0, 4.0])
def test_kde_estimate_matches_direct_numpy(s2: float) -> None:
    """The vectorised KDE estimate equals a naive double loop."""
    gen = torch.Generator().manual_seed(1)
    h = torch.randn(9, 3, generator=gen, dtype=torch.float64)
    got = kde_mutual_information(h, torch.tensor(s2, dtype=torch.float64)).item()
    assert got == pytest.approx(_kde_numpy(h.numpy(), s2), rel=1e-10, abs=1e-12)


def test_kde_estimate_bounds_and_gradient() -> None:
    """0 for identical points, log N for far-apart points, finite gradients (also at i == j)."""
    s2 = torch.tensor(1.0)
    same = torch.ones(6, 4)
    assert kde_mutual_information(same, s2).item() == pytest.approx(0.0, abs=1e-6)
    far = torch.eye(6) * 100.0
    assert kde_mutual_information(far, s2).item() == pytest.approx(math.log(6), abs=1e-6)
    h = torch.randn(8, 4, requires_grad=True)
    phi = torch.tensor(0.3, requires_grad=True)
    kde_mutual_information(h, torch.nn.functional.softplus(phi)).backward()
    assert torch.isfinite(h.grad).all() and torch.isfinite(phi.grad)
    assert phi.grad.item() < 0  # more noise, less information


def test_squared_lagrangian_and_gradient() -> None:
    """L_pred + beta L_info^2 and its gradient 2 beta L_info w.r.t. L_info."""
    pred = torch.tensor(0.7)
    info = torch.tensor(30.0, requires_grad=True)
    beta = 1e-3
    plain = lagrangian(pred, info, beta, squared=False)
    squared = lagrangian(pred, info, beta, squared=True)
    assert plain.item() == pytest.approx(0.7 + beta * 30.0)
    assert squared.item() == pytest.approx(0.7 + beta * 900.0)
    (grad,) = torch.autograd.grad(squared, info)
    assert grad.item() == pytest.approx(2 * beta * 30.0)
    assert lagrangian(pred, None, beta, squared=True).item() == pytest.approx(0.7)


def test_info_plane_point() -> None:
    """I(Z;Y) lower bound = log 10 - CE."""
    x, y = info_plane_point(12.5, 0.3)
    assert x == 12.5 and y == pytest.approx(math.log(10) - 0.3)


# ----------------------------------------------------------------------------- models


def test_gaussian_encoder_sigma_and_eval_determinism() -> None:
    """sigma = softplus(rho - 5); eval uses z = mu (deterministic), training samples."""
    torch.manual_seed(0)
    model = build_model("cnn", 1, "VIB")
    x = torch.rand(4, 1, 28, 28)
    model.train()
    stats = model.forward_stats(x)
    e = model.encoder(model.backbone(model.normalize(x)))
    rho = e[:, 128:]
    assert torch.allclose(stats.sigma, torch.nn.functional.softplus(rho - 5.0))
    assert torch.allclose(stats.mu, e[:, :128])
    assert not torch.equal(model(x), model(x))  # two samples differ
    model.eval()
    assert torch.equal(model(x), model(x))
    assert torch.allclose(model(x), model.decoder(stats.mu), atol=1e-6)
    assert information_term(stats).item() > 0


def test_noisy_layer_init_and_eval() -> None:
    """NIB: s^2 = softplus(phi) starts at 1; eval feeds h without noise to the decoder."""
    torch.manual_seed(0)
    model = build_model("cnn", 1, "NIB")
    assert model.noise_var().item() == pytest.approx(1.0, abs=1e-6)
    x = torch.rand(5, 1, 28, 28)
    model.eval()
    stats = model.forward_stats(x)
    assert torch.allclose(stats.logits, model.decoder(stats.h))
    val = information_term(stats).item()
    assert 0.0 <= val <= math.log(5) + 1e-6
    model.train()
    assert not torch.equal(model(x), model(x))


def test_deterministic_model_has_no_information_term() -> None:
    """RES18 is the same head without a bottleneck."""
    model = build_model("cnn", 1, "RES18")
    stats = model.forward_stats(torch.rand(2, 1, 28, 28))
    assert information_term(stats) is None
    assert stats.logits.shape == (2, 10)


@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 32)])
def test_resnet18_adaptation(channels: int, size: int) -> None:
    """torchvision ResNet-18: 3x3 stride-1 first conv for the input channels, no max-pool."""
    model = build_model("resnet18", channels, "MIB", image_size=size)
    conv = model.backbone.conv1
    assert conv.in_channels == channels
    assert conv.kernel_size == (3, 3) and conv.stride == (1, 1)
    assert isinstance(model.backbone.maxpool, torch.nn.Identity)
    model.eval()
    with torch.no_grad():
        out = model(torch.rand(2, channels, size, size))
    assert out.shape == (2, 10)


def test_build_model_rejects_bad_values() -> None:
    """Unknown backbone, method or kind raise ValueError."""
    with pytest.raises(ValueError, match="backbone"):
        build_model("vgg", 1, "VIB")
    with pytest.raises(ValueError, match="unknown method"):
        build_model("cnn", 1, "XIB")
    with pytest.raises(ValueError, match="kind"):
        build_model("cnn", 1, kind="laplace")


# ----------------------------------------------------------------------------- methods


def test_method_registry() -> None:
    """Bottleneck kinds and MOWrapper options of the methods and ablations."""
    assert len(ALL_METHODS) == 12 and ALL_METHODS[:9] == PAPER_METHODS
    assert all(not get_method(m).interpretation for m in PAPER_METHODS)
    assert all(get_method(m).interpretation for m in INTERPRETATION_METHODS)
    assert get_method("RES18").kind == "deterministic"
    assert get_method("NIB-squared").kind == "noisy" and get_method("NIB-squared").squared
    assert get_method("VIB-squared").squared and not get_method("VIB").squared
    mib = get_method("MIB")
    assert mib.multi_objective and mib.mo_options == {
        "weights": "min_norm",
        "power": 2.0,
        "mu": 0.2,
    }
    assert get_method("MIB w.o. s").mo_options["mu"] is None
    assert get_method("MIB w.o. aw").mo_options["weights"] == (0.5, 0.5)
    assert get_method("VIB w. aw").mo_options == {"weights": "min_norm", "power": 1.0, "mu": None}
    assert canonical_name("vib-sq") == "VIB-squared"
    assert canonical_name("mib w.o. s") == "MIB w.o. s"
    with pytest.raises(ValueError, match="unknown method"):
        canonical_name("DIB")


# ----------------------------------------------------------------------------- attacks


@pytest.mark.parametrize(
    ("dataset", "eps", "alpha"),
    [("fashion_mnist", 1 / 255, 2 / 255), ("cifar10", 8 / 255, 10 / 255)],
)
def test_attack_objects_carry_settings(dataset: str, eps: float, alpha: float) -> None:
    """Every constructed torchattacks object carries the paper's eps / alpha / steps."""
    settings = atk.SETTINGS[dataset]
    assert (settings.eps, settings.alpha, settings.steps) == (eps, alpha, 10)
    model = build_model("cnn", 1, "VIB")
    for name in atk.ATTACKS:
        attack = atk.build_attack(name, model, settings)
        assert type(attack).__name__ == name
        assert attack.eps == pytest.approx(eps)
        if name != "FGSM":
            assert attack.alpha == pytest.approx(alpha)
            assert attack.steps == 10
    with pytest.raises(ValueError, match="unknown attack"):
        atk.build_attack("CW", model, settings)


def test_attacks_stay_in_budget_and_restore_mode() -> None:
    """Adversarial images stay in the eps ball and [0, 1]; the model's mode is restored."""
    torch.manual_seed(0)
    model = build_model("cnn", 1, "VIB")
    model.train()
    x = torch.rand(6, 1, 28, 28)
    y = torch.randint(0, 10, (6,))
    settings = atk.AttackSettings(eps=8 / 255, alpha=2 / 255, steps=3)
    for name in atk.ATTACKS:
        adv = atk.build_attack(name, model, settings)(x, y)
        assert (adv - x).abs().max().item() <= settings.eps + 1e-6
        assert adv.min().item() >= 0.0 and adv.max().item() <= 1.0
    acc = atk.evaluate_attacks(model, TensorData(x, y), ["FGSM", "pgd"], settings)
    assert set(acc) == {"NONE", "FGSM", "PGD"}
    assert model.training


def test_pgd_lowers_accuracy_of_a_trained_model() -> None:
    """A real attack: PGD with a large budget defeats a model fitted to a toy problem."""
    torch.manual_seed(0)
    model = build_model("cnn", 1, "RES18")
    x = 0.4 + 0.1 * torch.rand(64, 1, 28, 28)
    y = torch.randint(0, 2, (64,))
    x[y == 1, :, :14] += 0.2  # class 1: brighter upper half, less than eps away
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(40):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    data = TensorData(x, y)
    clean = atk.accuracy(model, data)
    attacked = atk.adversarial_accuracy(
        model, data, "PGD", atk.AttackSettings(eps=0.25, alpha=0.05, steps=10)
    )
    assert clean > 90.0
    assert attacked < clean - 30.0


@functools.lru_cache(maxsize=1)
def _fitted_brightness_problem() -> tuple[torch.nn.Module, TensorData]:
    torch.manual_seed(0)
    model = build_model("cnn", 1, "RES18", mean=(0.5,), std=(0.1,), cnn_width=8)
    y = torch.arange(64) % 2
    x = 0.1 + 0.2 * y.view(-1, 1, 1, 1).float() + 0.1 * torch.rand(64, 1, 28, 28)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(30):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model, TensorData(x, y)


def _brightness_problem() -> tuple[torch.nn.Module, TensorData]:
    """A CNN fitted to "dark (0.1-0.2) vs less dark (0.3-0.4) image", normalized inside the
    model with mean 0.5 and std 0.1: every normalized value is negative (-4 to -1).
    Trained once per session; each caller gets its own copy of the model."""
    model, data = _fitted_brightness_problem()
    return copy.deepcopy(model), data


def test_normalization_outside_is_the_same_function() -> None:
    """The bare model on normalized images computes the model on raw images."""
    model, data = _brightness_problem()
    model.eval()
    bare, normed, outside = atk.normalization_outside(model, data)
    assert torch.allclose(bare(normed.x), model(data.x), atol=1e-5)
    assert torch.allclose(normed.x, (data.x - 0.5) / 0.1)
    assert outside == pytest.approx(1.0)  # every normalized value is below 0
    assert isinstance(model.normalize, torch.nn.Module)  # the original is untouched
    with pytest.raises(TypeError, match="normalize submodule"):
        atk.normalization_outside(torch.nn.Linear(2, 2), data)


def test_clamp_of_normalized_images_destroys_accuracy_at_tiny_eps() -> None:
    """torchattacks clamps to [0, 1]: with the normalization outside the model the clamp alone
    maps both classes to 0 and FGSM at eps = 1/255 drops to chance, while the same attack on
    the same model with the normalization inside changes nothing."""
    model, data = _brightness_problem()
    cfg = RunConfig(attacks=("FGSM",), eps=(1 / 255,), eps_attacks=())
    inside = final_evaluation(model, data, cfg, seed=0)
    outside = final_evaluation(
        model, data, RunConfig(**{**vars(cfg), "normalization": "outside"}), 0
    )
    assert inside["final"]["NONE"] == 100.0 and inside["final"]["FGSM"] == 100.0
    assert outside["final"]["NONE"] == 100.0  # no attack: no clamp
    assert outside["final"]["CLAMP"] == 50.0 and outside["final"]["FGSM"] == 50.0
    assert outside["clamped_fraction"] == pytest.approx(1.0)
    assert "CLAMP" not in inside["final"]
    with pytest.raises(ValueError, match="unknown normalization 'nowhere'"):
        final_evaluation(model, data, RunConfig(normalization="nowhere"), 0)


def test_bf16_autocast_training_step_and_evaluation() -> None:
    """Under bf16 autocast the losses stay float32 and the step trains; the bf16 evaluation
    scores the fitted toy problem like float32; a bad precision names itself."""
    from benchmarks.ibkit.methods import get_method
    from benchmarks.ibkit.train import _train_step, make_optimizer

    model, data = _brightness_problem()
    cfg = RunConfig(precision="bf16", attacks=("FGSM",), eps=(1 / 255,), eps_attacks=())
    spec = get_method("VIB")
    torch.manual_seed(0)
    vib = build_model("cnn", 1, "VIB", mean=(0.5,), std=(0.1,), cnn_width=8)
    opt = make_optimizer(spec, vib, 1e-3)
    first = _train_step(spec, vib, opt, data.x, data.y, cfg)
    for _ in range(10):
        last = _train_step(spec, vib, opt, data.x, data.y, cfg)
    assert first["ce"].dtype == torch.float32 and first["info"].dtype == torch.float32
    assert last["ce"] < first["ce"]
    assert cfg.evaluation_precision == "bf16"
    assert final_evaluation(model, data, cfg, 0)["final"] == {"NONE": 100.0, "FGSM": 100.0}
    assert RunConfig(precision="bf16", eval_precision="fp32").evaluation_precision == "fp32"
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        atk.with_precision(model, "fp8")


# ----------------------------------------------------------------------------- schedules


def _lrs(opt: torch.optim.Optimizer, sched: object, steps: int) -> list[float]:
    """The learning rates of ``steps`` optimizer steps (without gradients nothing moves)."""
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()  # type: ignore[attr-defined]
    return out


def test_onecycle_drives_the_wrapped_adam() -> None:
    """The scheduler on an MOWrapper sets the rate its inner Adam steps with: the same
    sequence as torch's OneCycleLR on a plain Adam, and Adam's first update has that size."""
    import mograd

    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    plain_opt = torch.optim.Adam(torch.nn.Linear(3, 2).parameters(), lr=0.1)
    plain = torch.optim.lr_scheduler.OneCycleLR(
        plain_opt, max_lr=0.1, total_steps=10, cycle_momentum=False
    )
    expected = _lrs(plain_opt, plain, 10)
    assert max(expected) == pytest.approx(0.1) and expected[0] == pytest.approx(0.1 / 25)
    wrapped = mograd.MOWrapper(torch.optim.Adam(net.parameters(), lr=0.1))
    sched = make_scheduler(wrapped, "onecycle", 0.1, 10)
    assert sched is not None
    before = net.weight.detach().clone()
    out = net(torch.randn(8, 3))
    wrapped.zero_grad()
    wrapped.step([out[:, 0].square().mean(), out[:, 1].abs().mean()])
    sched.step()
    # Adam's first step moves every coordinate that has a gradient by the rate (up to eps)
    moved = (net.weight.detach() - before).abs().max().item()
    assert moved == pytest.approx(expected[0], rel=1e-3)
    assert wrapped.optimizer.param_groups[0]["betas"] == (0.9, 0.999)  # betas left alone
    rates = [expected[0]]
    for _ in range(9):
        rates.append(wrapped.optimizer.param_groups[0]["lr"])
        sched.step()
    assert rates == pytest.approx(expected)


def test_cosine_and_constant_schedules_and_bad_values() -> None:
    """Cosine anneals from lr to 0; constant is no scheduler; bad values name themselves."""
    opt = torch.optim.Adam(torch.nn.Linear(2, 1).parameters(), lr=0.5)
    lrs = _lrs(opt, make_scheduler(opt, "cosine", 0.5, 4), 5)
    assert lrs[0] == 0.5 and lrs[2] == pytest.approx(0.25) and lrs[4] == pytest.approx(0.0)
    assert make_scheduler(opt, "constant", 0.5, 4) is None
    with pytest.raises(ValueError, match="unknown schedule 'linear'"):
        make_scheduler(opt, "linear", 0.5, 4)
    with pytest.raises(ValueError, match="total_steps must be positive, got 0"):
        make_scheduler(opt, "onecycle", 0.5, 0)


def test_fingerprint_keeps_old_runs_valid_and_splits_training_settings() -> None:
    """New fields are absent from the fingerprint at their defaults (committed runs stay
    reusable); the training fingerprint ignores what only changes the evaluation."""
    base = RunConfig()
    assert not {"schedule", "normalization", "precision", "eval_precision"} & set(
        base.fingerprint()
    )
    tuned = RunConfig(schedule="onecycle", normalization="outside", attacks=("FGSM",))
    assert tuned.fingerprint()["schedule"] == "onecycle"
    assert tuned.fingerprint()["normalization"] == "outside"
    assert tuned.training_fingerprint() == RunConfig(schedule="onecycle").training_fingerprint()
    assert base.training_fingerprint() != tuned.training_fingerprint()
    assert RunConfig(test_limit=5, eps=(0.1,)).training_fingerprint() == base.training_fingerprint()
    assert RunConfig(eval_precision="bf16").training_fingerprint() == base.training_fingerprint()
    assert RunConfig(precision="bf16").training_fingerprint()["precision"] == "bf16"


# ----------------------------------------------------------------------------- data

needs_fmnist = pytest.mark.skipif(
    not (DEBIAN_FASHION_MNIST / "t10k-images-idx3-ubyte.gz").is_file(),
    reason="Debian package dataset-fashion-mnist not installed",
)


@needs_fmnist
def test_fashion_mnist_through_torchvision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Debian idx files load through torchvision's FashionMNIST class, byte-exact."""
    monkeypatch.setenv("MOGRAD_DATA", str(tmp_path))
    train, test = load_dataset("fashion_mnist", download=False)
    assert (tmp_path / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte").is_file()
    assert train.x.shape == (60000, 1, 28, 28) and test.x.shape == (10000, 1, 28, 28)
    assert float(train.x.min()) == 0.0 and float(train.x.max()) == 1.0
    assert sorted(torch.bincount(test.y).tolist()) == [1000] * 10
    with gzip.open(DEBIAN_FASHION_MNIST / "t10k-images-idx3-ubyte.gz", "rb") as f:
        raw = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, 28, 28)
    assert np.array_equal((test.x[:3, 0] * 255).round().to(torch.uint8).numpy(), raw[:3])
    with gzip.open(DEBIAN_FASHION_MNIST / "t10k-labels-idx1-ubyte.gz", "rb") as f:
        labels = np.frombuffer(f.read(), dtype=np.uint8, offset=8)
    assert np.array_equal(test.y.numpy(), labels)
    sub = test.subset(100, seed=1)
    assert len(sub) == 100 and torch.equal(sub.y, test.subset(100, seed=1).y)


def test_unknown_dataset() -> None:
    """A clear error for an unknown dataset name."""
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("mnist-3d")


# ----------------------------------------------------------------------------- report


def test_table_marks_best_second_and_ranks() -> None:
    """Bold best, underlined second, average ranks with ties."""
    runs = [
        {"method": "VIB", "seed": 0, "final": {"NONE": 80.0, "FGSM": 50.0}},
        {"method": "VIB", "seed": 1, "final": {"NONE": 82.0, "FGSM": 52.0}},
        {"method": "NIB", "seed": 0, "final": {"NONE": 85.0, "FGSM": 40.0}},
        {"method": "MIB", "seed": 0, "final": {"NONE": 70.0, "FGSM": 60.0}},
    ]
    summary = summarize(runs)
    assert summary["VIB"]["NONE"]["mean"] == pytest.approx(81.0)
    assert summary["VIB"]["NONE"]["std"] == pytest.approx(math.sqrt(2.0))
    text = table_markdown(summary, ["VIB", "NIB", "MIB"], rows=("NONE", "FGSM"))
    lines = text.strip().splitlines()
    assert lines[0] == "| Attack | VIB | NIB | MIB |"
    assert "**85.00 ± 0.00**" in lines[2] and "<u>81.00 ± 1.41</u>" in lines[2]
    assert "**60.00 ± 0.00**" in lines[3] and "<u>51.00 ± 1.41</u>" in lines[3]
    # ranks: VIB 2, 2 -> 2.0; NIB 1, 3 -> 2.0; MIB 3, 1 -> 2.0
    assert lines[-1] == "| Rank Avg. | **2.00** | **2.00** | **2.00** |"
    assert row_ranks({"a": 1.0, "b": 1.0, "c": 0.5}) == {"a": 1.5, "b": 1.5, "c": 3.0}

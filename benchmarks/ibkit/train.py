"""Training and evaluation of one (method, seed): :func:`run`.

Per epoch it records the training losses (the information-plane point), clean train
and test accuracy on fixed subsets (generalization gap), a cheap adversarial check (FGSM and PGD
on a small test subset) and, for the multi-objective methods, the per-epoch means of the
optimizer's diagnostics (epoch means, and per-step medians of ``w*_info``, ``c_info / c_pred``
and ``|g_info| / |g_pred|``), and the test-set information term (KL summed over the K
dimensions, or the KDE estimate for NIB). After the last epoch it evaluates clean accuracy and
the configured attacks on the test subset, once per attack budget.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from . import attacks as atk
from .data import NORMALIZATION, NUM_CLASSES, SHAPES, TensorData, batches, load_dataset
from .losses import (
    KL_REDUCTIONS,
    gaussian_kl,
    info_plane_point,
    information_term,
    kde_mutual_information,
    lagrangian,
    prediction_loss,
)
from .methods import MethodSpec, get_method
from .models import BottleneckStats, IBModel, build_model


@dataclass
class RunConfig:
    """Everything that determines a run besides (method, seed).

    Attributes:
        dataset: ``"fashion_mnist"`` or ``"cifar10"``.
        backbone: ``"cnn"`` or ``"resnet18"``.
        epochs: Training epochs.
        batch_size: Mini-batch size.
        lr: Adam learning rate (the peak rate under ``schedule="onecycle"``, the initial one
            under ``"cosine"``).
        schedule: Learning-rate schedule, stepped once per mini-batch and applied the same way
            to every method (for the multi-objective ones the scheduler drives the
            ``MOWrapper``, which shares the wrapped Adam's ``param_groups``): ``"constant"``
            (default, the paper's), ``"onecycle"`` (:class:`torch.optim.lr_scheduler.OneCycleLR`,
            warm-up over the first 30% of the steps from ``lr / 25``, then cosine annealing;
            Adam's betas are left alone) or ``"cosine"`` (cosine annealing from ``lr`` to 0).
        beta: Lagrange multiplier of the scalar IB methods.
        train_limit: Train on a fixed random subset of this size (None: all).
        test_limit: Evaluate and attack a fixed random test subset of this size (None: all).
        curve_limit: Test (and train) examples for the per-epoch curves.
        curve_attacks: Attacks evaluated every epoch on ``curve_limit`` test examples.
        attacks: Attacks evaluated after training at the first budget.
        eps: Attack budgets (L-infinity radii); empty means the paper's budget of the dataset
            only. The paper's budget keeps its alpha and steps, every other one gets
            ``alpha = eps / 4`` and 10 steps (:func:`ibkit.attacks.budget`).
        eps_attacks: Attacks evaluated at the budgets after the first.
        kl_reduction: ``"sum"`` (default, the paper's form) or ``"mean"`` of the KL over the K
            dimensions in the training loss (:func:`ibkit.losses.gaussian_kl`). Reported
            KL values (``test_kl``, the information plane) are always summed.
        gram: ``"all"``: the min-norm problem uses the gradients on every parameter;
            ``"encoder"``: only on the encoder's (backbone and encoder MLP, not the decoder),
            as the paper's eq. 7 differentiates with respect to the encoder.
        bottleneck: K.
        hidden: Encoder MLP width.
        cnn_width: Channels of the small CNN's first block.
        device: ``"cpu"`` or ``"cuda"``.
        data_dir: ``--data-dir`` (None: Debian package / cache).
        verify_md5: CIFAR-10 checksum verification (False only for hand-made test data).
        eval_batch_size: Batch size of evaluation and attacks.
        precision: ``"fp32"`` (default) or ``"bf16"``: training forward passes under bfloat16
            autocast (weights, optimizer state and losses stay float32; about 2.3 times
            faster ResNet-18 steps on a CPU with AMX).
        eval_precision: Precision of evaluation and attacks; None: the same as ``precision``.
            An evaluation setting: saved weights can be re-attacked in another precision.
        normalization: Where the mean/std normalization happens when the trained model is
            scored and attacked: ``"inside"`` (default: the attack sees images in [0, 1] and
            the model normalizes them) or ``"outside"`` (the attack is handed normalized
            images and a model without its normalization layer, so torchattacks' clamp of the
            adversarial image to [0, 1] clips the normalized values). Training is the same
            either way.
    """

    dataset: str = "fashion_mnist"
    backbone: str = "cnn"
    epochs: int = 1
    batch_size: int = 128
    lr: float = 1e-3
    schedule: str = "constant"
    beta: float = 1e-4
    train_limit: int | None = None
    test_limit: int | None = None
    curve_limit: int = 200
    curve_attacks: tuple[str, ...] = ("FGSM", "PGD")
    attacks: tuple[str, ...] = atk.ATTACKS
    eps: tuple[float, ...] = ()
    eps_attacks: tuple[str, ...] = ("FGSM", "PGD")
    kl_reduction: str = "sum"
    gram: str = "all"
    bottleneck: int = 128
    hidden: int = 256
    cnn_width: int = 16
    device: str = "cpu"
    data_dir: str | None = None
    verify_md5: bool = True
    eval_batch_size: int = 500
    normalization: str = "inside"
    precision: str = "fp32"
    eval_precision: str | None = None

    def fingerprint(self) -> dict[str, Any]:
        """The settings that change results (used to decide whether a stored run is reusable)."""
        d = asdict(self)
        for key in ("device", "data_dir", "eval_batch_size"):
            d.pop(key)
        d["curve_attacks"] = list(self.curve_attacks)
        d["attacks"] = list(self.attacks)
        d["eps"] = list(self.eps)
        d["eps_attacks"] = list(self.eps_attacks)
        for key in OPTIONAL_FIELDS:  # absent at their defaults: older stored runs stay valid
            if d[key] == getattr(RunConfig, key):
                d.pop(key)
        return d

    def training_fingerprint(self) -> dict[str, Any]:
        """The settings that determine the trained weights (not the evaluation's).

        Saved weights can be re-attacked (``--attack-only``) under any configuration with the
        same training fingerprint.
        """
        d = self.fingerprint()
        for key in EVALUATION_FIELDS:
            d.pop(key, None)
        return d

    @property
    def evaluation_precision(self) -> str:
        """The precision of evaluation and attacks (``eval_precision`` or ``precision``)."""
        return self.eval_precision or self.precision

    def budgets(self) -> list[atk.AttackSettings]:
        """The attack settings of every budget, the first one with all ``attacks``."""
        eps = self.eps or (atk.SETTINGS[self.dataset].eps,)
        return [atk.budget(self.dataset, e) for e in eps]


SCHEDULES = ("constant", "onecycle", "cosine")
NORMALIZATIONS = ("inside", "outside")
# Fields added after results were committed: left out of the fingerprint at their defaults.
OPTIONAL_FIELDS = ("schedule", "normalization", "precision", "eval_precision")
# Fields that change the evaluation but not the trained weights.
EVALUATION_FIELDS = (
    "test_limit",
    "curve_limit",
    "curve_attacks",
    "attacks",
    "eps",
    "eps_attacks",
    "normalization",
    "eval_precision",
)


@dataclass
class Data:
    """The tensors one run needs, already on the run's device.

    Attributes:
        train: Training examples.
        test: Test examples that are scored and attacked.
        curve_train: Training examples for the per-epoch train accuracy.
        curve_test: Test examples for the per-epoch curves.
    """

    train: TensorData
    test: TensorData
    curve_train: TensorData
    curve_test: TensorData
    extra: dict[str, Any] = field(default_factory=dict)


@lru_cache(maxsize=4)
def _load_cached(dataset: str, data_dir: str | None, verify_md5: bool) -> tuple[TensorData, ...]:
    return load_dataset(dataset, data_dir, verify_md5=verify_md5)


def prepare_data(config: RunConfig) -> Data:
    """Load (once per process) and subset the data for ``config``.

    Args:
        config: The run configuration.

    Returns:
        The run's tensors on ``config.device``.
    """
    train, test = _load_cached(config.dataset, config.data_dir, config.verify_md5)
    train = train.subset(config.train_limit, seed=0)
    test = test.subset(config.test_limit, seed=1)
    n_curve = min(config.curve_limit, len(test))
    curve_test = TensorData(test.x[:n_curve], test.y[:n_curve])
    curve_train = TensorData(train.x[:n_curve], train.y[:n_curve])
    dev = torch.device(config.device)
    return Data(train.to(dev), test.to(dev), curve_train.to(dev), curve_test.to(dev))


GRAMS = ("all", "encoder")


def encoder_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters of the encoder p(z|x): everything but the decoder q(y|z)."""
    return [p for name, p in model.named_parameters() if not name.startswith("decoder.")]


def make_optimizer(
    spec: MethodSpec, model: torch.nn.Module, lr: float, gram: str = "all"
) -> torch.optim.Optimizer:
    """Adam, wrapped in ``mograd.MOWrapper`` for the multi-objective methods.

    Args:
        spec: The method.
        model: The model whose parameters are optimized.
        lr: Learning rate.
        gram: ``"all"`` or ``"encoder"``: the parameters of the min-norm problem
            (``shared_params``).

    Returns:
        The optimizer.
    """
    if gram not in GRAMS:
        raise ValueError(f"unknown gram {gram!r}; expected one of {GRAMS}")
    adam = torch.optim.Adam(model.parameters(), lr=lr)
    if not spec.multi_objective:
        return adam
    import mograd

    shared = encoder_parameters(model) if gram == "encoder" else None
    return mograd.MOWrapper(adam, shared_params=shared, nonfinite="skip", **spec.mo_options)


def make_scheduler(
    optimizer: torch.optim.Optimizer, schedule: str, lr: float, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The per-step learning-rate scheduler of a run, or None for a constant rate.

    Args:
        optimizer: Adam or the ``MOWrapper`` around it (a ``torch.optim.Optimizer`` sharing
            Adam's ``param_groups``, so the scheduler sets the rate Adam uses).
        schedule: One of :data:`SCHEDULES`.
        lr: Peak (onecycle) or initial (cosine) learning rate.
        total_steps: Number of optimizer steps of the whole run.

    Returns:
        The scheduler (call ``step()`` after every optimizer step) or None.

    Raises:
        ValueError: Unknown schedule or non-positive ``total_steps``.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; expected one of {SCHEDULES}")
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    if schedule == "constant":
        return None
    if schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=lr, total_steps=total_steps, cycle_momentum=False
        )
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)


def _diagnostics(info: Any) -> dict[str, torch.Tensor]:
    """Flatten a ``mograd.StepInfo`` into named scalars (weights of both losses, cosine, ...)."""
    out: dict[str, torch.Tensor] = {}
    names = ("weights", "reweighted", "coefficients", "normalizers", "grad_norms", "losses")
    for name in names:
        value = getattr(info, name, None)
        if value is None:
            continue
        value = torch.as_tensor(value).detach().float().flatten()
        for i, v in enumerate(value):
            out[f"{name}_{i}"] = v
    cos = getattr(info, "cosines", None)
    if cos is not None:
        cos = torch.as_tensor(cos).detach().float()
        if cos.dim() == 2 and cos.shape[0] >= 2:
            out["cosine_01"] = cos[0, 1]
    for name in ("iterations", "skipped"):
        value = getattr(info, name, None)
        if value is not None:
            out[name] = torch.as_tensor(value).detach().float().reshape(())
    return out


# Per-step quantities whose median over each epoch is recorded (the epoch mean of w*_info is
# driven by a few steps: most steps clamp it to 0).
MEDIAN_KEYS = ("weights_1", "coef_ratio", "grad_norm_ratio")


def _per_step(record: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    if "weights_1" in record:
        out["weights_1"] = record["weights_1"]
    if "coefficients_0" in record and "coefficients_1" in record:
        out["coef_ratio"] = record["coefficients_1"] / record["coefficients_0"]
    if "grad_norms_0" in record and "grad_norms_1" in record:
        out["grad_norm_ratio"] = record["grad_norms_1"] / record["grad_norms_0"]
    return out


@torch.no_grad()
def evaluate_information(
    model: torch.nn.Module, data: TensorData, batch_size: int
) -> tuple[float | None, str | None]:
    """The information term on ``data`` with the model in eval mode.

    Gaussian encoder: KL(p(z|x) || N(0, I)) summed over the K dimensions, averaged over the
    examples (whatever the training reduction). Noisy layer: the KDE estimate I_hat on
    consecutive chunks of ``batch_size`` examples (it depends on the batch size, as in
    training), averaged. Deterministic: None.

    Returns:
        ``(value in nats, "kl" | "kde")`` or ``(None, None)``.
    """
    was_training = model.training
    model.eval()
    total, weight, kind = 0.0, 0, None
    for start in range(0, len(data), batch_size):
        x = data.x[start : start + batch_size]
        stats = model.forward_stats(x)  # type: ignore[operator]
        if stats.mu is not None and stats.sigma is not None:
            value, kind = gaussian_kl(stats.mu, stats.sigma, "sum"), "kl"
        elif stats.h is not None and stats.noise_var is not None:
            if len(x) < 2:
                continue
            value, kind = kde_mutual_information(stats.h, stats.noise_var), "kde"
        else:
            break
        total += float(value) * len(x)
        weight += len(x)
    model.train(was_training)
    if not weight:
        return None, None
    return total / weight, kind


def build_run_model(spec: MethodSpec, config: RunConfig) -> IBModel:
    """The model of one run, on ``config.device``, from the current torch seed.

    ResNet-18 models on a CPU are kept in ``channels_last`` memory format (about twice as fast
    convolution backward passes with oneDNN).
    """
    channels, size, _ = SHAPES[config.dataset]
    mean, std = NORMALIZATION[config.dataset]
    model = build_model(
        config.backbone,
        channels,
        kind=spec.kind,
        image_size=size,
        bottleneck=config.bottleneck,
        hidden=config.hidden,
        cnn_width=config.cnn_width,
        mean=mean,
        std=std,
    ).to(config.device)
    if config.backbone == "resnet18" and torch.device(config.device).type == "cpu":
        model = model.to(memory_format=torch.channels_last)
    return model


def _float_stats(stats: BottleneckStats) -> BottleneckStats:
    """The statistics as float32 (autocast leaves bfloat16 outputs)."""

    def f32(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.float()

    return BottleneckStats(
        logits=stats.logits.float(),
        mu=f32(stats.mu),
        sigma=f32(stats.sigma),
        h=f32(stats.h),
        noise_var=f32(stats.noise_var),
    )


def _train_step(
    spec: MethodSpec,
    model: IBModel,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    config: RunConfig,
) -> dict[str, torch.Tensor]:
    """One optimizer step; returns the step's scalars (losses, batch accuracy, diagnostics).

    With ``config.precision == "bf16"`` the forward pass runs under bfloat16 autocast and its
    outputs are cast back to float32 before the losses.
    """
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16"):
        stats = model.forward_stats(x)
    stats = _float_stats(stats)
    pred = prediction_loss(stats.logits, y)
    info = information_term(stats, config.kl_reduction)
    if spec.multi_objective:
        assert info is not None
        optimizer.zero_grad()
        record = _diagnostics(optimizer.step([pred, info]))  # type: ignore[call-overload]
    else:
        loss = lagrangian(pred, info, config.beta, spec.squared)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        record = {}
    record["ce"] = pred.detach()
    if info is not None:
        record["info"] = info.detach()
    if stats.noise_var is not None:
        record["noise_var"] = stats.noise_var.detach()
    record["train_batch_acc"] = (stats.logits.argmax(1) == y).float().mean().detach()
    return record


def _epoch_record(
    epoch: int,
    spec: MethodSpec,
    means: dict[str, float],
    steps: dict[str, list[torch.Tensor]],
    config: RunConfig,
) -> dict[str, Any]:
    """The training part of an epoch's record: losses, information plane, diagnostics."""
    kl_scale = float(config.bottleneck) if config.kl_reduction == "mean" else 1.0
    rec: dict[str, Any] = {"epoch": epoch, "train_ce": means["ce"]}
    if "info" in means:
        rec["train_info"] = means["info"]  # in the training reduction's units
        info_nats = means["info"] * (kl_scale if spec.kind == "gaussian" else 1.0)
        rec["i_xz"], rec["i_zy"] = info_plane_point(info_nats, means["ce"], NUM_CLASSES)
    else:
        rec["i_xz"], rec["i_zy"] = None, info_plane_point(0.0, means["ce"], NUM_CLASSES)[1]
    if "noise_var" in means:
        rec["noise_var"] = means["noise_var"]
    rec["train_batch_acc"] = 100.0 * means["train_batch_acc"]
    skip = ("ce", "info", "noise_var", "train_batch_acc", "lr")
    diag = {k: v for k, v in means.items() if k not in skip}
    if diag:
        rec["optimizer"] = diag
    if steps:
        rec["optimizer_median"] = {
            k: float(torch.nanquantile(torch.stack(v).float().cpu(), 0.5)) for k, v in steps.items()
        }
    if config.schedule != "constant":
        rec["lr_mean"] = means["lr"]
    return rec


def _evaluate_epoch(
    rec: dict[str, Any], model: IBModel, data: Data, config: RunConfig, seed: int
) -> str | None:
    """Add the epoch's evaluation (accuracies, test information, curve attacks) to ``rec``.

    Returns:
        The estimator of the test information term (``"kl"``, ``"kde"`` or None).
    """
    settings = config.budgets()[0]  # the per-epoch curves use the first budget
    scored = atk.with_precision(model, config.evaluation_precision)
    rec["train_acc"] = atk.accuracy(scored, data.curve_train, config.eval_batch_size)
    rec["test_acc"] = atk.accuracy(scored, data.test, config.eval_batch_size)
    rec["test_info"], estimator = evaluate_information(model, data.test, config.batch_size)
    rec["gen_gap"] = rec["train_acc"] - rec["test_acc"]
    rec["curve_adv"] = {
        name: atk.adversarial_accuracy(
            scored, data.curve_test, name, settings, batch_size=config.eval_batch_size, seed=seed
        )
        for name in config.curve_attacks
    }
    return estimator


def final_evaluation(
    model: IBModel, data: TensorData, config: RunConfig, seed: int
) -> dict[str, Any]:
    """Clean accuracy and every configured attack at every budget, on ``data``.

    With ``config.normalization == "outside"`` the attacks get normalized images and the model
    without its normalization layer (:func:`ibkit.attacks.normalization_outside`); the result
    then also holds ``"CLAMP"`` (accuracy on the normalized images clamped to [0, 1], no
    perturbation) in every budget's accuracies and ``clamped_fraction`` (the share of
    normalized pixel values outside [0, 1]).

    Returns:
        ``{"final", "budgets", "attacks_s"}`` (plus ``clamped_fraction`` outside).
    """
    if config.normalization not in NORMALIZATIONS:
        raise ValueError(
            f"unknown normalization {config.normalization!r}; expected one of {NORMALIZATIONS}"
        )
    t0 = time.perf_counter()
    target: torch.nn.Module = model
    extra: dict[str, Any] = {}
    clamp_only: dict[str, float] = {}
    if config.normalization == "outside":
        target, data, extra["clamped_fraction"] = atk.normalization_outside(model, data)
    target = atk.with_precision(target, config.evaluation_precision)
    if config.normalization == "outside":
        clamped = TensorData(data.x.clamp(0.0, 1.0), data.y)
        clamp_only["CLAMP"] = atk.accuracy(target, clamped, config.eval_batch_size)
    budgets = []
    for i, b in enumerate(config.budgets()):
        names = config.attacks if i == 0 else config.eps_attacks
        acc = atk.evaluate_attacks(
            target, data, names, b, batch_size=config.eval_batch_size, seed=seed
        )
        budgets.append(
            {"label": atk.eps_label(b.eps), **vars(b), "accuracy": {**acc, **clamp_only}}
        )
    return {
        "final": budgets[0]["accuracy"],
        "budgets": budgets,
        "attacks_s": time.perf_counter() - t0,
        **extra,
    }


def run(
    method: str,
    seed: int,
    config: RunConfig,
    *,
    data: Data | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    weights_path: str | Path | None = None,
) -> dict[str, Any]:
    """Train one method with one seed and evaluate it.

    Args:
        method: Method name or alias (see :mod:`ibkit.methods`).
        seed: Seed of initialisation, sampling and shuffling.
        config: Run configuration.
        data: Pre-loaded data (default: :func:`prepare_data`).
        progress: Show a tqdm progress bar.
        log: Optional callback for one-line messages.
        weights_path: Where to save the trained weights and the training record
            (:func:`ibkit.weights.save_weights`), so that the attacks can be rerun without
            training (``--attack-only``); None: not saved.

    Returns:
        A JSON-serialisable dict: ``method``, ``seed``, ``config``, ``final`` (``"NONE"`` and one
        accuracy per attack, %), ``epochs`` (per-epoch records), ``info_plane`` (per-epoch
        ``[I(X;Z) bound, I(Z;Y) bound]``, None for RES18), ``duration_s`` and its parts.
    """
    spec = get_method(method)
    if config.kl_reduction not in KL_REDUCTIONS:
        raise ValueError(f"unknown kl_reduction {config.kl_reduction!r}")
    if data is None:
        data = prepare_data(config)
    torch.manual_seed(seed)
    if torch.device(config.device).type == "cuda":
        torch.cuda.manual_seed_all(seed)
    model = build_run_model(spec, config)
    optimizer = make_optimizer(spec, model, config.lr, config.gram)
    n_batches = math.ceil(len(data.train) / config.batch_size)
    scheduler = make_scheduler(optimizer, config.schedule, config.lr, config.epochs * n_batches)
    shuffle_gen = torch.Generator().manual_seed(seed)
    bar = tqdm(
        total=config.epochs * n_batches,
        desc=f"{spec.name} seed {seed}",
        disable=not progress,
        leave=False,
        dynamic_ncols=True,
    )
    epochs: list[dict[str, Any]] = []
    estimator = None
    zero = torch.zeros((), device=config.device)
    t_start = time.perf_counter()
    t_curves = 0.0
    for epoch in range(1, config.epochs + 1):
        model.train()
        sums: dict[str, torch.Tensor] = {}
        steps: dict[str, list[torch.Tensor]] = {}
        count = 0
        for x, y in batches(data.train, config.batch_size, shuffle=True, generator=shuffle_gen):
            record = _train_step(spec, model, optimizer, x, y, config)
            record["lr"] = torch.tensor(optimizer.param_groups[0]["lr"])
            if scheduler is not None:
                scheduler.step()
            for k, v in _per_step(record).items():
                steps.setdefault(k, []).append(v)
            for k, v in record.items():
                sums[k] = sums.get(k, zero) + v.to(zero.device).float()
            count += 1
            bar.update(1)
        means = {k: float(v) / count for k, v in sums.items()}
        rec = _epoch_record(epoch, spec, means, steps, config)
        t0 = time.perf_counter()
        estimator = _evaluate_epoch(rec, model, data, config, seed)
        t_curves += time.perf_counter() - t0
        epochs.append(rec)
        bar.set_postfix(ce=f"{rec['train_ce']:.3f}", test=f"{rec['test_acc']:.1f}")
        if log is not None:
            log(
                f"{spec.name} seed {seed} epoch {epoch}: ce {rec['train_ce']:.4f} "
                f"test {rec['test_acc']:.2f}% {rec['curve_adv']}"
            )
    bar.close()
    t_train = time.perf_counter() - t_start - t_curves
    result: dict[str, Any] = {
        "method": spec.name,
        "seed": seed,
        "config": config.fingerprint(),
        "test_kl": epochs[-1]["test_info"] if epochs else None,
        "test_info_estimator": estimator if epochs else None,
        "epochs": epochs,
        "info_plane": [[e["i_xz"], e["i_zy"]] if e["i_xz"] is not None else None for e in epochs],
        "n_train": len(data.train),
        "train_s": t_train,
        "curves_s": t_curves,
    }
    if weights_path is not None:
        from .weights import save_weights

        save_weights(weights_path, model, result, config)
    result.update(final_evaluation(model, data.test, config, seed))
    result["n_test"] = len(data.test)
    result["duration_s"] = time.perf_counter() - t_start
    return result


def info_plane_points(
    method: str, epochs: int = 2, seed: int = 0, **config: Any
) -> list[tuple[float, float]]:
    """Train a VIB-family or NIB-family method briefly and return its information-plane path.

    A convenience for other code (e.g. Pareto-front studies): no attacks, no curves.

    Args:
        method: A method with a bottleneck (not RES18).
        epochs: Training epochs.
        seed: Seed.
        **config: Further :class:`RunConfig` fields (e.g. ``train_limit=2000``).

    Returns:
        Per-epoch ``(I(X;Z) upper bound, I(Z;Y) lower bound)`` in nats.
    """
    cfg = RunConfig(epochs=epochs, attacks=(), curve_attacks=(), **config)
    result = run(method, seed, cfg, progress=False)
    return [tuple(p) for p in result["info_plane"] if p is not None]  # type: ignore[misc]

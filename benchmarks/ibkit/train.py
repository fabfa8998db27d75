"""Training and evaluation of one (method, seed): :func:`run`.

Per epoch it records the training losses (the information-plane point of SPEC 2), clean train
and test accuracy on fixed subsets (generalization gap), a cheap adversarial check (FGSM and PGD
on a small test subset) and, for the multi-objective methods, the per-epoch means of the
optimizer's diagnostics. After the last epoch it evaluates clean accuracy and all configured
attacks on the test subset.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

import torch
from tqdm.auto import tqdm

from . import attacks as atk
from .data import NORMALIZATION, NUM_CLASSES, SHAPES, TensorData, batches, load_dataset
from .losses import info_plane_point, information_term, lagrangian, prediction_loss
from .methods import MethodSpec, get_method
from .models import build_model


@dataclass
class RunConfig:
    """Everything that determines a run besides (method, seed).

    Attributes:
        dataset: ``"fashion_mnist"`` or ``"cifar10"``.
        backbone: ``"cnn"`` or ``"resnet18"``.
        epochs: Training epochs.
        batch_size: Mini-batch size.
        lr: Adam learning rate.
        beta: Lagrange multiplier of the scalar IB methods.
        train_limit: Train on a fixed random subset of this size (None: all).
        test_limit: Evaluate and attack a fixed random test subset of this size (None: all).
        curve_limit: Test (and train) examples for the per-epoch curves.
        curve_attacks: Attacks evaluated every epoch on ``curve_limit`` test examples.
        attacks: Attacks evaluated after training.
        bottleneck: K.
        hidden: Encoder MLP width.
        cnn_width: Channels of the small CNN's first block.
        device: ``"cpu"`` or ``"cuda"``.
        data_dir: ``--data-dir`` (None: Debian package / cache).
        verify_md5: CIFAR-10 checksum verification (False only for hand-made test data).
        eval_batch_size: Batch size of evaluation and attacks.
    """

    dataset: str = "fashion_mnist"
    backbone: str = "cnn"
    epochs: int = 1
    batch_size: int = 128
    lr: float = 1e-3
    beta: float = 1e-4
    train_limit: int | None = None
    test_limit: int | None = None
    curve_limit: int = 200
    curve_attacks: tuple[str, ...] = ("FGSM", "PGD")
    attacks: tuple[str, ...] = atk.ATTACKS
    bottleneck: int = 128
    hidden: int = 256
    cnn_width: int = 16
    device: str = "cpu"
    data_dir: str | None = None
    verify_md5: bool = True
    eval_batch_size: int = 500

    def fingerprint(self) -> dict[str, Any]:
        """The settings that change results (used to decide whether a stored run is reusable)."""
        d = asdict(self)
        for key in ("device", "data_dir", "eval_batch_size"):
            d.pop(key)
        d["curve_attacks"] = list(self.curve_attacks)
        d["attacks"] = list(self.attacks)
        return d


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


def _make_optimizer(spec: MethodSpec, params: Any, lr: float) -> Any:
    adam = torch.optim.Adam(params, lr=lr)
    if not spec.multi_objective:
        return adam
    import mograd

    return mograd.MOWrapper(adam, nonfinite="skip", **spec.mo_options)


def _diagnostics(info: Any) -> dict[str, torch.Tensor]:
    """Flatten a ``mograd.StepInfo`` into named scalars (weights of both losses, cosine, ...)."""
    out: dict[str, torch.Tensor] = {}
    for name in ("weights", "reweighted", "coefficients", "grad_norms", "losses"):
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


def run(
    method: str,
    seed: int,
    config: RunConfig,
    *,
    data: Data | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train one method with one seed and evaluate it.

    Args:
        method: Method name or alias (see :mod:`ibkit.methods`).
        seed: Seed of initialisation, sampling and shuffling.
        config: Run configuration.
        data: Pre-loaded data (default: :func:`prepare_data`).
        progress: Show a tqdm progress bar.
        log: Optional callback for one-line messages.

    Returns:
        A JSON-serialisable dict: ``method``, ``seed``, ``config``, ``final`` (``"NONE"`` and one
        accuracy per attack, %), ``epochs`` (per-epoch records), ``info_plane`` (per-epoch
        ``[I(X;Z) bound, I(Z;Y) bound]``, None for RES18), ``duration_s`` and its parts.
    """
    spec = get_method(method)
    if data is None:
        data = prepare_data(config)
    settings = atk.SETTINGS[config.dataset]
    device = torch.device(config.device)
    torch.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed_all(seed)
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
    ).to(device)
    optimizer = _make_optimizer(spec, model.parameters(), config.lr)
    shuffle_gen = torch.Generator().manual_seed(seed)

    n_batches = math.ceil(len(data.train) / config.batch_size)
    bar = tqdm(
        total=config.epochs * n_batches,
        desc=f"{spec.name} seed {seed}",
        disable=not progress,
        leave=False,
        dynamic_ncols=True,
    )
    epochs: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    t_curves = 0.0
    for epoch in range(1, config.epochs + 1):
        model.train()
        sums: dict[str, torch.Tensor] = {}
        count = 0
        for x, y in batches(data.train, config.batch_size, shuffle=True, generator=shuffle_gen):
            stats = model.forward_stats(x)
            pred = prediction_loss(stats.logits, y)
            info = information_term(stats)
            if spec.multi_objective:
                assert info is not None
                optimizer.zero_grad()
                step_info = optimizer.step([pred, info])
                record = _diagnostics(step_info)
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
            for k, v in record.items():
                sums[k] = sums.get(k, torch.zeros((), device=device)) + v.to(device).float()
            count += 1
            bar.update(1)
        means = {k: float(v) / count for k, v in sums.items()}
        t0 = time.perf_counter()
        rec: dict[str, Any] = {"epoch": epoch, "train_ce": means["ce"]}
        if "info" in means:
            rec["train_info"] = means["info"]
            rec["i_xz"], rec["i_zy"] = info_plane_point(means["info"], means["ce"], NUM_CLASSES)
        else:
            rec["i_xz"], rec["i_zy"] = None, info_plane_point(0.0, means["ce"], NUM_CLASSES)[1]
        if "noise_var" in means:
            rec["noise_var"] = means["noise_var"]
        rec["train_batch_acc"] = 100.0 * means["train_batch_acc"]
        diag = {
            k: v
            for k, v in means.items()
            if k not in ("ce", "info", "noise_var", "train_batch_acc")
        }
        if diag:
            rec["optimizer"] = diag
        rec["train_acc"] = atk.accuracy(model, data.curve_train, config.eval_batch_size)
        rec["test_acc"] = atk.accuracy(model, data.test, config.eval_batch_size)
        rec["gen_gap"] = rec["train_acc"] - rec["test_acc"]
        rec["curve_adv"] = {
            name: atk.adversarial_accuracy(
                model,
                data.curve_test,
                name,
                settings,
                batch_size=config.eval_batch_size,
                seed=seed,
            )
            for name in config.curve_attacks
        }
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
    t0 = time.perf_counter()
    final = atk.evaluate_attacks(
        model, data.test, config.attacks, settings, batch_size=config.eval_batch_size, seed=seed
    )
    t_attacks = time.perf_counter() - t0
    return {
        "method": spec.name,
        "seed": seed,
        "config": config.fingerprint(),
        "final": final,
        "epochs": epochs,
        "info_plane": [[e["i_xz"], e["i_zy"]] if e["i_xz"] is not None else None for e in epochs],
        "n_train": len(data.train),
        "n_test": len(data.test),
        "duration_s": time.perf_counter() - t_start,
        "train_s": t_train,
        "curves_s": t_curves,
        "attacks_s": t_attacks,
    }


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

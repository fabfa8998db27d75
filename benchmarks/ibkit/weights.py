"""Trained weights on disk, and the attacks rerun from them without training.

:func:`run` (``weights_path=...``) saves, after training, the model's ``state_dict`` with the
run's training record and the settings that determined the weights
(:meth:`RunConfig.training_fingerprint`). :func:`attack_saved` loads such a file, checks that
those settings match the configuration at hand, and evaluates the model again under that
configuration's attacks, budgets, test subset and ``normalization``: one extra attack run on
the same models, e.g. to test how the place of the normalization changes the numbers.

A ResNet-18 model is about 45 MB; the default place of these files is under ``runs/``
(git-ignored), never in the committed results.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from .methods import get_method, slug
from .models import IBModel
from .train import Data, RunConfig, build_run_model, final_evaluation, prepare_data

__all__ = ["FORMAT", "attack_saved", "load_weights", "save_weights", "weights_file"]

FORMAT = 1  # version of the file layout


def weights_file(directory: str | Path, method: str, seed: int) -> Path:
    """Where the weights of one (method, seed) live in ``directory``.

    Example:
        >>> weights_file("w", "MIB w.o. s", 0).as_posix()
        'w/MIB_w.o._s__seed0.pt'
    """
    return Path(directory) / f"{slug(get_method(method).name)}__seed{seed}.pt"


def save_weights(
    path: str | Path, model: torch.nn.Module, record: dict[str, Any], config: RunConfig
) -> None:
    """Save a trained model with its training record (written atomically).

    Args:
        path: Target file.
        model: The trained model.
        record: The run's training record (``method``, ``seed``, ``epochs``, ...).
        config: The run's configuration.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    payload = {
        "format": FORMAT,
        "method": record["method"],
        "seed": int(record["seed"]),
        "training": config.training_fingerprint(),
        "record": record,
        "state_dict": state,
    }
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def load_weights(
    path: str | Path, method: str, seed: int, config: RunConfig
) -> tuple[IBModel, dict[str, Any]]:
    """Rebuild a saved model for ``config``.

    Args:
        path: A file written by :func:`save_weights`.
        method: The method it must hold.
        seed: The seed it must hold.
        config: The configuration it must have been trained with (up to the evaluation
            settings: attacks, budgets, test subset, normalization).

    Returns:
        ``(model in eval mode on config.device, training record)``.

    Raises:
        FileNotFoundError: No such file.
        ValueError: The file holds another method, seed, format or training configuration
            (the message names the differing settings).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no saved weights at {path} (train first, without --attack-only)")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    spec = get_method(method)
    if payload.get("format") != FORMAT:
        raise ValueError(f"{path}: unknown weights format {payload.get('format')!r}")
    if payload["method"] != spec.name or payload["seed"] != seed:
        raise ValueError(
            f"{path} holds {payload['method']} seed {payload['seed']}, not {spec.name} seed {seed}"
        )
    want, have = config.training_fingerprint(), payload["training"]
    differ = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
    if differ:
        details = ", ".join(f"{k} ({have.get(k)!r} saved, {want.get(k)!r} here)" for k in differ)
        raise ValueError(f"{path} was trained with other settings: {details}")
    torch.manual_seed(seed)
    model = build_run_model(spec, config)
    model.load_state_dict(payload["state_dict"])
    return model.eval(), payload["record"]


def attack_saved(
    method: str, seed: int, config: RunConfig, directory: str | Path, data: Data | None = None
) -> dict[str, Any]:
    """Evaluate saved weights again under ``config`` (no training).

    Args:
        method: Method name or alias.
        seed: Training seed (also seeds the attacks' randomness, as after training).
        config: Configuration: its training settings must match the saved ones; its
            evaluation settings (attacks, budgets, ``test_limit``, ``normalization``) apply.
        directory: Where the weights were saved (:func:`weights_file`).
        data: Pre-loaded data (default: :func:`prepare_data`).

    Returns:
        A run record like :func:`run`'s: the saved training record with this evaluation's
        ``final``, ``budgets``, ``config`` and timings, and ``attack_only: True``.
    """
    if data is None:
        data = prepare_data(config)
    t0 = time.perf_counter()
    model, record = load_weights(weights_file(directory, method, seed), method, seed, config)
    result = dict(record)
    result.update(final_evaluation(model, data.test, config, seed))
    result.update(
        config=config.fingerprint(),
        n_test=len(data.test),
        attack_only=True,
        duration_s=time.perf_counter() - t0,
        train_s=0.0,
        curves_s=0.0,
    )
    result["training_duration_s"] = record.get("train_s", 0.0) + record.get("curves_s", 0.0)
    return result

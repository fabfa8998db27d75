"""The seven torchattacks attacks of the paper and their settings (the paper's Section 5).

Inputs are in [0, 1] and the model normalises internally, so torchattacks' own
normalization support is not used. Attacks run with the model in eval mode, i.e. against the
deterministic function that is scored (z = mu, or h without noise); torchattacks itself puts
the model in eval mode while it attacks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torchattacks
from torch import nn

from .data import TensorData

ATTACKS = ("FGSM", "PGD", "NIFGSM", "EOTPGD", "MIFGSM", "UPGD", "Jitter")


@dataclass(frozen=True)
class AttackSettings:
    """Perturbation budget shared by all attacks.

    Attributes:
        eps: L-infinity radius.
        alpha: Step size of the iterative attacks.
        steps: Iterations of the iterative attacks.
    """

    eps: float
    alpha: float
    steps: int


SETTINGS: dict[str, AttackSettings] = {
    "fashion_mnist": AttackSettings(eps=1 / 255, alpha=2 / 255, steps=10),
    "cifar10": AttackSettings(eps=8 / 255, alpha=10 / 255, steps=10),
}
# Step rule of every budget other than the paper's: alpha = eps / 4, 10 steps, so that the
# iterative attacks take steps smaller than the ball (with the paper's FashionMNIST
# alpha = 2 eps every step lands on a corner of the ball and PGD is close to FGSM).
EXTRA_ALPHA_FRACTION = 0.25
EXTRA_STEPS = 10


def budget(dataset: str, eps: float) -> AttackSettings:
    """The attack settings of one budget.

    The paper's budget of ``dataset`` keeps the paper's alpha and steps; any other
    ``eps`` gets ``alpha = eps / 4`` and 10 steps.

    Args:
        dataset: ``"fashion_mnist"`` or ``"cifar10"``.
        eps: L-infinity radius (inputs in [0, 1]).

    Returns:
        The settings.
    """
    paper = SETTINGS[dataset]
    if abs(eps - paper.eps) <= 1e-9:
        return paper
    return AttackSettings(eps=eps, alpha=EXTRA_ALPHA_FRACTION * eps, steps=EXTRA_STEPS)


def parse_eps(text: str) -> float:
    """``"8/255"`` or ``"0.03"`` -> the radius as a float in (0, 1].

    Raises:
        ValueError: Not a number, or outside (0, 1].
    """
    try:
        if "/" in text:
            num, den = text.split("/", 1)
            value = float(num) / float(den)
        else:
            value = float(text)
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"expected a budget like 8/255 or 0.03, got {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise ValueError(f"attack budgets must lie in (0, 1], got {text}")
    return value


def eps_label(eps: float) -> str:
    """A budget as the tables print it, e.g. ``"8/255"``."""
    return f"{eps * 255:.3g}/255"


def canonical_attack(name: str) -> str:
    """Resolve an attack name case-insensitively.

    Raises:
        ValueError: Unknown attack.
    """
    for known in ATTACKS:
        if known.lower() == name.lower():
            return known
    raise ValueError(f"unknown attack {name!r}; expected one of {ATTACKS}")


def build_attack(name: str, model: nn.Module, settings: AttackSettings) -> torchattacks.Attack:
    """Construct one torchattacks attack with the given budget.

    FGSM uses only ``eps``. The others use ``eps``, ``alpha`` and ``steps`` with torchattacks'
    defaults for everything else (random start for PGD, EOTPGD and Jitter; ``eot_iter=2`` for
    EOTPGD; ``decay=1.0`` for NIFGSM, MIFGSM and UPGD).

    Args:
        name: One of :data:`ATTACKS` (case-insensitive).
        model: The model under attack (inputs in [0, 1]).
        settings: The budget.

    Returns:
        The attack object.
    """
    name = canonical_attack(name)
    eps, alpha, steps = settings.eps, settings.alpha, settings.steps
    if name == "FGSM":
        return torchattacks.FGSM(model, eps=eps)
    if name == "PGD":
        return torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps)
    if name == "NIFGSM":
        return torchattacks.NIFGSM(model, eps=eps, alpha=alpha, steps=steps)
    if name == "EOTPGD":
        return torchattacks.EOTPGD(model, eps=eps, alpha=alpha, steps=steps)
    if name == "MIFGSM":
        return torchattacks.MIFGSM(model, eps=eps, alpha=alpha, steps=steps)
    if name == "UPGD":
        return torchattacks.UPGD(model, eps=eps, alpha=alpha, steps=steps)
    return torchattacks.Jitter(model, eps=eps, alpha=alpha, steps=steps)


def _eval_accuracy(
    model: nn.Module,
    data: TensorData,
    batch_size: int,
    perturb: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> float:
    """Accuracy (%) of ``model`` in eval mode on ``data``, optionally perturbed per batch."""
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, len(data), batch_size):
        x, y = data.x[start : start + batch_size], data.y[start : start + batch_size]
        if perturb is not None:
            x = perturb(x, y)
        with torch.no_grad():
            correct += int((model(x).argmax(dim=1) == y).sum())
    model.train(was_training)
    return 100.0 * correct / max(len(data), 1)


def accuracy(model: nn.Module, data: TensorData, batch_size: int = 500) -> float:
    """Clean accuracy (%) of ``model`` in eval mode.

    Args:
        model: The model.
        data: Test examples (on the model's device).
        batch_size: Evaluation batch size.

    Returns:
        Accuracy in percent.
    """
    return _eval_accuracy(model, data, batch_size)


def adversarial_accuracy(
    model: nn.Module,
    data: TensorData,
    name: str,
    settings: AttackSettings,
    *,
    batch_size: int = 500,
    seed: int = 0,
) -> float:
    """Accuracy (%) on adversarial examples crafted by one attack against ``model``.

    Args:
        model: The model.
        data: Test examples (on the model's device).
        name: Attack name.
        settings: Budget.
        batch_size: Attack batch size.
        seed: Seed for the attacks' random starts (reproducible numbers).

    Returns:
        Accuracy in percent.
    """
    was_training = model.training
    model.eval()  # the attack is built against the eval-mode (deterministic) model
    attack = build_attack(name, model, settings)
    devices = [data.x.device] if data.x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        result = _eval_accuracy(model, data, batch_size, attack)
    model.train(was_training)
    return result


def evaluate_attacks(
    model: nn.Module,
    data: TensorData,
    names: tuple[str, ...] | list[str],
    settings: AttackSettings,
    *,
    batch_size: int = 500,
    seed: int = 0,
) -> dict[str, float]:
    """Clean accuracy ("NONE") and the accuracy under each attack, in percent.

    Args:
        model: The model.
        data: Test examples (on the model's device).
        names: Attacks to run.
        settings: Budget.
        batch_size: Batch size.
        seed: Seed of the attacks' randomness.

    Returns:
        ``{"NONE": acc, "FGSM": acc, ...}``.
    """
    out = {"NONE": accuracy(model, data, batch_size)}
    for name in names:
        out[canonical_attack(name)] = adversarial_accuracy(
            model, data, name, settings, batch_size=batch_size, seed=seed
        )
    return out

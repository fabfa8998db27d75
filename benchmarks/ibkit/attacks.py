"""The seven torchattacks attacks of the paper and their settings (the paper's Section 5).

Inputs are in [0, 1] and the model normalises internally, so torchattacks' own
normalization support is not used. Attacks run with the model in eval mode, i.e. against the
deterministic function that is scored (z = mu, or h without noise); torchattacks itself puts
the model in eval mode while it attacks.

:func:`normalization_outside` builds the other arrangement, for one diagnostic: the attack is
handed mean/std-normalized images and a model without its normalization layer. torchattacks
clamps every adversarial image to [0, 1], which then clips the normalized values (FashionMNIST's
background, 0 in pixel space, is -0.81 after normalization and becomes 0).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torchattacks
from torch import nn

from .data import TensorData

__all__ = [
    "ATTACKS",
    "PRECISIONS",
    "SETTINGS",
    "AttackSettings",
    "Autocast",
    "accuracy",
    "adversarial_accuracy",
    "budget",
    "build_attack",
    "canonical_attack",
    "eps_label",
    "evaluate_attacks",
    "normalization_outside",
    "parse_eps",
    "with_precision",
]

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
PRECISIONS = ("fp32", "bf16")


class Autocast(nn.Module):
    """A model evaluated under bfloat16 autocast, returning float32 logits.

    The weights stay float32; convolutions and matrix products run in bfloat16 (on a CPU with
    AMX or AVX-512 BF16, about 2.3 times faster for the ResNet-18). Gradients with respect to
    the input, which the attacks use, come back as float32.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(4, 3)
        >>> x = torch.ones(2, 4, requires_grad=True)
        >>> out = Autocast(net)(x)
        >>> out.dtype, torch.allclose(out, net(x), atol=0.05)
        (torch.float32, True)
    """

    def __init__(self, model: nn.Module) -> None:
        """Wrap ``model`` (its parameters, mode and device are the wrapper's)."""
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The wrapped model's output under bfloat16 autocast, as float32."""
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            out: torch.Tensor = self.model(x)
        return out.float()


def with_precision(model: nn.Module, precision: str) -> nn.Module:
    """``model`` itself (``"fp32"``) or wrapped in :class:`Autocast` (``"bf16"``).

    Raises:
        ValueError: Unknown precision.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {PRECISIONS}")
    return model if precision == "fp32" else Autocast(model)


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


def normalization_outside(
    model: nn.Module, data: TensorData
) -> tuple[nn.Module, TensorData, float]:
    """The model and data as they are when the normalization happens outside the model.

    A copy of ``model`` with its normalization layer replaced by the identity, and ``data``
    passed through that layer, so that ``bare(x_norm) == model(x)``: clean accuracy is
    unchanged, but an attack that clamps its output to [0, 1] now clips normalized values.

    Args:
        model: A model with a ``normalize`` submodule (:class:`ibkit.models.IBModel`).
        data: Images in [0, 1].

    Returns:
        ``(bare model, normalized data, share of normalized values outside [0, 1])``.

    Raises:
        TypeError: ``model`` has no ``normalize`` submodule.

    Example:
        >>> import torch
        >>> from benchmarks.ibkit.models import build_model
        >>> m = build_model("cnn", 1, kind="deterministic", mean=(0.5,), std=(0.25,)).eval()
        >>> x = torch.tensor([0.0, 1.0]).view(2, 1, 1, 1).expand(2, 1, 28, 28)
        >>> d = TensorData(x, torch.zeros(2, dtype=torch.long))
        >>> bare, normed, outside = normalization_outside(m, d)
        >>> normed.x[:, 0, 0, 0].tolist(), outside
        ([-2.0, 2.0], 1.0)
        >>> torch.allclose(bare(normed.x), m(d.x))
        True
    """
    norm = getattr(model, "normalize", None)
    if not isinstance(norm, nn.Module):
        raise TypeError(
            "normalization_outside needs a model with a normalize submodule, "
            f"got {type(model).__name__}"
        )
    with torch.no_grad():
        x = norm(data.x)
    bare = copy.deepcopy(model)
    bare.normalize = nn.Identity()
    outside = float(((x < 0.0) | (x > 1.0)).float().mean())
    return bare, TensorData(x, data.y), outside

"""Backbones and bottleneck heads.

A model is ``normalize -> backbone -> encoder MLP -> bottleneck -> linear decoder``:

* backbone: :class:`SmallCNN` (CPU runs) or torchvision's ResNet-18 (``weights=None``) with the
  first convolution replaced by a 3x3 stride-1 one for the input's channels and no max-pool;
* encoder MLP: three linear layers ``F -> H -> H -> D`` with ReLUs in between (the paper's
  "three-layer MLP", after Alemi et al.'s 1024-1024-2K encoder);
* bottleneck (``kind``):

  - ``"deterministic"`` (RES18): ``z = e(x)``, D = K;
  - ``"gaussian"`` (VIB family, MIB): D = 2K split into ``mu`` and ``rho``,
    ``sigma = softplus(rho - 5)``, ``z = mu + sigma * eps`` in training, ``z = mu`` in eval;
  - ``"noisy"`` (NIB family): ``h = e(x)``, D = K, ``T = h + eps``, ``eps ~ N(0, s^2 I)`` with
    ``s^2 = softplus(phi)`` a trained scalar initialised to 1; ``T = h`` in eval;

* decoder: ``Linear(K, 10)``.

``model(x)`` returns logits and respects ``model.training``: in eval mode it is the
deterministic function that is scored and attacked. ``model.forward_stats(x)`` additionally
returns the bottleneck statistics needed by the losses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18

BACKBONES = ("cnn", "resnet18")
KINDS = ("deterministic", "gaussian", "noisy")
RHO_SHIFT = 5.0  # sigma = softplus(rho - 5) (Alemi et al. 2017)


class Normalize(nn.Module):
    """Per-channel standardisation inside the model, so inputs stay in [0, 1]."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        """Store the statistics as buffers.

        Args:
            mean: Per-channel means.
            std: Per-channel standard deviations.
        """
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Standardise ``x``."""
        return (x - self.mean) / self.std


class SmallCNN(nn.Module):
    """Two conv blocks (conv 3x3, ReLU, max-pool 2) -- a backbone that trains in seconds on CPU."""

    def __init__(self, in_channels: int, image_size: int, width: int = 16) -> None:
        """Build the layers.

        Args:
            in_channels: Input channels (1 or 3).
            image_size: Input height = width (28 or 32).
            width: Channels of the first block (the second has twice as many).
        """
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.out_features = 2 * width * (image_size // 4) ** 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Flattened feature map."""
        return self.features(x)


def resnet18_backbone(in_channels: int) -> tuple[nn.Module, int]:
    """torchvision's ResNet-18 (random init) adapted to small images.

    The first convolution becomes 3x3 stride 1 with ``in_channels`` inputs, the max-pool is
    removed and the classification layer replaced by the identity.

    Args:
        in_channels: Input channels.

    Returns:
        ``(module, feature_size)`` with feature size 512.
    """
    net = resnet18(weights=None)
    net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()  # type: ignore[assignment]
    features = net.fc.in_features
    net.fc = nn.Identity()  # type: ignore[assignment]
    return net, features


@dataclass
class BottleneckStats:
    """What the losses need from one forward pass.

    Attributes:
        logits: Decoder output on the (sampled, in training) representation, (N, classes).
        mu: Gaussian encoder mean (gaussian kind), else None.
        sigma: Gaussian encoder standard deviation (gaussian kind), else None.
        h: Noise-free representation (noisy kind), else None.
        noise_var: ``s^2`` of the noisy layer, a 0-d tensor (noisy kind), else None.
    """

    logits: torch.Tensor
    mu: torch.Tensor | None = None
    sigma: torch.Tensor | None = None
    h: torch.Tensor | None = None
    noise_var: torch.Tensor | None = None


class IBModel(nn.Module):
    """Backbone + three-layer encoder MLP + bottleneck + linear decoder."""

    def __init__(
        self,
        backbone: nn.Module,
        feature_size: int,
        kind: str,
        *,
        bottleneck: int = 128,
        hidden: int = 256,
        num_classes: int = 10,
        mean: tuple[float, ...] = (0.5,),
        std: tuple[float, ...] = (0.5,),
    ) -> None:
        """Assemble the model.

        Args:
            backbone: Feature extractor mapping images to (N, feature_size).
            feature_size: Its output size.
            kind: ``"deterministic"``, ``"gaussian"`` or ``"noisy"``.
            bottleneck: K, the size of z.
            hidden: Width H of the encoder MLP.
            num_classes: Decoder outputs.
            mean: Normalization means (per channel).
            std: Normalization standard deviations.

        Raises:
            ValueError: Unknown ``kind`` or non-positive sizes.
        """
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown bottleneck kind {kind!r}; expected one of {KINDS}")
        if bottleneck <= 0 or hidden <= 0:
            raise ValueError("bottleneck and hidden sizes must be positive")
        self.kind = kind
        self.bottleneck = bottleneck
        self.normalize = Normalize(mean, std)
        self.backbone = backbone
        out = 2 * bottleneck if kind == "gaussian" else bottleneck
        self.encoder = nn.Sequential(
            nn.Linear(feature_size, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, out),
        )
        self.decoder = nn.Linear(bottleneck, num_classes)
        if kind == "noisy":
            # softplus(phi) = 1  <=>  phi = log(e - 1)
            self.phi = nn.Parameter(torch.tensor(math.log(math.e - 1.0)))

    def noise_var(self) -> torch.Tensor:
        """``s^2 = softplus(phi)`` of the noisy layer (noisy kind only)."""
        return F.softplus(self.phi)

    def forward_stats(self, x: torch.Tensor) -> BottleneckStats:
        """Forward pass returning logits and bottleneck statistics.

        In training mode the representation is sampled (one reparameterised sample per input);
        in eval mode it is the encoder mean (gaussian) or the noise-free ``h`` (noisy).

        Args:
            x: Images in [0, 1], (N, C, H, W).

        Returns:
            The statistics.
        """
        e = self.encoder(self.backbone(self.normalize(x)))
        if self.kind == "deterministic":
            return BottleneckStats(logits=self.decoder(e))
        if self.kind == "gaussian":
            mu, rho = e[:, : self.bottleneck], e[:, self.bottleneck :]
            sigma = F.softplus(rho - RHO_SHIFT)
            z = mu + sigma * torch.randn_like(mu) if self.training else mu
            return BottleneckStats(logits=self.decoder(z), mu=mu, sigma=sigma)
        s2 = self.noise_var()
        t = e + s2.sqrt() * torch.randn_like(e) if self.training else e
        return BottleneckStats(logits=self.decoder(t), h=e, noise_var=s2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (deterministic in eval mode)."""
        return self.forward_stats(x).logits


def build_model(
    backbone: str = "cnn",
    in_channels: int = 1,
    method: str | None = None,
    *,
    kind: str | None = None,
    image_size: int = 28,
    bottleneck: int = 128,
    hidden: int = 256,
    cnn_width: int = 16,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> IBModel:
    """Build an IB model for a method (or an explicit bottleneck kind).

    Args:
        backbone: ``"cnn"`` or ``"resnet18"``.
        in_channels: 1 (FashionMNIST) or 3 (CIFAR-10).
        method: A method name from :mod:`ibkit.methods`; its bottleneck kind is used.
        kind: Bottleneck kind, when ``method`` is None.
        image_size: Input height = width.
        bottleneck: K.
        hidden: Encoder MLP width.
        cnn_width: Channels of the small CNN's first block.
        mean: Normalization means; default 0.5 per channel.
        std: Normalization standard deviations; default 0.5 per channel.

    Returns:
        The model (random initialisation from the current torch seed).

    Raises:
        ValueError: Unknown backbone, method or kind.
    """
    if method is not None:
        from .methods import get_method

        kind = get_method(method).kind
    if kind is None:
        raise ValueError("give either method or kind")
    if backbone == "cnn":
        net: nn.Module = SmallCNN(in_channels, image_size, width=cnn_width)
        features = net.out_features  # type: ignore[assignment]
    elif backbone == "resnet18":
        net, features = resnet18_backbone(in_channels)
    else:
        raise ValueError(f"unknown backbone {backbone!r}; expected one of {BACKBONES}")
    return IBModel(
        net,
        int(features),
        kind,
        bottleneck=bottleneck,
        hidden=hidden,
        mean=mean if mean is not None else (0.5,) * in_channels,
        std=std if std is not None else (0.5,) * in_channels,
    )

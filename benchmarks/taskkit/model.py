"""The shared trunk with one head per task.

Trunk (28 x 28 inputs): conv 5x5 (16 channels) -> max-pool 2 -> ReLU -> conv 5x5 (32) ->
max-pool 2 -> ReLU -> linear 512 -> ``width`` (64) -> ReLU: the shared representation ``z``
(the ``features`` of representation mode). Heads on ``z``: linear -> 10 logits (class);
linear -> 256 -> ReLU -> linear -> 784 -> sigmoid (reconstruction); linear -> 1 (angle,
degrees); linear -> 1 (flip logit).
"""

from __future__ import annotations

import torch
from torch import nn

from .tasks import Outputs

__all__ = ["TaskNet"]


class TaskNet(nn.Module):
    """A convolutional trunk shared by the four task heads of :mod:`taskkit.tasks`.

    Args:
        width: Size of the shared representation ``z``.
    """

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Conv2d(1, 16, 5),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Conv2d(16, 32, 5),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(512, width),
            nn.ReLU(),
        )
        self.classify = nn.Linear(width, 10)
        self.decode = nn.Sequential(
            nn.Linear(width, 256), nn.ReLU(), nn.Linear(256, 784), nn.Sigmoid()
        )
        self.angle = nn.Linear(width, 1)
        self.flip = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Outputs]:
        """Returns the shared representation ``z`` and the four task outputs."""
        z = self.trunk(x)
        recon = self.decode(z).view(-1, 1, 28, 28)
        return z, (self.classify(z), recon, self.angle(z).squeeze(1), self.flip(z).squeeze(1))

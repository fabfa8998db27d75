"""The multi-task LeNet of the Multi-Fashion papers: a shared trunk and one head per task.

Trunk (for 28 x 28 inputs, the "MultiLeNet" of Sener & Koltun 2018 without dropout):
conv 5x5 (10 channels) -> max-pool 2 -> ReLU -> conv 5x5 (20) -> max-pool 2 -> ReLU ->
linear 320 -> 50 -> ReLU. Heads: one linear 50 -> 10 per task (the task layers of Lin et al.
2019). The 50-d trunk output is the shared representation ``z`` of representation mode.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MultiLeNet"]


class MultiLeNet(nn.Module):
    """LeNet trunk shared by ``n_tasks`` linear classification heads.

    Args:
        n_tasks: Number of tasks (heads).
        n_classes: Classes per task.
        width: Size of the shared representation.
    """

    def __init__(self, n_tasks: int = 2, n_classes: int = 10, width: int = 50) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Conv2d(1, 10, 5),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Conv2d(10, 20, 5),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(320, width),
            nn.ReLU(),
        )
        self.heads = nn.ModuleList(nn.Linear(width, n_classes) for _ in range(n_tasks))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Returns the shared representation ``z`` and the per-task logits."""
        z = self.trunk(x)
        return z, [head(z) for head in self.heads]

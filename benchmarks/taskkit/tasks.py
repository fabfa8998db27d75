"""The four tasks: kind, loss, metric, and which direction of the metric is better.

===========  ====================  ==========================  =============================
task         target                training loss               metric (Delta m uses it)
===========  ====================  ==========================  =============================
``class``    class label (10)      cross-entropy               accuracy (%), higher better
``recon``    the input's pixels    pixel MSE (values in 0-1)   PSNR (dB), higher better
``angle``    rotation (degrees)    MSE in degrees squared      mean absolute error (degrees),
                                                               lower better
``flip``     mirrored or not       binary cross-entropy        accuracy (%), higher better
===========  ====================  ==========================  =============================

The losses keep their natural units, so their scales differ by orders of magnitude: at
initialization the angle loss is about the variance of a uniform angle on [-45, 45],
``90**2 / 12 = 675`` deg^2, the pixel MSE about 0.1, the two cross-entropies ``ln 10`` and
``ln 2``. The tasks also pull the shared trunk in different directions: the class wants
features invariant to rotation and mirroring, the angle and the flip want features that
measure exactly those, and the reconstruction wants every pixel.

PSNR is ``10 log10(1 / MSE)`` of the mean pixel MSE over the test set (pixel range 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .data import TaskData

__all__ = ["TASKS", "Outputs", "Task", "metrics", "task_losses"]

#: The model's outputs: logits (N, 10), reconstruction (N, 1, 28, 28) in [0, 1],
#: angle (N,) in degrees, flip logit (N,).
Outputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Task:
    """One task of the benchmark.

    Attributes:
        name: Short name (table column).
        kind: What kind of task it is.
        loss: The training loss, in words.
        metric: The metric of Delta m, with its unit.
        higher_is_better: Direction of the metric (``l_t = 1`` in Delta m when True).
    """

    name: str
    kind: str
    loss: str
    metric: str
    higher_is_better: bool


TASKS: tuple[Task, ...] = (
    Task("class", "10-class classification", "cross-entropy", "accuracy (%)", True),
    Task("recon", "image reconstruction", "pixel MSE", "PSNR (dB)", True),
    Task("angle", "rotation-angle regression", "MSE (deg^2)", "MAE (deg)", False),
    Task("flip", "binary attribute (mirrored?)", "binary cross-entropy", "accuracy (%)", True),
)


def task_losses(out: Outputs, batch: TaskData) -> list[torch.Tensor]:
    """The four training losses of a batch, in :data:`TASKS` order."""
    logits, recon, angle, flip = out
    return [
        F.cross_entropy(logits, batch.label),
        F.mse_loss(recon, batch.x),
        F.mse_loss(angle, batch.angle),
        F.binary_cross_entropy_with_logits(flip, batch.flip),
    ]


@torch.no_grad()
def metrics(
    model: torch.nn.Module, data: TaskData, batch: int = 2000
) -> dict[str, dict[str, float]]:
    """Every task's metrics on ``data`` (the model is put back in training mode).

    Returns:
        ``{task: {"metric": ..., "loss": ..., ...}}``: the Delta-m metric of each task, its
        mean loss, and for ``recon`` the pixel MSE, for ``angle`` the RMSE.
    """
    model.eval()
    n = max(1, len(data))
    sums = torch.zeros(8, dtype=torch.float64)
    for i in range(0, len(data), batch):
        b = data.take(slice(i, i + batch))
        _, out = model(b.x)
        logits, _, angle, flip = out
        ls = task_losses(out, b)
        m = b.label.shape[0]
        sums += torch.stack(
            [
                (logits.argmax(1) == b.label).sum().double(),
                ls[0].double() * m,
                ls[1].double() * m,
                (angle - b.angle).abs().sum().double(),
                ls[2].double() * m,
                ((flip > 0).float() == b.flip).sum().double(),
                ls[3].double() * m,
                torch.zeros((), dtype=torch.float64),
            ]
        ).cpu()
    model.train()
    s = (sums / n).tolist()
    mse = max(s[2], 1e-12)
    return {
        "class": {"metric": 100.0 * s[0], "loss": s[1]},
        "recon": {"metric": 10.0 * math.log10(1.0 / mse), "loss": s[2], "mse": s[2]},
        "angle": {"metric": s[3], "loss": s[4], "rmse": math.sqrt(max(s[4], 0.0))},
        "flip": {"metric": 100.0 * s[5], "loss": s[6]},
    }

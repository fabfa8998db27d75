"""The task data, built deterministically from the real FashionMNIST idx files.

Recipe (``RECIPE``, version 1), for each split independently:

1. Source: the original FashionMNIST images and labels, read by
   :func:`benchmarks.mtlkit.data.load_fashion_uint8` (Debian's ``dataset-fashion-mnist``
   package through torchvision's ``FashionMNIST`` class). Training examples come from the
   60 000 training images only, test examples from the 10 000 test images only.
2. Draws: ``rng = numpy.random.default_rng([seed, split])`` (``split`` 0 for train, 1 for
   test, ``seed`` 0), then ``flip = rng.random(n) < 0.5`` and
   ``angle = rng.uniform(-max_angle, max_angle, n)`` degrees (``max_angle`` 45), one per
   source image, so that a subset is a faithful sample of the whole split.
3. Transform: the image (values in [0, 1]) is mirrored left-right where ``flip``, *then*
   rotated counter-clockwise by ``angle`` about its centre (bilinear, zeros outside, the
   convention of ``torchvision.transforms.functional.rotate``). Flipping first means the angle
   is measured from the upright (possibly mirrored) item, so it is well defined even for
   left-right symmetric items, whose flip is then undetectable.
4. Subsets: a fixed random subset of the source images (``torch.randperm`` of the split with
   generator seed 0 for train, 1 for test), identical for every method and training seed.

The transformed image is both the input and the reconstruction target; the targets of the
other tasks are the class label, the angle and the flip bit (see :mod:`taskkit.tasks`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.mtlkit.data import load_fashion_uint8

__all__ = ["RECIPE", "TaskData", "draws", "load_tasks", "make_split", "rotate"]

RECIPE: dict[str, Any] = {
    "version": 1,
    "max_angle": 45.0,
    "flip_p": 0.5,
    "order": "mirror left-right, then rotate counter-clockwise about the centre",
    "rotate": "affine_grid + grid_sample, bilinear, zeros padding, align_corners=False",
    "draws": "default_rng([seed, split]): random(n) < 0.5, then uniform(-45, 45, n)",
    "subset": "randperm(n, generator seed 0 (train) / 1 (test))[:limit]",
}
SPLITS = {"train": 0, "test": 1}
_CHUNK = 4096


@dataclass
class TaskData:
    """Inputs and targets of one split, held in memory.

    Attributes:
        x: Inputs ``(N, 1, 28, 28)`` float32 in [0, 1] (also the reconstruction target).
        label: Class labels ``(N,)`` int64 in 0..9.
        angle: Rotation angles ``(N,)`` float32, degrees, counter-clockwise positive.
        flip: Flip bits ``(N,)`` float32 (1.0 where the item was mirrored).
    """

    x: torch.Tensor
    label: torch.Tensor
    angle: torch.Tensor
    flip: torch.Tensor

    def __len__(self) -> int:
        return int(self.label.shape[0])

    def to(self, device: str | torch.device) -> TaskData:
        """The same data on ``device``."""
        return TaskData(*(t.to(device) for t in (self.x, self.label, self.angle, self.flip)))

    def take(self, idx: torch.Tensor | slice) -> TaskData:
        """The rows ``idx``."""
        return TaskData(self.x[idx], self.label[idx], self.angle[idx], self.flip[idx])


def rotate(images: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate each image counter-clockwise by its angle about the image centre.

    The convention of ``torchvision.transforms.functional.rotate`` (bilinear, zeros outside),
    vectorized over a batch with one angle per image.

    Args:
        images: ``(N, C, H, W)`` float images.
        degrees: ``(N,)`` angles in degrees.

    Returns:
        ``(N, C, H, W)`` rotated images.

    Example:
        >>> import torch
        >>> img = torch.zeros(1, 1, 5, 5); img[0, 0, 2, 4] = 1.0   # right of the centre
        >>> out = rotate(img, torch.tensor([90.0]))
        >>> divmod(int(out.flatten().argmax()), 5)                   # now above it
        (0, 2)
    """
    t = degrees.to(torch.float64) * (math.pi / 180.0)
    c, s = torch.cos(t), torch.sin(t)
    zero = torch.zeros_like(t)
    # Output pixel (x, y), y pointing down, samples the input at R(theta) (x, y): a visual
    # counter-clockwise rotation of the content by theta.
    theta = torch.stack([torch.stack([c, -s, zero], 1), torch.stack([s, c, zero], 1)], 1)
    theta = theta.to(images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def draws(n: int, split: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The flip bits and angles (degrees) of the ``n`` source images of a split."""
    rng = np.random.default_rng([seed, SPLITS[split]])
    flip = rng.random(n) < RECIPE["flip_p"]
    angle = rng.uniform(-RECIPE["max_angle"], RECIPE["max_angle"], size=n)
    return flip, angle


def make_split(
    images: torch.Tensor,
    labels: torch.Tensor,
    split: str,
    limit: int | None = None,
    seed: int = 0,
) -> TaskData:
    """Build the task data of one split from the ``uint8`` images ``(n, 28, 28)``.

    Args:
        images: The split's source images.
        labels: Their class labels.
        split: ``"train"`` or ``"test"``.
        limit: Keep a fixed random subset of this many source images (None: all).
        seed: Construction seed of the draws (0 for the benchmark).
    """
    n = int(images.shape[0])
    flip, angle = draws(n, split, seed)
    if limit is not None and limit < n:
        gen = torch.Generator().manual_seed(SPLITS[split])
        idx = torch.randperm(n, generator=gen)[:limit]
    else:
        idx = torch.arange(n)
    flips = torch.from_numpy(flip)[idx]
    angles = torch.from_numpy(angle)[idx].to(torch.float32)
    out = []
    for i in range(0, len(idx), _CHUNK):
        x = images[idx[i : i + _CHUNK]].to(torch.float32).div_(255.0).unsqueeze(1)
        f = flips[i : i + _CHUNK]
        x = torch.where(f[:, None, None, None], x.flip(-1), x)
        out.append(rotate(x, angles[i : i + _CHUNK]).clamp_(0.0, 1.0))
    x = torch.cat(out) if out else torch.zeros(0, 1, 28, 28)
    return TaskData(x.contiguous(), labels[idx].clone(), angles, flips.to(torch.float32))


def load_tasks(
    train_limit: int | None,
    test_limit: int | None,
    data_dir: str | Path | None = None,
) -> tuple[TaskData, TaskData]:
    """The training and test task data (fixed subsets of ``train_limit``/``test_limit``)."""
    src = load_fashion_uint8(data_dir)
    train = make_split(*src["train"], "train", train_limit)
    test = make_split(*src["test"], "test", test_limit)
    return train, test

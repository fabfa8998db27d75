"""Multi-Fashion, built deterministically from the real FashionMNIST idx files.

The construction of the multi-task papers (Sener & Koltun, NeurIPS 2018, for MultiMNIST;
Lin et al., "Pareto Multi-Task Learning", NeurIPS 2019, and Mahapatra & Rajan, "Multi-Task
Learning with User Preferences: Gradient Descent with Controlled Ascent in Pareto
Optimization" (EPO), ICML 2020, for Multi-Fashion): two FashionMNIST items overlaid on one
canvas, task 1 classifies the top-left item, task 2 the bottom-right one. The exact recipe
used here (``RECIPE``, version 1; see ``docs/multi_fashion.md``):

1. Source: the original FashionMNIST idx files (Debian's ``dataset-fashion-mnist`` package
   under ``/usr/share/datasets/fashion-mnist/``, read by torchvision's ``FashionMNIST`` class
   through :func:`ibkit.data.prepare_fashion_mnist_root`; torchvision's download is the
   fallback). The training pairs use only training images, the test pairs only test images.
2. Pairs: each of the ``n`` images of a split is the top-left item of ``copies = 2`` pairs
   (120 000 training and 20 000 test pairs, the sizes of Lin et al.). For copy ``c`` the
   bottom-right partner of image ``i`` is ``(i + 1 + u_i) mod n`` with
   ``u = numpy.random.default_rng([seed, split, c]).integers(0, n - 1, size=n)``
   (``split`` = 0 for train, 1 for test; ``seed`` = 0): a uniformly random *other* image.
   Pair ``c * n + i`` is stored at that row; labels are ``(label[i], label[partner])``.
3. Canvas: 36 x 36 zeros; the top-left item at rows/columns 0-27, the bottom-right item at
   rows/columns 8-35; where they overlap (a 20 x 20 square) the pixel-wise maximum.
4. Resize: the canvas to 28 x 28 with ``torch.nn.functional.interpolate(mode="bilinear",
   antialias=True, align_corners=False)`` on values in [0, 255], rounded to ``uint8``.

The result is cached as ``<cache_dir>/multi_fashion_v1_seed<seed>.pt`` (default cache
directory: ``data/multi_fashion/`` in the checkout, ignored by git) and rebuilt when the
stored recipe differs.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.ibkit.data import FASHION_FILES, prepare_fashion_mnist_root

__all__ = [
    "CLASSES",
    "DEFAULT_CACHE",
    "RECIPE",
    "MultiTaskData",
    "build_split",
    "compose",
    "load_fashion_uint8",
    "load_multi_fashion",
    "partners",
]

DEFAULT_CACHE = Path(__file__).resolve().parents[2] / "data" / "multi_fashion"
CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

RECIPE: dict[str, Any] = {
    "version": 1,
    "copies": 2,
    "canvas": 36,
    "top_left": 0,
    "bottom_right": 8,
    "overlap": "max",
    "size": 28,
    "resize": "bilinear, antialias=True, align_corners=False, rounded to uint8",
    "partner": "(i + 1 + default_rng([seed, split, copy]).integers(0, n - 1, n)) % n",
}
SPLITS = {"train": 0, "test": 1}
_CHUNK = 8192  # pairs composed at once (bounds the float canvas memory)


@dataclass
class MultiTaskData:
    """Multi-Fashion pairs held in memory.

    Attributes:
        x: Images, ``uint8`` of shape ``(N, 28, 28)``.
        y: Labels, ``int64`` of shape ``(N, 2)``: column 0 the top-left item (task 1),
            column 1 the bottom-right item (task 2).
    """

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, limit: int | None, seed: int) -> MultiTaskData:
        """A fixed random subset of ``limit`` pairs (all when ``limit`` is None or too big).

        It depends only on ``seed``, never on the training seed, so every method and every
        training seed sees the same pairs.
        """
        if limit is None or limit >= len(self):
            return self
        if limit <= 0:
            raise ValueError(f"limit must be positive, got {limit}")
        idx = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:limit]
        return MultiTaskData(self.x[idx], self.y[idx])

    def tensors(self, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` for training: ``x`` float32 in [0, 1] of shape ``(N, 1, 28, 28)``."""
        x = self.x.to(device=device, dtype=torch.float32).div_(255.0).unsqueeze(1)
        return x.contiguous(), self.y.to(device)


def load_fashion_uint8(
    data_dir: str | Path | None = None,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The FashionMNIST splits as ``uint8`` images ``(n, 28, 28)`` and ``int64`` labels.

    Reads the idx files with torchvision's ``FashionMNIST`` class (Debian package first,
    ``data_dir`` if given, torchvision's download as the fallback).
    """
    from torchvision import datasets

    root = prepare_fashion_mnist_root(Path(data_dir) if data_dir is not None else None)
    have = all((root / "FashionMNIST" / "raw" / f).is_file() for f in FASHION_FILES)
    out = {}
    for name in SPLITS:
        ds = datasets.FashionMNIST(str(root), train=name == "train", download=not have)
        out[name] = (ds.data.to(torch.uint8), torch.as_tensor(ds.targets, dtype=torch.long))
    return out


def partners(n: int, split: str, seed: int = 0, copies: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the (top-left, bottom-right) source images of every pair of a split.

    Args:
        n: Number of source images in the split (at least 2).
        split: ``"train"`` or ``"test"``.
        seed: Construction seed (0 for the benchmark).
        copies: Pairs per source image.

    Returns:
        Two ``int64`` arrays of length ``copies * n``; row ``c * n + i`` pairs image ``i``
        with a uniformly random other image.
    """
    if n < 2:
        raise ValueError(f"need at least 2 images to pair, got {n}")
    left, right = [], []
    for c in range(copies):
        rng = np.random.default_rng([seed, SPLITS[split], c])
        offset = rng.integers(0, n - 1, size=n)
        left.append(np.arange(n, dtype=np.int64))
        right.append((np.arange(n, dtype=np.int64) + 1 + offset) % n)
    return np.concatenate(left), np.concatenate(right)


def compose(top_left: torch.Tensor, bottom_right: torch.Tensor) -> torch.Tensor:
    """Overlay two ``uint8`` image batches ``(N, 28, 28)`` as in :data:`RECIPE`.

    Returns:
        ``uint8`` images ``(N, 28, 28)``.
    """
    c, a, b, s = RECIPE["canvas"], RECIPE["top_left"], RECIPE["bottom_right"], RECIPE["size"]
    h = top_left.shape[-1]
    canvas = torch.zeros(top_left.shape[0], c, c)
    canvas[:, a : a + h, a : a + h] = top_left.float()
    region = canvas[:, b : b + h, b : b + h]
    canvas[:, b : b + h, b : b + h] = torch.maximum(region, bottom_right.float())
    small = F.interpolate(
        canvas.unsqueeze(1), size=(s, s), mode="bilinear", antialias=True, align_corners=False
    )
    return small.squeeze(1).round_().clamp_(0, 255).to(torch.uint8)


def build_split(
    images: torch.Tensor,
    labels: torch.Tensor,
    split: str,
    seed: int = 0,
    limit: int | None = None,
) -> MultiTaskData:
    """Build the pairs of one split (the first ``limit`` rows only, when given).

    The first ``limit`` rows are exactly the first rows of the full build, so a small build
    is a faithful sample of the cached dataset.
    """
    left, right = partners(int(images.shape[0]), split, seed, RECIPE["copies"])
    if limit is not None:
        left, right = left[:limit], right[:limit]
    li, ri = torch.from_numpy(left), torch.from_numpy(right)
    xs = [
        compose(images[li[i : i + _CHUNK]], images[ri[i : i + _CHUNK]])
        for i in range(0, len(li), _CHUNK)
    ]
    x = torch.cat(xs) if xs else torch.zeros(0, RECIPE["size"], RECIPE["size"], dtype=torch.uint8)
    y = torch.stack([labels[li], labels[ri]], dim=1)
    return MultiTaskData(x, y)


def _digest(data: MultiTaskData) -> str:
    h = hashlib.sha256()
    h.update(data.x.numpy().tobytes())
    h.update(data.y.numpy().tobytes())
    return h.hexdigest()[:16]


def load_multi_fashion(
    seed: int = 0,
    cache_dir: str | Path | None = None,
    data_dir: str | Path | None = None,
    rebuild: bool = False,
) -> tuple[MultiTaskData, MultiTaskData, dict[str, Any]]:
    """Multi-Fashion's train and test pairs, from the cache or built (then cached).

    Args:
        seed: Construction seed.
        cache_dir: Where the ``.pt`` file lives (default :data:`DEFAULT_CACHE`).
        data_dir: FashionMNIST location for :func:`load_fashion_uint8`.
        rebuild: Build even if a cached file exists.

    Returns:
        ``(train, test, info)``; ``info`` holds the recipe, sizes, the sha256 prefixes of the
        tensors, the cache path and whether this call built the data.
    """
    cache = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE
    path = cache / f"multi_fashion_v{RECIPE['version']}_seed{seed}.pt"
    if path.is_file() and not rebuild:
        blob = torch.load(path, weights_only=True)
        if blob.get("recipe") == RECIPE and blob.get("seed") == seed:
            train = MultiTaskData(blob["x_train"], blob["y_train"])
            test = MultiTaskData(blob["x_test"], blob["y_test"])
            return train, test, {**blob["info"], "cache": str(path), "built": False}
    src = load_fashion_uint8(data_dir)
    train = build_split(*src["train"], "train", seed)
    test = build_split(*src["test"], "test", seed)
    info = {
        "recipe": RECIPE,
        "seed": seed,
        "n_train": len(train),
        "n_test": len(test),
        "sha256_train": _digest(train),
        "sha256_test": _digest(test),
    }
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    blob = {
        "recipe": RECIPE,
        "seed": seed,
        "info": info,
        "x_train": train.x,
        "y_train": train.y,
        "x_test": test.x,
        "y_test": test.y,
    }
    torch.save(blob, tmp)
    os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file
    return train, test, {**info, "cache": str(path), "built": True}

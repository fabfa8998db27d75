"""Datasets: FashionMNIST and CIFAR-10 read through torchvision's own dataset classes.

FashionMNIST comes from Debian's ``dataset-fashion-mnist`` package, which installs the four
original idx ``.gz`` files under ``/usr/share/datasets/fashion-mnist/``. torchvision's
``FashionMNIST`` class looks for the *decompressed* files in ``<root>/FashionMNIST/raw/``, so
:func:`prepare_fashion_mnist_root` decompresses them once into a cache directory and the class
then parses them with its own idx reader. (Debian recompressed the archives, so their md5 sums
differ from the ones torchvision pins for its download; that is why they are decompressed here
rather than handed to ``download=True``.) Without the package and without ``--data-dir`` the
class's ``download=True`` is the fallback.

CIFAR-10 is read by torchvision's ``CIFAR10`` class (``download=True`` where online). Its
constructor verifies the md5 sum of every pickled batch; :class:`UncheckedCIFAR10` is the same
class with only that integrity check relaxed to "the files exist", so tests can write a tiny
dataset in the real on-disk format and still exercise the real parsing code.

All images are returned as float tensors in [0, 1] with shape (N, C, H, W); normalization
lives inside the model (see :mod:`ibkit.models`), so attacks operate in pixel space.
"""

from __future__ import annotations

import gzip
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torchvision import datasets

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
DATASETS = ("fashion_mnist", "cifar10")

# Per-channel statistics of the training sets, used by the in-model normalization layer.
NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}
SHAPES: dict[str, tuple[int, int, int]] = {
    "fashion_mnist": (1, 28, 28),
    "cifar10": (3, 32, 32),
}
NUM_CLASSES = 10


@dataclass
class TensorData:
    """A labelled image set held in memory.

    Attributes:
        x: Images, float32 in [0, 1], shape (N, C, H, W).
        y: Integer labels, shape (N,).
    """

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        """Number of examples."""
        return int(self.y.shape[0])

    def subset(self, limit: int | None, seed: int = 0) -> TensorData:
        """A fixed random subset of ``limit`` examples (the whole set when ``limit`` is None).

        The subset depends only on ``seed`` (not on the training seed), so every method and
        every training seed sees the same examples.

        Args:
            limit: Number of examples to keep, or None for all.
            seed: Seed of the permutation that picks them.

        Returns:
            The subset.
        """
        if limit is None or limit >= len(self):
            return self
        if limit <= 0:
            raise ValueError(f"limit must be positive, got {limit}")
        gen = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(self), generator=gen)[:limit]
        return TensorData(self.x[idx], self.y[idx])

    def to(self, device: torch.device | str) -> TensorData:
        """Copy to ``device``."""
        return TensorData(self.x.to(device), self.y.to(device))


def batches(
    data: TensorData, batch_size: int, shuffle: bool, generator: torch.Generator | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield mini-batches of an in-memory dataset.

    Args:
        data: The dataset.
        batch_size: Batch size (the last batch may be smaller).
        shuffle: Draw a fresh permutation (from ``generator``) instead of the stored order.
        generator: CPU generator for the permutation.

    Yields:
        ``(x, y)`` pairs.
    """
    n = len(data)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    order = order.to(data.x.device)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        yield data.x[idx], data.y[idx]


def default_cache_dir() -> Path:
    """Cache directory for prepared datasets (``$MOGRAD_DATA`` or ``~/.cache/mograd/data``)."""
    env = os.environ.get("MOGRAD_DATA")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "mograd" / "data"


def _find_fashion_source(data_dir: Path | None) -> Path | None:
    """Locate a directory holding the four FashionMNIST idx files (plain or ``.gz``)."""
    candidates: list[Path] = []
    if data_dir is not None:
        candidates += [data_dir, data_dir / "FashionMNIST" / "raw"]
    candidates.append(DEBIAN_FASHION_MNIST)
    for cand in candidates:
        if all((cand / f).is_file() or (cand / f"{f}.gz").is_file() for f in FASHION_FILES):
            return cand
    return None


def prepare_fashion_mnist_root(data_dir: Path | None, cache_dir: Path | None = None) -> Path:
    """Lay out FashionMNIST the way torchvision's ``FashionMNIST`` class expects it.

    Looks for the idx files in ``data_dir`` (either directly or in torchvision's
    ``FashionMNIST/raw`` layout), then in Debian's ``/usr/share/datasets/fashion-mnist``, and
    decompresses them into ``<root>/FashionMNIST/raw/``.

    Args:
        data_dir: User-given directory (``--data-dir``), or None.
        cache_dir: Where to build the torchvision root; default :func:`default_cache_dir`.

    Returns:
        The torchvision root. When no source was found the raw folder may be empty and the
        caller falls back to ``download=True``.
    """
    source = _find_fashion_source(data_dir)
    if source is not None and data_dir is not None and source == data_dir / "FashionMNIST" / "raw":
        if all((source / f).is_file() for f in FASHION_FILES):
            return data_dir
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    raw = root / "FashionMNIST" / "raw"
    if source is None:
        return root
    raw.mkdir(parents=True, exist_ok=True)
    for name in FASHION_FILES:
        target = raw / name
        if target.is_file():
            continue
        tmp = raw / f".{name}.tmp{os.getpid()}"
        if (source / name).is_file():
            shutil.copyfile(source / name, tmp)
        else:
            with gzip.open(source / f"{name}.gz", "rb") as fin, open(tmp, "wb") as fout:
                shutil.copyfileobj(fin, fout)
        os.replace(tmp, target)  # atomic: concurrent runs never see a half-written file
    return root


class UncheckedCIFAR10(datasets.CIFAR10):
    """torchvision's ``CIFAR10`` with the md5 check reduced to "every file exists".

    ``CIFAR10.__init__`` refuses files whose md5 sum differs from the official archive's, and
    ``_load_meta`` does the same for ``batches.meta``. A tiny dataset written in the same on-disk
    format (pickled ``data_batch_1..5``, ``test_batch``, ``batches.meta``) therefore cannot be
    loaded by the real class. This subclass keeps all of torchvision's loading code and only
    replaces the pinned checksums by ``None`` -- for which ``check_integrity`` tests existence
    -- so tests exercise the real parser. Real runs use the unmodified class.
    """

    train_list: ClassVar[list[list[str | None]]] = [
        [name, None] for name, _ in datasets.CIFAR10.train_list
    ]
    test_list: ClassVar[list[list[str | None]]] = [
        [name, None] for name, _ in datasets.CIFAR10.test_list
    ]
    meta: ClassVar[dict[str, str | None]] = {**datasets.CIFAR10.meta, "md5": None}

    def download(self) -> None:
        """Never download: the unchecked class exists only for local, hand-written files."""


def _fashion_to_tensors(ds: datasets.FashionMNIST) -> TensorData:
    x = ds.data.to(torch.float32).div_(255.0).unsqueeze(1)
    y = torch.as_tensor(ds.targets, dtype=torch.long)
    return TensorData(x.contiguous(), y)


def _cifar_to_tensors(ds: datasets.CIFAR10) -> TensorData:
    arr = np.asarray(ds.data)  # (N, 32, 32, 3) uint8
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).to(torch.float32).div_(255.0)
    y = torch.as_tensor(ds.targets, dtype=torch.long)
    return TensorData(x.contiguous(), y)


def load_dataset(
    name: str,
    data_dir: str | Path | None = None,
    *,
    verify_md5: bool = True,
    download: bool = True,
) -> tuple[TensorData, TensorData]:
    """Load the train and test split of a dataset as in-memory tensors.

    Args:
        name: ``"fashion_mnist"`` or ``"cifar10"``.
        data_dir: ``--data-dir``. FashionMNIST: a directory with the idx files (see
            :func:`prepare_fashion_mnist_root`); CIFAR-10: torchvision's root (the directory that
            contains ``cifar-10-batches-py``). None: the default cache directory.
        verify_md5: CIFAR-10 only: False uses :class:`UncheckedCIFAR10` (files must exist
            locally, checksums are not compared).
        download: Allow torchvision to download when the files are missing.

    Returns:
        ``(train, test)``.

    Raises:
        ValueError: Unknown dataset name.
        RuntimeError: The data is missing and could not be downloaded.
    """
    path = Path(data_dir).expanduser() if data_dir is not None else None
    if name == "fashion_mnist":
        root = prepare_fashion_mnist_root(path)
        have = all((root / "FashionMNIST" / "raw" / f).is_file() for f in FASHION_FILES)
        splits = [
            datasets.FashionMNIST(str(root), train=train, download=download and not have)
            for train in (True, False)
        ]
        train_set, test_set = (_fashion_to_tensors(ds) for ds in splits)
        return train_set, test_set
    if name == "cifar10":
        root = path if path is not None else default_cache_dir()
        if verify_md5:
            cifar = [datasets.CIFAR10(str(root), train=t, download=download) for t in (True, False)]
        else:
            cifar = [UncheckedCIFAR10(str(root), train=t) for t in (True, False)]
        train_set, test_set = (_cifar_to_tensors(ds) for ds in cifar)
        return train_set, test_set
    raise ValueError(f"unknown dataset {name!r}; expected one of {DATASETS}")

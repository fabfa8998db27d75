"""The MIB paper's CIFAR-10 experiment (Table 2) on the same code as ``ib_fmnist.py``.

Examples:
    python -m benchmarks.ib_cifar10 --preset quick --data-dir ~/data      # CPU
    python -m benchmarks.ib_cifar10 --preset paper --device cuda          # paper: 150 epochs
    python -m benchmarks.ib_cifar10 --preset paper --beta 0.01 \\
        --methods VIB NIB VIB-squared NIB-squared                          # paper Table 4

The data is read by torchvision's CIFAR10 class from ``<data-dir>/cifar-10-batches-py``
(downloaded there when missing and online). See docs/benchmarks.md and ``--help``.
"""

from __future__ import annotations

from benchmarks.ibkit.cli import main

if __name__ == "__main__":
    raise SystemExit(main("cifar10", "ib_cifar10"))

"""The MIB paper's CIFAR-10 experiment (Table 2) on the same code as ``ib_fmnist.py``.

Examples:
    python benchmarks/ib_cifar10.py --preset quick --data-dir ~/data      # CPU
    python benchmarks/ib_cifar10.py --preset paper --device cuda          # paper: 150 epochs
    python benchmarks/ib_cifar10.py --preset paper --beta 0.01 \\
        --methods VIB NIB VIB-squared NIB-squared                          # paper Table 4

The data is read by torchvision's CIFAR10 class from ``<data-dir>/cifar-10-batches-py``
(downloaded there when missing and online). See docs/benchmarks.md and ``--help``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for ibkit
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # for mograd from a checkout

from ibkit.cli import main

if __name__ == "__main__":
    raise SystemExit(main("cifar10", "ib_cifar10"))

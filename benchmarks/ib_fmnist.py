"""The MIB paper's FashionMNIST experiment (Table 1, Figures 1, 3, 5) as one command.

Examples:
    python benchmarks/ib_fmnist.py --preset quick            # CPU, ~18 minutes on 2 cores
    python benchmarks/ib_fmnist.py --preset paper --device cuda
    python benchmarks/ib_fmnist.py --preset paper --beta 0.01 \\
        --methods VIB NIB VIB-squared NIB-squared             # paper Table 3

See docs/benchmarks.md and ``--help``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for ibkit
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # for mograd from a checkout

from ibkit.cli import main

if __name__ == "__main__":
    raise SystemExit(main("fashion_mnist", "ib_fmnist"))

"""The MIB paper's FashionMNIST experiment (Table 1, Figures 1, 3, 5) as one command.

Examples:
    python -m benchmarks.ib_fmnist --preset quick            # CPU, ~18 minutes on 2 cores
    python -m benchmarks.ib_fmnist --preset paper --device cuda
    python -m benchmarks.ib_fmnist --preset paper --beta 0.01 \\
        --methods VIB NIB VIB-squared NIB-squared             # paper Table 3

See docs/benchmarks.md and ``--help``.
"""

from __future__ import annotations

from benchmarks.ibkit.cli import main

if __name__ == "__main__":
    raise SystemExit(main("fashion_mnist", "ib_fmnist"))

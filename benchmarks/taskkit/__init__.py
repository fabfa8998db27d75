"""Heterogeneous multi-task benchmark kit: four tasks of different kinds and loss scales on
one shared trunk, for ``benchmarks/fashion_tasks.py`` (see ``docs/fashion_tasks.md``).

Modules:
    data: The task data built deterministically from the real FashionMNIST idx files (each
        image flipped with probability 1/2, then rotated by a uniform random angle).
    tasks: The four tasks: their losses, metrics and which direction is better.
    model: The shared convolutional trunk with one head per task.
    methods: Every weighting of ``mograd.weightings.WEIGHTINGS`` and the variants, as
        ``MOWrapper`` keyword arguments; the single-task baselines.
    train: One (method, seed) run: training, cosines over training, timing, test metrics.
    report: Delta m %, ``results.json``, ``table.md`` and the figures.
"""

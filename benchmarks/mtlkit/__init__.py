"""Multi-task benchmark kit: the Multi-Fashion data, the multi-task LeNet, methods, training
and reports of ``benchmarks/multi_fashion.py`` (see ``docs/multi_fashion.md``).

Modules:
    data: Multi-Fashion built deterministically from the real FashionMNIST idx files, cached.
    model: The LeNet-style shared trunk with one linear head per task.
    methods: Every compared method as ``MOWrapper`` keyword arguments.
    epo: ``RayBalance``, an EPO-style weighting that steers the losses onto a preference ray.
    train: One (method, seed) run: training, per-epoch timing, test accuracies and losses.
    report: ``results.json``, ``table.md`` and the front figure.
"""

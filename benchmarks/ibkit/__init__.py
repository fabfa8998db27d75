"""ibkit: information-bottleneck benchmark kit shared by ``ib_fmnist.py`` and ``ib_cifar10.py``.

One module per concern:

* :mod:`ibkit.data`     -- FashionMNIST / CIFAR-10 through torchvision's dataset classes.
* :mod:`ibkit.models`   -- small CNN and ResNet-18 backbones, the bottleneck heads.
* :mod:`ibkit.losses`   -- KL term, KDE estimate I_hat, information-plane coordinates.
* :mod:`ibkit.methods`  -- the method registry (RES18, VIB, NIB, ..., MIB and its ablations).
* :mod:`ibkit.attacks`  -- the seven torchattacks attacks and their settings.
* :mod:`ibkit.train`    -- ``run(method, seed, config) -> dict``: train, evaluate, attack.
* :mod:`ibkit.report`   -- ``results.json``, ``table.md`` and the figures.
* :mod:`ibkit.cli`      -- the command line shared by both entry points.

Typical use from other code::

    from benchmarks.ibkit.train import RunConfig, run
    cfg = RunConfig(dataset="fashion_mnist", backbone="cnn", epochs=2, train_limit=2000)
    result = run("MIB", seed=0, config=cfg)
    points = result["info_plane"]  # list of (I(X;Z) bound, I(Z;Y) bound) per epoch
"""

from __future__ import annotations

__all__ = ["attacks", "data", "losses", "methods", "models", "report", "train"]

"""PCGrad: project each gradient onto the normal plane of the gradients it conflicts with.

Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020 (Algorithm 1). See
``docs/weightings.md``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ._base import Weighting
from ._util import (
    check_seed,
    from_host,
    generator_state,
    load_generator_state,
    nan_weights,
    to_host,
)

__all__ = ["PCGrad"]


class PCGrad(Weighting):
    r"""Projecting conflicting gradients (PCGrad; Yu et al. 2020).

    For each loss $i$, $g_i^{\mathrm{PC}}$ starts at $g_i$; for every other loss $j$, in a
    random order drawn afresh for each $i$, if $g_i^{\mathrm{PC}} \cdot g_j < 0$ then
    $g_i^{\mathrm{PC}} \leftarrow g_i^{\mathrm{PC}} -
    \big(g_i^{\mathrm{PC}} \cdot g_j / \lVert g_j \rVert^2\big) \, g_j$. The update is
    $\sum_i g_i^{\mathrm{PC}}$. Every $g_i^{\mathrm{PC}}$ is a combination of the gradients,
    tracked in Gram form: with $g_i^{\mathrm{PC}} = J^\top c$,
    $g_i^{\mathrm{PC}} \cdot g_j = (G c)_j$ and the projection subtracts $(G c)_j / G_{jj}$
    from $c_j$; the weights are the sum of the $c$. Zero gradients ($G_{jj} = 0$) are
    skipped. The projection order comes from a CPU
    :class:`torch.Generator` seeded with ``seed``: the same seed gives the same orders on
    every rank, and :meth:`state_dict` holds the generator state so that a resumed run
    draws the same orders. The orders are ``torch.randperm(k)`` draws, one per loss in
    order $i = 0, \dots, k-1$.

    When to use it: a few losses with occasional strong conflicts; the classic baseline of
    gradient surgery. Its weights are invariant to the scale of the Gram matrix.

    Host round trip: yes (data-dependent branches, on the host in float64).

    Args:
        seed: Seed of the projection orders (an int in $[0, 2^{63})$).

    Example:
        >>> import torch
        >>> from mograd.weightings import PCGrad
        >>> gram = torch.tensor([[1.0, -0.5], [-0.5, 1.0]], dtype=torch.float64)
        >>> PCGrad(seed=0)(gram)
        tensor([1.5000, 1.5000], dtype=torch.float64)
    """

    host_sync = True

    def __init__(self, seed: int = 0) -> None:
        self.seed = check_seed(seed)
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(self.seed)

    def weigh(self, gram: torch.Tensor, losses: torch.Tensor | None) -> torch.Tensor:
        g = to_host(gram)
        if g is None:
            return nan_weights(gram)
        k = g.shape[0]
        total = np.zeros(k)
        for i in range(k):
            order = torch.randperm(k, generator=self.generator).tolist()
            c = np.zeros(k)
            c[i] = 1.0
            for j in order:
                if j == i or not g[j, j] > 0:
                    continue
                dot = float(g[j] @ c)
                if dot < 0.0:
                    c[j] -= dot / g[j, j]
            total += c
        return from_host(total, gram)

    def state_dict(self) -> dict[str, Any]:
        """The generator state (the next projection orders)."""
        return generator_state(self.generator)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the generator state of :meth:`state_dict`."""
        load_generator_state("PCGrad", self.generator, state)

    def __repr__(self) -> str:
        return f"PCGrad(seed={self.seed})"

"""GradVac: raise each pair's gradient cosine towards its moving-average target.

Wang, Tsvetkov, Firat, Cao, "Gradient Vaccine: Investigating and Improving Multi-task
Optimization in Massively Multilingual Models", ICLR 2021 (Algorithm 1). See
``docs/weightings.md``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .._checks import check_number
from ._base import Weighting
from ._util import (
    check_fraction,
    check_seed,
    from_host,
    generator_state,
    load_generator_state,
    nan_weights,
    to_host,
)

__all__ = ["GradVac"]


class GradVac(Weighting):
    r"""Gradient vaccine (GradVac; Wang et al. 2021), from the Gram matrix.

    For each loss $i$, $g_i^{\mathrm{GV}}$ starts at $g_i$; for every other loss $j$, in a
    random order drawn afresh for each $i$, with the cosine
    $\phi = \cos(g_i^{\mathrm{GV}}, g_j)$ and the pair's target $\hat\phi_{ij}$: if
    $\phi < \hat\phi_{ij}$,

    $$
    g_i^{\mathrm{GV}} \leftarrow g_i^{\mathrm{GV}} + \frac{\lVert g_i^{\mathrm{GV}} \rVert
    \big(\hat\phi_{ij} \sqrt{1 - \phi^2} - \phi \sqrt{1 - \hat\phi_{ij}^2}\big)}
    {\lVert g_j \rVert \sqrt{1 - \hat\phi_{ij}^2}} \, g_j,
    $$

    which sets the cosine to the target; then
    $\hat\phi_{ij} \leftarrow (1 - \beta) \, \hat\phi_{ij} + \beta \phi$.
    The update is $\sum_i g_i^{\mathrm{GV}}$. As for PCGrad, $g_i^{\mathrm{GV}} = J^\top c$ and
    every norm and cosine is read from $G$ ($\lVert J^\top c \rVert^2 = c^\top G c$); the
    weights are the sum of the $c$. The targets start at 0 (the first step is PCGrad-like).
    The ``eps`` added to the denominators is relative: everything is computed on
    $G / \operatorname{tr}(G)$, so that the weights do not depend on the scale of $G$
    (TorchJD adds ``eps`` to the raw norms).

    The targets $\hat\phi$ (a $k \times k$ matrix) and the generator of the orders are the
    state (:meth:`state_dict`); a change of $k$ restarts the targets at 0. A non-finite $G$
    gives NaN weights and leaves the state unchanged.

    When to use it: many losses (e.g. languages) whose gradient similarities should be kept
    at their typical level rather than only made non-negative (PCGrad's target is 0).

    Host round trip: yes (data-dependent branches, on the host in float64).

    Args:
        beta: EMA rate $\beta$ of the targets, in $[0, 1]$.
        eps: Added to the denominators (relative to $\operatorname{tr}(G)$; $\ge 0$).
        seed: Seed of the orders (an int in $[0, 2^{63})$).

    Example:
        >>> import torch
        >>> from mograd.weightings import GradVac
        >>> gram = torch.tensor([[1.0, -0.5], [-0.5, 1.0]], dtype=torch.float64)
        >>> GradVac()(gram)  # target 0 at the first step: PCGrad's weights
        tensor([1.5000, 1.5000], dtype=torch.float64)
    """

    host_sync = True

    def __init__(self, beta: float = 0.5, eps: float = 1e-8, seed: int = 0) -> None:
        self.beta = check_fraction("beta", beta)
        self.eps = check_number("eps", eps, nonnegative=True)
        self.seed = check_seed(seed)
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(self.seed)
        self._phi: np.ndarray | None = None

    def weigh(self, gram: torch.Tensor, losses: torch.Tensor | None) -> torch.Tensor:
        g = to_host(gram)
        if g is None:
            return nan_weights(gram)
        k = g.shape[0]
        tr = float(np.trace(g))
        gn = g / tr if tr > 0 else g
        phi = self._phi if self._phi is not None and self._phi.shape == (k, k) else np.zeros((k, k))
        phi = phi.copy()
        total = np.zeros(k)
        for i in range(k):
            others = [j for j in range(k) if j != i]
            order = torch.randperm(k - 1, generator=self.generator).tolist()
            total += self._vaccinate(gn, phi, i, [others[o] for o in order])
        self._phi = phi
        return from_host(total, gram)

    def _vaccinate(self, g: np.ndarray, phi: np.ndarray, i: int, order: list[int]) -> np.ndarray:
        r"""The coefficients of $g_i^{\mathrm{GV}}$ (updates the targets of row $i$ in place)."""
        k = g.shape[0]
        c = np.zeros(k)
        c[i] = 1.0
        cg = g[i].copy()  # g_i^GV . g_j for every j
        for j in order:
            norm_i = math.sqrt(max(float(cg @ c), 0.0))
            norm_j = math.sqrt(max(float(g[j, j]), 0.0))
            cos = float(cg[j]) / (norm_i * norm_j + self.eps)
            target = float(phi[i, j])
            if cos < target:
                s_cos = math.sqrt(max(1.0 - cos * cos, 0.0))
                s_tgt = math.sqrt(max(1.0 - target * target, 0.0))
                coef = norm_i * (target * s_cos - cos * s_tgt) / (norm_j * s_tgt + self.eps)
                c[j] += coef
                cg = cg + coef * g[j]
            phi[i, j] = (1.0 - self.beta) * target + self.beta * cos
        return c

    def state_dict(self) -> dict[str, Any]:
        """The targets (``None`` before the first step) and the generator state."""
        phi = None if self._phi is None else torch.from_numpy(self._phi.copy())
        return {"phi": phi, **generator_state(self.generator)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        if not isinstance(state, dict) or "phi" not in state:
            raise ValueError(f"GradVac state must hold 'phi' and 'rng_state', got {state!r}")
        phi = state["phi"]
        if phi is not None and not isinstance(phi, torch.Tensor):
            raise ValueError(f"GradVac state['phi'] must be a tensor or None, got {phi!r}")
        load_generator_state("GradVac", self.generator, state)
        self._phi = None if phi is None else phi.detach().cpu().double().numpy().copy()

    def __repr__(self) -> str:
        return f"GradVac(beta={self.beta:g}, eps={self.eps:g}, seed={self.seed})"

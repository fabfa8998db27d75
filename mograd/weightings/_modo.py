"""MoDo: stochastic multi-objective descent with a projected-gradient update of the weights.

Chen, Fernando, Ying, Chen, "Three-Way Trade-Off in Multi-Objective Learning: Optimization,
Generalization and Conflict-Avoidance", NeurIPS 2023 / JMLR 2024 (Algorithm 1, eq. 2.9a).
See ``docs/weightings.md``.
"""

from __future__ import annotations

from typing import Any

import torch

from .._checks import check_number
from ._base import Weighting
from ._util import all_finite, clone_state, project_simplex

__all__ = ["MoDo"]


class MoDo(Weighting):
    r"""Multi-objective gradient with double sampling (MoDo; Chen et al. 2023).

    The weights $\lambda$ (on the simplex $\Delta$, starting at $\lambda_i = 1/k$) take one
    projected gradient step per call on the MGDA objective
    $\lambda^\top A \lambda / 2 + \rho \lVert \lambda \rVert^2 / 2$:

    $$
    \lambda \leftarrow \Pi_\Delta\big(\lambda - \gamma (A \lambda + \rho \lambda)\big),
    $$

    and the update uses the new $\lambda$. In the paper $A = J_1 J_2^\top$ is formed from two
    independent mini-batches (an unbiased estimate of $J J^\top$; not symmetric in general),
    and a third batch gives the update $J_3^\top \lambda$. Call the weighting on that matrix
    to get the paper's method: it accepts any square $A$. Through the optimizer
    (``weights="modo"``) it sees the single-batch $G = J J^\top$ of the step, the biased
    variant the paper's analysis does not cover (see ``docs/weightings.md``).

    $\lambda$ is the state (:meth:`state_dict`, float64 on $A$'s device); a change of
    $k$ restarts it. A non-finite $A$ gives NaN weights and leaves it unchanged.
    $\gamma$ is absolute: it scales with $1 / \lVert A \rVert$.

    When to use it: stochastic MGDA with a convergence guarantee, when two extra gradient
    batches per step are affordable.

    Host round trip: no (the simplex projection is tensor operations).

    Args:
        gamma: Step size $\gamma > 0$ of the weights.
        rho: L2 regularization $\rho \ge 0$ of the weights.

    Example:
        >>> import torch
        >>> from mograd.weightings import MoDo
        >>> modo = MoDo(gamma=0.5, rho=0.0)
        >>> modo(torch.diag(torch.tensor([1.0, 0.0], dtype=torch.float64)))
        tensor([0.3750, 0.6250], dtype=torch.float64)
    """

    host_sync = False

    def __init__(self, gamma: float = 0.1, rho: float = 0.1) -> None:
        self.gamma = check_number("gamma", gamma, positive=True)
        self.rho = check_number("rho", rho, nonnegative=True)
        self._lambda: torch.Tensor | None = None

    def weigh(self, gram: torch.Tensor, losses: torch.Tensor | None) -> torch.Tensor:
        k = gram.shape[0]
        a = gram.detach().to(torch.float64)
        lam = self._lambda
        if lam is None or lam.shape[0] != k:
            lam = torch.full((k,), 1.0 / k, dtype=torch.float64, device=gram.device)
        lam = lam.to(gram.device)
        new = project_simplex(lam - self.gamma * (a @ lam + self.rho * lam))
        ok = all_finite(a)
        self._lambda = torch.where(ok, new, lam)
        return torch.where(ok, new, torch.full_like(new, float("nan"))).to(gram.dtype)

    def state_dict(self) -> dict[str, Any]:
        r"""The weights $\lambda$ (``None`` before the first step)."""
        return {"lambda": None if self._lambda is None else clone_state(self._lambda)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        lam = state.get("lambda", 0) if isinstance(state, dict) else 0
        if lam is not None and not isinstance(lam, torch.Tensor):
            raise ValueError(f"MoDo state must hold 'lambda' (a tensor or None), got {state!r}")
        self._lambda = None if lam is None else lam.detach().clone()

    def __repr__(self) -> str:
        return f"MoDo(gamma={self.gamma:g}, rho={self.rho:g})"

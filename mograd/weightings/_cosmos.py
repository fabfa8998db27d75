"""COSMOS: linear scalarization with a cosine penalty towards the preference vector.

Ruchte & Grabocka, "Scalable Pareto Front Approximation for Deep Multi-Objective Learning",
ICDM 2021 (arXiv:2103.13392), eq. 4. See ``docs/weightings.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .._checks import check_number
from ._base import LossWeighting
from ._util import check_pref, check_seed, loss_vector, nan_guard

__all__ = ["COSMOS"]


class COSMOS(LossWeighting):
    r"""COSMOS (Ruchte & Grabocka 2021), a loss-level weighting.

    With the preference $r$ (default $r_i = 1/k$), the scalarized loss is

    $$
    S = r^\top L - \lambda \cos(r, L), \qquad
    \cos(r, L) = \frac{r^\top L}{\lVert r \rVert \, \lVert L \rVert},
    $$

    so

    $$
    c = r - \lambda \Big(\frac{r}{\lVert r \rVert \, \lVert L \rVert} -
    \frac{(r^\top L) \, L}{\lVert r \rVert \, \lVert L \rVert^3}\Big)
    $$

    ($c = r$ when $L = 0$). The penalty pulls the loss vector towards the preference ray. The
    full method also feeds $r$ to the model and draws a new
    $r \sim \operatorname{Dirichlet}(\alpha)$ at every step, which traces the Pareto front
    with one model: :meth:`sample_pref` draws it (from a seeded generator, kept in
    :meth:`state_dict`), sets it and returns it, for the user to condition the model on
    before the forward pass.

    When to use it: one model conditioned on the preference, covering the Pareto front.

    Cost: one backward pass (``needs_gram = False``). Host round trip: no.

    Args:
        lambda_: Penalty $\lambda \ge 0$ (the paper uses 0.01 to 8 depending on the data).
        pref_vector: $r$ ($k$ finite values $\ge 0$, not all zero); reassign between steps.
        alpha: Concentration $\alpha > 0$ of the Dirichlet draws of :meth:`sample_pref`.
        seed: Seed of those draws.

    Example:
        >>> import torch
        >>> from mograd.weightings import COSMOS
        >>> COSMOS(lambda_=1.0, pref_vector=[0.5, 0.5])(None, torch.tensor([1.0, 1.0]))
        tensor([0.5000, 0.5000])
    """

    def __init__(
        self,
        lambda_: float = 1.0,
        pref_vector: Sequence[float] | torch.Tensor | None = None,
        alpha: float = 1.0,
        seed: int = 0,
    ) -> None:
        self.lambda_ = check_number("lambda_", lambda_, nonnegative=True)
        self.pref_vector = check_pref(pref_vector)
        self.alpha = check_number("alpha", alpha, positive=True)
        self.seed = check_seed(seed)
        self._rng = np.random.default_rng(self.seed)

    def sample_pref(self, k: int) -> torch.Tensor:
        r"""Draw $r \sim \operatorname{Dirichlet}(\alpha)$ for $k$ losses, set it as
        ``pref_vector``, return it."""
        r = self._rng.dirichlet(np.full(k, self.alpha))
        self.pref_vector = tuple(float(v) for v in r)
        return torch.tensor(self.pref_vector, dtype=torch.float64)

    def weigh_losses(self, losses: torch.Tensor) -> torch.Tensor:
        k = losses.shape[0]
        r = loss_vector(self.pref_vector, k, losses, "COSMOS", "pref_vector")
        r = torch.full_like(losses, 1.0 / k) if r is None else r
        nr, nl = r.norm(), losses.norm()
        safe = torch.where(nl > 0, nl, torch.ones_like(nl))
        dcos = r / (nr * safe) - (r @ losses) * losses / (nr * safe**3)
        c = r - self.lambda_ * torch.where(nl > 0, dcos, torch.zeros_like(dcos))
        return nan_guard(c, losses)

    def state_dict(self) -> dict[str, Any]:
        """The generator of :meth:`sample_pref` and the current preference."""
        pref = None if self.pref_vector is None else list(self.pref_vector)
        return {"rng_state": self._rng.bit_generator.state, "pref_vector": pref}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        if not isinstance(state, dict) or not {"rng_state", "pref_vector"} <= set(state):
            raise ValueError(f"COSMOS state must hold 'rng_state' and 'pref_vector', got {state!r}")
        rng = np.random.default_rng()
        try:
            rng.bit_generator.state = state["rng_state"]
        except (TypeError, ValueError, KeyError) as exc:
            raise ValueError(f"COSMOS state has a bad 'rng_state': {exc}") from exc
        self._rng = rng
        self.pref_vector = check_pref(state["pref_vector"])

    def __repr__(self) -> str:
        pref = None if self.pref_vector is None else list(self.pref_vector)
        return (
            f"COSMOS(lambda_={self.lambda_:g}, pref_vector={pref!r}, alpha={self.alpha:g}, "
            f"seed={self.seed})"
        )

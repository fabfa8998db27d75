r"""MinNorm: the min-norm point of the convex hull of the gradients (MGDA, MIB eq. 8).

Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018; the
paper's eqs. 8-11. $w^* = \arg\min_{w \in \Delta} w^\top G w$ over the simplex $\Delta$,
solved by :mod:`mograd.solver` (closed form for $k = 2$, fully-corrective Frank-Wolfe for
$k \ge 3$).
"""

from __future__ import annotations

import torch

from .._checks import check_int, check_number
from ..solver import DEFAULT_MAX_ITER, DEFAULT_TOL, MinNormResult, min_norm_solve
from ._base import Weighting
from ._util import nan_guard, nan_weights, to_host

__all__ = ["MinNorm"]


class MinNorm(Weighting):
    r"""Min-norm weights on the simplex (MGDA; the weights of MIB, paper eq. 8).

    A Gram matrix with a NaN or infinite entry gives NaN weights ($k \le 2$: propagated by
    tensor operations; $k \ge 3$: found on the host copy that Frank-Wolfe needs anyway).

    Host round trip: for $k \ge 3$ only (Frank-Wolfe on the host); $k \le 2$ is tensor
    operations.

    Args:
        max_iter: Frank-Wolfe iteration cap ($k \ge 3$).
        tol: Duality-gap tolerance relative to $\max_i G_{ii}$ ($k \ge 3$).

    Example:
        >>> import torch
        >>> from mograd.weightings import MinNorm
        >>> MinNorm()(torch.tensor([[1.0, 0.0], [0.0, 4.0]]))
        tensor([0.8000, 0.2000])
    """

    host_sync = True  # k >= 3 only; k <= 2 is tensor operations (see ``syncs``)

    def __init__(self, max_iter: int = DEFAULT_MAX_ITER, tol: float = DEFAULT_TOL) -> None:
        self.max_iter = check_int("max_iter", max_iter, minimum=1)
        self.tol = check_number("tol", tol, nonnegative=True)

    @staticmethod
    def syncs(k: int) -> bool:
        r"""Whether the solve for $k$ losses reads the device (only Frank-Wolfe, $k \ge 3$)."""
        return k >= 3

    def solve(self, gram: torch.Tensor) -> MinNormResult:
        """The weights with the solver's iteration count and duality gap (NaN weights and
        gap for a non-finite ``gram``)."""
        k = gram.shape[0]
        if not self.syncs(k):
            res = min_norm_solve(gram, max_iter=self.max_iter, tol=self.tol, validate=False)
            return res._replace(weights=nan_guard(res.weights, gram))
        g = to_host(gram)  # the one host copy of Frank-Wolfe
        if g is None:
            return MinNormResult(nan_weights(gram), 0, float("nan"))
        res = min_norm_solve(
            torch.from_numpy(g), max_iter=self.max_iter, tol=self.tol, validate=False
        )
        return res._replace(weights=res.weights.to(device=gram.device, dtype=gram.dtype))

    def weigh(self, gram: torch.Tensor, losses: torch.Tensor | None) -> torch.Tensor:
        return self.solve(gram).weights

    def __repr__(self) -> str:
        return f"MinNorm(max_iter={self.max_iter}, tol={self.tol:g})"

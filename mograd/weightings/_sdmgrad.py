"""SDMGrad: stochastic direction-oriented MGDA, weights pulled towards a preference.

Xiao, Ban, Ji, "Direction-oriented Multi-objective Learning: Simple and Provable Stochastic
Algorithms", NeurIPS 2023 (arXiv:2305.18409), Algorithm 1 and Section 6.1. See
``docs/weightings.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .._checks import check_number
from ._base import Weighting
from ._util import (
    all_finite,
    check_fraction,
    check_int,
    check_pref,
    clone_state,
    host_values,
    project_simplex,
)

__all__ = ["SDMGrad"]


class SDMGrad(Weighting):
    r"""Stochastic direction-oriented multi-objective gradient (SDMGrad; Xiao et al. 2023).

    The inner weights $w$ (on the simplex, kept across steps, starting at $w_i = 1/k$) take
    ``n_iter`` projected momentum-SGD steps on $\lVert J^\top (w + \lambda p) \rVert^2 / 2$,
    whose gradient is $A (w + \lambda p)$ with $A$ the Gram matrix normalized by the squared
    mean gradient norm ($\operatorname{mean}_i \sqrt{A_{ii}}$; Section 6.1), and the weights
    are $(w + \lambda p) / (1 + \lambda)$: MGDA pulled towards the preferred direction
    $J^\top p$. As for :class:`~mograd.weightings.MoDo`, the paper forms $A = J_1 J_2^\top$
    from two independent mini-batches; the weighting accepts that matrix, while through the
    optimizer it sees the single-batch $G$. The normalization divides by the squared mean
    norm plus $\epsilon$ = ``eps`` (absolute, as the official code and TorchJD: with
    gradients far below $\sqrt{\epsilon}$ the inner steps shrink; ``eps=0`` makes SDMGrad
    scale-free, and an all-zero $A$ then leaves $w$ unchanged). The inner iteration is
    sensitive to rounding when ``lr`` times the largest eigenvalue of the normalized $A$ is
    large (it bounces between faces of the simplex), so different implementations agree
    only to rounding amplified over ``n_iter`` steps.

    $w$ is the state (:meth:`state_dict`); a change of $k$ restarts it. A non-finite
    $A$ gives NaN weights and leaves it unchanged.

    When to use it: stochastic MGDA that should stay close to the average (or a preferred)
    gradient.

    Host round trip: no (``n_iter`` tensor-only iterations).

    Args:
        lr: Inner step size ($> 0$).
        momentum: Inner momentum, in $[0, 1)$.
        n_iter: Inner iterations per step ($\ge 1$).
        lambda_: Pull $\lambda \ge 0$ towards the preference (the paper's experiments use
            0.3).
        pref_vector: The preference $p$ ($k$ finite values $\ge 0$, not all zero); default
            $p_i = 1/k$.
        eps: $\epsilon \ge 0$, added to the squared mean norm.

    Example:
        >>> import torch
        >>> from mograd.weightings import SDMGrad
        >>> gram = torch.tensor([[1.0, -0.5], [-0.5, 4.0]], dtype=torch.float64)
        >>> SDMGrad(lr=0.5, n_iter=200, lambda_=0.0)(gram)  # MGDA's weights for lambda_ = 0
        tensor([0.7500, 0.2500], dtype=torch.float64)
    """

    host_sync = False

    def __init__(
        self,
        lr: float = 10.0,
        momentum: float = 0.5,
        n_iter: int = 20,
        lambda_: float = 0.3,
        pref_vector: Sequence[float] | torch.Tensor | None = None,
        eps: float = 1e-8,
    ) -> None:
        self.lr = check_number("lr", lr, positive=True)
        self.momentum = check_fraction("momentum", momentum, below_one=True)
        self.n_iter = check_int("n_iter", n_iter)
        self.lambda_ = check_number("lambda_", lambda_, nonnegative=True)
        self.pref_vector = check_pref(pref_vector)
        self.eps = check_number("eps", eps, nonnegative=True)
        self._w: torch.Tensor | None = None

    def _pref(self, k: int, like: torch.Tensor) -> torch.Tensor:
        if self.pref_vector is None:
            return torch.full((k,), 1.0 / k, dtype=like.dtype, device=like.device)
        if len(self.pref_vector) != k:
            raise ValueError(
                f"SDMGrad has a pref_vector of {len(self.pref_vector)} entries but the Gram "
                f"matrix is {k} x {k}"
            )
        return host_values(self.pref_vector, like, like.dtype)

    def weigh(self, gram: torch.Tensor, losses: torch.Tensor | None) -> torch.Tensor:
        k = gram.shape[0]
        a = gram.detach().to(torch.float64)
        p = self._pref(k, a)
        w0 = self._w
        if w0 is None or w0.shape[0] != k:
            w0 = torch.full((k,), 1.0 / k, dtype=torch.float64, device=gram.device)
        w0 = w0.to(gram.device)
        scale = a.diagonal().clamp_min(0.0).sqrt().mean() ** 2 + self.eps
        a = a / torch.where(scale > 0, scale, torch.ones_like(scale))
        w, vel = w0, torch.zeros_like(w0)
        for it in range(self.n_iter):
            grad = a @ (w + self.lambda_ * p)
            vel = grad if it == 0 else self.momentum * vel + grad
            w = project_simplex(w - self.lr * vel)
        ok = all_finite(a)
        self._w = torch.where(ok, w, w0)
        out = (w + self.lambda_ * p) / (1.0 + self.lambda_)
        return torch.where(ok, out, torch.full_like(out, float("nan"))).to(gram.dtype)

    def state_dict(self) -> dict[str, Any]:
        """The inner weights $w$ (``None`` before the first step)."""
        return {"w": None if self._w is None else clone_state(self._w)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        w = state.get("w", 0) if isinstance(state, dict) else 0
        if w is not None and not isinstance(w, torch.Tensor):
            raise ValueError(f"SDMGrad state must hold 'w' (a tensor or None), got {state!r}")
        self._w = None if w is None else w.detach().clone()

    def __repr__(self) -> str:
        pref = None if self.pref_vector is None else list(self.pref_vector)
        return (
            f"SDMGrad(lr={self.lr:g}, momentum={self.momentum:g}, n_iter={self.n_iter}, "
            f"lambda_={self.lambda_:g}, pref_vector={pref!r}, eps={self.eps:g})"
        )

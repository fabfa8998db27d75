r"""Nash-MTL: the Nash bargaining solution between the losses, $G \alpha = 1 / \alpha$.

Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022 (Section 3, Theorem 3.1
and Algorithm 1). See ``docs/weightings.md``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .._checks import check_number
from ._base import Weighting
from ._qp import psd_part
from ._util import check_int, from_host, nan_weights, to_host

__all__ = ["NashMTL"]


class NashMTL(Weighting):
    r"""Multi-task learning as a bargaining game (Nash-MTL; Navon et al. 2022).

    The update $d = J^\top \alpha$ is the Nash bargaining solution in the ball, characterized
    by the paper's Theorem 3.1 as the positive solution of

    $$
    G \alpha = 1 / \alpha \quad \text{(element-wise)},
    $$

    so that $\alpha_i \, g_i^\top d = 1$ for every loss. It is the minimizer of the strictly
    convex $f(\alpha) = \alpha^\top G \alpha / 2 - \sum_i \log \alpha_i$, found here by
    Newton's method with a backtracking line search, in float64 on the host, on
    $G / \lVert G \rVert_F$ (as the paper's code normalizes) with a ridge of ``reg_eps`` that
    keeps $f$ bounded below when the gradients are linearly dependent (e.g. two opposed
    gradients, where no solution exists); the iterations are warm-started from the previous
    step's solution (the paper solves a sequence of convex approximations with a cone solver
    instead). As in the paper's code, the weights are then scaled down so that
    $\lVert d \rVert \le m$, $m$ = ``max_norm`` (``max_norm=0`` disables this; at the exact
    solution $\lVert d \rVert = \sqrt{k}$), and they are recomputed only every
    ``update_weights_every`` steps (reused in between). A non-finite $G$ gives NaN weights
    and counts as no step.

    Unlike the other built-ins, the weights scale as $1 / \sqrt{s}$ when $G$ is scaled by
    $s$: the update $J^\top \alpha$ does not depend on the gradients' overall scale.

    When to use it: several losses of very different gradient magnitudes, where each
    loss should get a proportionally fair share of the descent.

    Host round trip: yes (Newton iterations on the host).

    Args:
        max_norm: Largest norm of the update $J^\top \alpha$ (0: no limit).
        update_weights_every: Recompute the weights every this many calls.
        reg_eps: Ridge on $G / \lVert G \rVert_F$ ($\ge 0$).
        max_iter: Newton iteration cap per solve.

    Example:
        >>> import torch
        >>> from mograd.weightings import NashMTL
        >>> gram = torch.tensor([[4.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
        >>> NashMTL(max_norm=0.0)(gram)
        tensor([0.5000, 1.0000], dtype=torch.float64)
    """

    host_sync = True

    def __init__(
        self,
        max_norm: float = 1.0,
        update_weights_every: int = 1,
        reg_eps: float = 1e-8,
        max_iter: int = 100,
    ) -> None:
        self.max_norm = check_number("max_norm", max_norm, nonnegative=True)
        self.update_weights_every = check_int("update_weights_every", update_weights_every)
        self.reg_eps = check_number("reg_eps", reg_eps, nonnegative=True)
        self.max_iter = check_int("max_iter", max_iter)
        self._step = 0
        self._alpha: np.ndarray | None = None  # normalized solution (warm start)
        self._last: np.ndarray | None = None  # last weights returned

    def weigh(self, gram: torch.Tensor, losses: torch.Tensor | None) -> torch.Tensor:
        k = gram.shape[0]
        g = to_host(gram)
        if g is None:  # NaN weights; the schedule and the warm start stay as they were
            return nan_weights(gram)
        reuse = self._step % self.update_weights_every != 0
        self._step += 1
        if reuse and self._last is not None and self._last.shape[0] == k:
            return from_host(self._last, gram)
        w = self.solve(g)
        self._last = w
        return from_host(w, gram)

    def solve(self, g: np.ndarray) -> np.ndarray:
        """The Nash-MTL weights of a float64 Gram matrix (updates the warm start)."""
        k = g.shape[0]
        g = psd_part(g)  # rounding can leave a dependent G indefinite, f unbounded below
        top = float(np.max(np.abs(g)))
        fro = top * float(np.linalg.norm(g / top)) if top > 0 else 0.0  # no underflow
        if not fro > 0:
            return np.ones(k)
        h = g / fro + self.reg_eps * np.eye(k)
        prev = self._alpha
        x = prev.copy() if prev is not None and prev.shape[0] == k else np.ones(k)
        x = _newton(h, x, self.max_iter)
        self._alpha = x
        alpha: np.ndarray = x / np.sqrt(fro)
        if self.max_norm > 0:
            norm = float(np.sqrt(max(float(alpha @ g @ alpha), 0.0)))
            if norm > self.max_norm:
                alpha = alpha * (self.max_norm / norm)
        return alpha

    def state_dict(self) -> dict[str, Any]:
        """The step counter, the warm start and the last weights (for bit-identical resume)."""
        return {
            "step": self._step,
            "alpha": None if self._alpha is None else self._alpha.tolist(),
            "last": None if self._last is None else self._last.tolist(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        if not isinstance(state, dict) or not {"step", "alpha", "last"} <= set(state):
            raise ValueError(f"NashMTL state must hold 'step', 'alpha' and 'last', got {state!r}")
        self._step = int(state["step"])
        a, last = state["alpha"], state["last"]
        self._alpha = None if a is None else np.asarray(a, dtype=np.float64)
        self._last = None if last is None else np.asarray(last, dtype=np.float64)

    def __repr__(self) -> str:
        return (
            f"NashMTL(max_norm={self.max_norm:g}, update_weights_every="
            f"{self.update_weights_every}, reg_eps={self.reg_eps:g}, max_iter={self.max_iter})"
        )


def _newton(h: np.ndarray, x: np.ndarray, max_iter: int) -> np.ndarray:
    r"""Minimize $x^\top h x / 2 - \sum_i \log x_i$ over $x > 0$ ($h$ positive definite)."""

    def f(y: np.ndarray) -> float:
        return 0.5 * float(y @ h @ y) - float(np.sum(np.log(y)))

    fx = f(x)
    for _ in range(max_iter):
        grad = h @ x - 1.0 / x
        if np.max(np.abs(grad * x)) <= 1e-13:  # relative: (h x)_i x_i = 1 up to 1e-13
            break
        step = np.linalg.solve(h + np.diag(1.0 / (x * x)), -grad)
        dec = -float(grad @ step)  # Newton decrement squared
        t = 1.0
        while np.any(x + t * step <= 0):
            t *= 0.5
        if dec < 0.01:
            # f is self-concordant: with a Newton decrement below 1/4 the pure Newton step
            # converges quadratically (no line search, which rounding would stall here)
            x = x + t * step
            fx = f(x)
            continue
        while t > 1e-12:
            y = x + t * step
            fy = f(y)
            if fy <= fx - 0.25 * t * dec:
                break
            t *= 0.5
        else:
            break
        x, fx = y, fy
    return x

"""PCD: follow the primary gradient while every secondary loss gets a guaranteed share.

Varam et al., "Not All Objectives Are Born Equal: Priority-Constrained Descent for
Hierarchical Multi-Objective Optimization", TMLR 2026 (the QP of Section 3). See
``docs/weightings.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .._checks import check_number
from ._base import Weighting
from ._dual_set import dual_active_set, gram_factor
from ._qp import psd_part
from ._util import check_fraction, check_vector, from_host, nan_weights, to_host

__all__ = ["PCD"]


class PCD(Weighting):
    r"""Priority-constrained descent (PCD; Varam et al. 2026).

    Loss 0 is the primary objective, losses $1, \dots, k-1$ the secondary ones. With the
    normalized gradients $\tilde g_i = s_i g_i$, $s_i = 1 / \sqrt{\hat v_i + \epsilon}$
    ($\epsilon$ = ``eps``) and $\hat v_i$ the bias-corrected moving average (decay $\beta$)
    of $\lVert g_i \rVert^2$ over the steps, PCD solves

    $$
    \tilde d = \arg\min_d \lVert d - \tilde g_0 \rVert^2 / 2 \quad \text{s.t.} \quad
    \tilde g_j^\top d \ge \tau_j \lVert \tilde g_j \rVert^2 \quad (j \ge 1),
    $$

    whose solution is $\tilde d = \tilde g_0 + \sum_j \mu_j \tilde g_j$ with the multipliers
    $\mu \ge 0$ (found exactly from the Gram matrix by the dual active-set method of Goldfarb
    & Idnani), and returns $\tilde d$ rescaled to $\lVert g_0 \rVert$:
    $w = s \odot (1, \mu) \, \lVert g_0 \rVert / \lVert \tilde d \rVert$. The output is
    zero when $g_0 = 0$ or $\tilde d = 0$ (up to rounding), and $e_0$ (the primary gradient)
    when the constraints are infeasible (e.g. two opposed secondary gradients). $\epsilon$ is
    absolute, as in the paper and TorchJD: with gradients far below $\sqrt{\epsilon}$ it, not
    $\hat v$, sets the normalization (``eps=0`` makes PCD scale-free).

    The moving average and the step count are the state (:meth:`state_dict`); a change of
    $k$ restarts them. A non-finite $G$ gives NaN weights and leaves them unchanged.

    When to use it: one main loss and auxiliary losses that must each make some progress;
    PCD is not symmetric in the losses (the first one passed is the primary).

    Host round trip: yes (the QP on the host in float64).

    Args:
        tau: The guaranteed fraction $\tau$, in $[0, 1]$: one value, or one per secondary
            loss.
        beta: Decay $\beta$ of the moving average, in $[0, 1)$.
        eps: $\epsilon \ge 0$, added to the moving average.

    Example:
        >>> import torch
        >>> from mograd.weightings import PCD
        >>> J = torch.tensor([[1.0, 0.0], [-0.5, 1.0]], dtype=torch.float64)
        >>> w = PCD(tau=0.1, eps=0.0)(J @ J.T)
        >>> d = J.T @ w
        >>> bool(d @ J[1] > 0), bool(torch.isclose(d.norm(), J[0].norm()))
        (True, True)
    """

    host_sync = True

    def __init__(
        self, tau: float | Sequence[float] = 0.02, beta: float = 0.999, eps: float = 1e-8
    ) -> None:
        if isinstance(tau, (int, float)) and not isinstance(tau, bool):
            self.tau: float | tuple[float, ...] = check_fraction("tau", tau)
        else:
            taus = check_vector("tau", tau, allow_zero=True)
            for i, t in enumerate(taus):
                check_fraction(f"tau[{i}]", t)
            self.tau = taus
        self.beta = check_fraction("beta", beta, below_one=True)
        self.eps = check_number("eps", eps, nonnegative=True)
        self._ema: np.ndarray | None = None
        self._steps = 0

    def _taus(self, k: int) -> np.ndarray:
        if isinstance(self.tau, tuple):
            if len(self.tau) != k - 1:
                raise ValueError(
                    f"PCD has {len(self.tau)} values of tau but {k - 1} secondary losses"
                )
            return np.asarray(self.tau, dtype=np.float64)
        return np.full(k - 1, self.tau)

    def weigh(self, gram: torch.Tensor, losses: torch.Tensor | None) -> torch.Tensor:
        k = gram.shape[0]
        taus = self._taus(k)
        g = to_host(gram)
        if g is None:
            return nan_weights(gram)
        sq = np.diag(g).copy()
        if self._ema is None or self._ema.shape[0] != k:
            self._ema, self._steps = np.zeros(k), 0
        self._ema = self.beta * self._ema + (1.0 - self.beta) * sq
        self._steps += 1
        denom = np.sqrt(self._ema / (1.0 - self.beta**self._steps) + self.eps)
        scales = np.where(denom > 0, 1.0 / np.where(denom > 0, denom, 1.0), 0.0)
        if not sq[0] > 0:
            return from_host(np.zeros(k), gram)
        gn = psd_part(g) * np.outer(scales, scales)
        return from_host(self._solve(gn, taus, sq[0], gram.dtype) * scales, gram)

    def _solve(
        self, gn: np.ndarray, taus: np.ndarray, sq0: float, dtype: torch.dtype
    ) -> np.ndarray:
        k = gn.shape[0]
        e0 = np.zeros(k)
        e0[0] = 1.0
        b = np.concatenate([[0.0], taus * np.diag(gn)[1:]])
        cons = np.arange(k) > 0
        precision = 10.0 * torch.finfo(dtype).eps
        w, feasible = dual_active_set(
            gram_factor(gn), e0, b, cons, dependence_tol=max(1e-9, precision), tol=1e-9
        )
        if not feasible:
            w = e0
        w = np.maximum(w, 0.0)
        norm2 = float(w @ gn @ w)
        magnitude = float(np.abs(w) @ np.sqrt(np.clip(np.diag(gn), 0.0, None))) ** 2
        if not norm2 > precision * magnitude:
            return np.zeros(k)
        out: np.ndarray = w * np.sqrt(sq0 / norm2)
        return out

    def state_dict(self) -> dict[str, Any]:
        """The moving average of the squared norms (``None`` before the first step) and the
        step count."""
        ema = None if self._ema is None else torch.from_numpy(self._ema.copy())
        return {"sq_norm_ema": ema, "steps": self._steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        if not isinstance(state, dict) or not {"sq_norm_ema", "steps"} <= set(state):
            raise ValueError(f"PCD state must hold 'sq_norm_ema' and 'steps', got {state!r}")
        ema = state["sq_norm_ema"]
        if ema is not None and not isinstance(ema, torch.Tensor):
            raise ValueError(f"PCD state['sq_norm_ema'] must be a tensor or None, got {ema!r}")
        self._ema = None if ema is None else ema.detach().cpu().double().numpy().copy()
        self._steps = int(state["steps"])

    def __repr__(self) -> str:
        tau = list(self.tau) if isinstance(self.tau, tuple) else self.tau
        return f"PCD(tau={tau!r}, beta={self.beta:g}, eps={self.eps:g})"

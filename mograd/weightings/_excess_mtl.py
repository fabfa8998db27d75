"""ExcessMTL: exponentiated-gradient weights driven by each loss's estimated excess risk.

He, Zhou, Zhang, Sun, Zhao, "Robust Multi-Task Learning with Excess Risks", ICML 2024
(eqs. 6-9 and Appendix C.1). See ``docs/weightings.md``.
"""

from __future__ import annotations

from typing import Any

import torch

from .._checks import check_number
from ._base import Weighting
from ._util import all_finite, check_int, clone_state, load_tensor_state

__all__ = ["ExcessMTL"]

_KEYS = ("weights", "sq_sum", "baseline", "has_baseline", "warmup_sum")


class ExcessMTL(Weighting):
    r"""Robust multi-task learning with excess risks (ExcessMTL; He et al. 2024).

    The excess risk of loss $i$ is estimated by a second-order expansion (eq. 6),
    $E_i = g_i^\top H_i^{-1} g_i$, with the AdaGrad-style curvature $H_i$ built from the
    accumulated squared gradients (eq. 7), and the weights take an exponentiated-gradient
    step (eq. 9), $w \leftarrow \operatorname{softmax}(\log w + \eta E / E_0)$, starting from
    $w_i = 1/k$; $E_0$ is the baseline of the scale processing (Section 3.2): the average over
    the ``n_warmup_steps`` warm-up steps (uniform weights meanwhile), or, with no warm-up, the
    first step's $E$ (then used unscaled on that step, as the official implementation and
    TorchJD do).

    Gram form: the paper's $H_i$ is diagonal over the parameters, which the Gram matrix
    cannot see; here it is isotropic,
    $H_i = \sqrt{\textstyle\sum_t \lVert g_i(t) \rVert^2 + 10^{-7}} \, I$, so that
    $E_i = G_{ii} / \sqrt{S_i + 10^{-7}}$ with $S_i$ the running sum of $G_{ii}$. The two
    coincide when each gradient lies along one fixed coordinate (the oracle test); in
    general the isotropic $H$ weighs the tasks by the ratio of their current to their
    accumulated gradient norms.

    The state (weights, sums, baseline) is in :meth:`state_dict`, in float64 on the Gram
    matrix's device; a change of $k$ restarts it. A non-finite $G$ gives NaN weights and
    leaves the statistics unchanged (it still counts as a warm-up step).

    When to use it: tasks with different noise levels, where the noisiest should not
    dominate (robustness to label noise).

    Host round trip: no (tensor operations; the warm-up count is a Python int).

    Args:
        robust_step_size: $\eta > 0$.
        n_warmup_steps: Uniform-weight steps collecting the baseline ($\ge 0$).

    Example:
        >>> import torch
        >>> from mograd.weightings import ExcessMTL
        >>> w = ExcessMTL()
        >>> w(torch.diag(torch.tensor([1.0, 4.0], dtype=torch.float64)))
        tensor([0.2689, 0.7311], dtype=torch.float64)
    """

    host_sync = False

    def __init__(self, robust_step_size: float = 1.0, n_warmup_steps: int = 0) -> None:
        self.robust_step_size = check_number("robust_step_size", robust_step_size, positive=True)
        self.n_warmup_steps = check_int("n_warmup_steps", n_warmup_steps, minimum=0)
        self._state: dict[str, torch.Tensor] | None = None
        self._steps = 0

    def _ensure(self, gram: torch.Tensor) -> dict[str, torch.Tensor]:
        k = gram.shape[0]
        st = self._state
        if st is None or st["weights"].shape[0] != k:
            z = torch.zeros(k, dtype=torch.float64, device=gram.device)
            st = {
                "weights": torch.full_like(z, 1.0 / k),
                "sq_sum": z,
                "baseline": z,
                "has_baseline": torch.zeros((), dtype=torch.bool, device=gram.device),
                "warmup_sum": z,
            }
            self._steps = 0
        return {key: v.to(gram.device) for key, v in st.items()}

    def weigh(self, gram: torch.Tensor, losses: torch.Tensor | None) -> torch.Tensor:
        st = self._ensure(gram)
        ok = all_finite(gram)
        sq = gram.detach().diagonal().to(torch.float64)
        sq_sum = torch.where(ok, st["sq_sum"] + sq, st["sq_sum"])
        excess = sq / torch.sqrt(sq_sum + 1e-7)
        self._steps += 1
        if self._steps <= self.n_warmup_steps:
            warm = torch.where(ok, st["warmup_sum"] + excess, st["warmup_sum"])
            self._state = {**st, "sq_sum": sq_sum, "warmup_sum": warm}
            return (st["weights"] + (gram.detach() * 0).sum()).to(gram.dtype)
        has = st["has_baseline"]
        if self.n_warmup_steps > 0:
            first = st["warmup_sum"] / self.n_warmup_steps
            scaled_first = excess / (first + 1e-7)
        else:
            first, scaled_first = excess, excess  # the first step's E, used unscaled
        base = torch.where(has, st["baseline"], first)
        scaled = torch.where(has, excess / (st["baseline"] + 1e-7), scaled_first)
        new_w = torch.softmax(torch.log(st["weights"]) + self.robust_step_size * scaled, dim=0)
        self._state = {
            **st,
            "sq_sum": sq_sum,
            "baseline": torch.where(ok, base, st["baseline"]),
            "has_baseline": has | ok,
            "weights": torch.where(ok, new_w, st["weights"]),
        }
        return torch.where(ok, new_w, torch.full_like(new_w, float("nan"))).to(gram.dtype)

    def state_dict(self) -> dict[str, Any]:
        """The weights, sums, baseline and step count (``None`` before the first step)."""
        st = None if self._state is None else clone_state(self._state)
        return {"state": st, "steps": self._steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        if not isinstance(state, dict) or not {"state", "steps"} <= set(state):
            raise ValueError(f"ExcessMTL state must hold 'state' and 'steps', got {state!r}")
        inner = state["state"]
        loaded = None if inner is None else load_tensor_state("ExcessMTL", inner, _KEYS)
        self._state = None if loaded is None else {k: v for k, v in loaded.items() if v is not None}
        self._steps = int(state["steps"])

    def __repr__(self) -> str:
        return (
            f"ExcessMTL(robust_step_size={self.robust_step_size:g}, "
            f"n_warmup_steps={self.n_warmup_steps})"
        )

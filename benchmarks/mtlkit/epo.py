"""An EPO-style preference-ray weighting: first-order loss changes that steer onto the ray.

Inspired by EPO (Mahapatra & Rajan, "Multi-Task Learning with User Preferences: Gradient
Descent with Controlled Ascent in Pareto Optimization", ICML 2020), whose target is the
*exact Pareto optimal* point where ``r_1 L_1 = r_2 L_2 = ...`` for the preference ray ``r``.
This is a simpler, Gram-matrix-only formulation (not EPO's linear program):

1. relative weighted losses ``a_i = r_i L_i / sum_j r_j L_j``; the loss vector is on the ray
   iff ``a = 1/k``;
2. the wanted first-order decrease of each loss,
   ``c_i = (1 / r_i) (1 + gain * k * (a_i - 1/k))``: ``1/r_i`` keeps ``r_i L_i`` equal
   while descending, the second term decreases the losses that are too high relative to the
   ray faster (and, far from the ray, lets the others rise: a negative ``c_i``);
3. since the step ``-sum_j w_j g_j`` changes loss ``i`` by ``-(G w)_i`` to first order,
   ``w = (G + eps I)^-1 c`` with ``eps = 1e-3 trace(G) / k`` (conditioning); negative
   weights are clipped to 0 (the update stays a non-negative combination of the gradients)
   and the weights are normalized to sum 1 (``r`` itself when all are clipped).

Tensor operations only (no host synchronization). Used by ``benchmarks/multi_fashion.py``
as the ``EPO-style-pref`` front; see ``docs/multi_fashion.md``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mograd.weightings import Weighting

__all__ = ["RayBalance"]


class RayBalance(Weighting):
    """EPO-style weights that move the loss vector onto the preference ray and down it.

    Args:
        pref_vector: Positive preference ray ``r`` (any scale; normalized to sum 1).
        gain: How strongly an off-ray loss vector is pulled back (``>= 0``; 1 keeps the
            ratio of the losses, larger values converge onto the ray). Near the front, where
            the losses cannot all decrease, the point settles where the pull balances the
            descent term, ``O(1 / gain)`` off the ray: on two quadratics with Adam the angle
            to the ray is about 6 degrees with gain 3, 1.5 with 10 and 0.6 with 30.

    Example:
        >>> import torch
        >>> w = RayBalance([0.5, 0.5])(torch.eye(2), torch.tensor([3.0, 1.0]))
        >>> w.tolist()  # loss 1 is too high for the ray: all weight on it
        [1.0, 0.0]
        >>> w = RayBalance([0.5, 0.5])(torch.eye(2), torch.tensor([1.0, 1.0]))
        >>> w.tolist()  # on the ray: descend along it
        [0.5, 0.5]
    """

    host_sync = False
    needs_losses = True

    def __init__(self, pref_vector: Sequence[float] | torch.Tensor, gain: float = 10.0) -> None:
        r = torch.as_tensor(pref_vector, dtype=torch.float64).detach().cpu().reshape(-1)
        if r.numel() < 1 or not bool(torch.isfinite(r).all()) or bool((r <= 0).any()):
            raise ValueError(f"pref_vector must be finite and positive, got {r.tolist()}")
        if not gain >= 0:
            raise ValueError(f"gain must be >= 0, got {gain!r}")
        self.pref = r / r.sum()
        self.gain = float(gain)

    def weigh(self, gram: torch.Tensor, losses: torch.Tensor | None) -> torch.Tensor:
        assert losses is not None
        k = gram.shape[0]
        if k != self.pref.numel():
            raise ValueError(
                f"pref_vector has {self.pref.numel()} entries, the Gram matrix is {k}x{k}"
            )
        r = self.pref.to(device=gram.device, dtype=gram.dtype)
        rl = r * losses.to(gram.dtype).clamp_min(0)
        a = rl / rl.sum().clamp_min(torch.finfo(gram.dtype).tiny)
        c = (1.0 + self.gain * k * (a - 1.0 / k)) / r
        eps = 1e-3 * torch.diagonal(gram).sum() / k + torch.finfo(gram.dtype).tiny
        eye = torch.eye(k, dtype=gram.dtype, device=gram.device)
        w = torch.linalg.solve(gram + eps * eye, c).clamp_min(0)
        s = w.sum()
        return torch.where(s > 0, w / s.clamp_min(torch.finfo(gram.dtype).tiny), r)

    def __repr__(self) -> str:
        pref = [round(v, 4) for v in self.pref.tolist()]
        return f"RayBalance(pref_vector={pref}, gain={self.gain})"

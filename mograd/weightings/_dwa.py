"""DWA: dynamic weight average, weights from how fast each loss decreased recently.

Liu, Johns, Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019 (eq. 7).
See ``docs/weightings.md``.
"""

from __future__ import annotations

from typing import Any

import torch

from .._checks import check_number
from ._base import LossWeighting
from ._util import all_finite, check_int, clone_state, nan_guard

__all__ = ["DWA"]


class DWA(LossWeighting):
    r"""Dynamic weight average (DWA; Liu et al. 2019), a loss-level weighting.

    With $\bar L_i(t)$ the average of loss $i$ over epoch $t$, the weights during epoch
    $t$ are

    $$
    c_i = \frac{k \exp(r_i / T)}{\sum_j \exp(r_j / T)}, \qquad
    r_i = \frac{\bar L_i(t-1)}{\bar L_i(t-2)},
    $$

    the relative descending rates of the two previous epochs ($c = \mathbf{1}$ during the
    first two epochs). Each call adds the loss values to the current epoch's sums; an epoch ends
    when :meth:`end_epoch` is called (once per epoch, after its last step) or, with
    ``period``, automatically every ``period`` calls (``period=1``: per-step rates).

    The sums, counts and the two averages are the state (:meth:`state_dict`); a change of
    $k$ restarts it. Non-finite losses give NaN weights and are left out of the sums
    (they still count as a call for ``period``).

    When to use it: a cheap adaptive baseline that slows down the losses that fall fastest;
    the losses should keep a constant sign.

    Cost: one backward pass (``needs_gram = False``). Host round trip: no.

    Args:
        temperature: $T > 0$ (the paper uses 2; larger is more uniform).
        period: Calls per epoch for automatic epochs, or ``None`` to call
            :meth:`end_epoch` yourself.

    Example:
        >>> import torch
        >>> from mograd.weightings import DWA
        >>> dwa = DWA(period=1)
        >>> for losses in ([1.0, 1.0], [0.5, 1.0]):
        ...     _ = dwa(None, torch.tensor(losses))
        >>> dwa(None, torch.tensor([0.5, 1.0]))  # loss 0 halved: it gets less weight
        tensor([0.8756, 1.1244])
    """

    def __init__(self, temperature: float = 2.0, period: int | None = None) -> None:
        self.temperature = check_number("temperature", temperature, positive=True)
        self.period = None if period is None else check_int("period", period)
        self._sums: torch.Tensor | None = None
        self._count: torch.Tensor | None = None
        self._history: list[torch.Tensor] = []
        self._calls = 0

    def weigh_losses(self, losses: torch.Tensor) -> torch.Tensor:
        k = losses.shape[0]
        if self._sums is None or self._count is None or self._sums.shape[0] != k:
            self._sums, self._count = torch.zeros_like(losses), torch.zeros_like(losses[0])
            self._history, self._calls = [], 0
        hist = [h.to(losses.device) for h in self._history]
        if len(hist) == 2:
            c = k * torch.softmax(hist[1] / hist[0] / self.temperature, dim=0)
        else:
            c = torch.ones_like(losses)
        ok = all_finite(losses)
        sums, count = self._sums.to(losses.device), self._count.to(losses.device)
        self._sums = torch.where(ok, sums + losses, sums)
        self._count = count + ok.to(count.dtype)
        self._calls += 1
        if self.period is not None and self._calls % self.period == 0:
            self.end_epoch()
        return nan_guard(c, losses)

    def end_epoch(self) -> None:
        """Close the current epoch: its average losses become the newest of the two kept."""
        if self._sums is None or self._count is None or self._calls == 0:
            return
        last = self._history[-1] if self._history else torch.ones_like(self._sums)
        avg = self._sums / self._count.clamp_min(1.0)
        avg = torch.where(self._count > 0, avg, last.to(avg.device))  # no finite batch
        self._history = [*self._history, avg][-2:]
        self._sums, self._count = torch.zeros_like(self._sums), torch.zeros_like(self._count)
        self._calls = 0

    def state_dict(self) -> dict[str, Any]:
        """The current sums and count, the kept averages and the calls of this epoch."""
        return {
            "sums": clone_state(self._sums),
            "count": clone_state(self._count),
            "history": clone_state(self._history),
            "calls": self._calls,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        keys = {"sums", "count", "history", "calls"}
        if not isinstance(state, dict) or not keys <= set(state):
            raise ValueError(f"DWA state must hold {sorted(keys)}, got {state!r}")
        hist = state["history"]
        if not isinstance(hist, list) or not all(isinstance(h, torch.Tensor) for h in hist):
            raise ValueError(f"DWA state['history'] must be a list of tensors, got {hist!r}")
        self._sums, self._count = clone_state(state["sums"]), clone_state(state["count"])
        self._history = clone_state(hist)
        self._calls = int(state["calls"])

    def __repr__(self) -> str:
        return f"DWA(temperature={self.temperature:g}, period={self.period!r})"

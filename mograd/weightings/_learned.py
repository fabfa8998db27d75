"""What the loss weightings with learned parameters share: the parameters, their Adam state,
checkpointing and the non-finite rule (UW, IMTL-L, FAMO, GradNorm, IMTL)."""

from __future__ import annotations

from typing import Any

import torch

from .._checks import check_number
from ._adam import ADAM_KEYS, adam_init, adam_step
from ._util import clone_state, load_tensor_state

__all__ = ["Learned"]


class Learned:
    """$k$ learned parameters trained by :func:`~mograd.weightings._adam.adam_step`.

    The parameters live in float64 on the device of the first call (moved along if the
    device changes, e.g. after loading a checkpoint on the host), are created at ``init``
    on the first call (and again when $k$ changes), and are the whole state, with Adam's
    moments and step count.
    """

    def __init__(self, lr: float, init: float = 0.0, weight_decay: float = 0.0) -> None:
        self.lr = check_number("lr", lr, nonnegative=True)
        self.init = check_number("init", init, positive=False)
        self.weight_decay = check_number("weight_decay", weight_decay, nonnegative=True)
        self._adam: dict[str, torch.Tensor] | None = None

    def params(self, k: int, device: torch.device) -> torch.Tensor:
        """The current parameters (created at ``init`` if there are none for this $k$)."""
        if self._adam is None or self._adam["param"].shape[0] != k:
            self._adam = adam_init(torch.full((k,), self.init, dtype=torch.float64, device=device))
        elif self._adam["param"].device != device:
            self._adam = {key: v.to(device) for key, v in self._adam.items()}
        return self._adam["param"]

    def learn(self, grad: torch.Tensor, ok: torch.Tensor) -> None:
        """One Adam step with ``grad``; nothing changes where ``ok`` is false."""
        assert self._adam is not None
        self._adam = adam_step(self._adam, grad, ok, lr=self.lr, weight_decay=self.weight_decay)

    def _snapshot(self) -> object:
        # adam_step returns new tensors and every state attribute of the subclasses (UW,
        # IMTL-L, FAMO, GradNorm, IMTL) is reassigned, never modified in place: the
        # attributes themselves undo a rejected step, with no copy of a tensor.
        return dict(vars(self))

    def _restore(self, saved: object) -> None:
        assert isinstance(saved, dict)
        vars(self).update(saved)

    def state_dict(self) -> dict[str, Any]:
        """The parameters and Adam's state (``None`` before the first step)."""
        return {"adam": None if self._adam is None else clone_state(self._adam)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        name = type(self).__name__
        if not isinstance(state, dict) or "adam" not in state:
            raise ValueError(f"{name} state must hold 'adam', got {state!r}")
        if state["adam"] is None:
            self._adam = None
            return
        loaded = load_tensor_state(name, state["adam"], ADAM_KEYS)
        if any(v is None for v in loaded.values()):
            raise ValueError(f"{name} state['adam'] must hold tensors {list(ADAM_KEYS)}")
        self._adam = {k: v for k, v in loaded.items() if v is not None}

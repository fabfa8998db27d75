"""The ``nn.Linear`` units: the weight gradient of loss ``i`` is ``D_i^T A`` (``A``: the
layer's inputs, ``D_i``: the gradients at its outputs, the rows of every call stacked),
the bias gradient the row sum of ``D_i``.

The update ``sum_i c_i grad L_i`` of a weight is ``(sum_i c_i D_i)^T A``: one product of a
layer's size with the records, and no weight gradient in any backward pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .folding import abs_max, pow2
from .records import Call
from .units import Grads, LossGrads, Rows, Spec

__all__ = ["LinearBias", "LinearWeight"]


class LinearBias(Rows):
    """``nn.Linear`` bias (all calls of it): the per-loss gradient is the row sum of the
    output gradients; the update is ``c @ buf``."""

    kind = "linear_bias"

    def __init__(self, bias: torch.Tensor, spec: Spec, calls: list[Call], n_gram: int) -> None:
        super().__init__([bias], spec, n_gram)
        self.calls = calls

    def needs(self) -> tuple[list[Call], list[torch.Tensor]]:
        return list(self.calls), []

    def take(self, i: int, grads: LossGrads) -> None:
        ds = [grads.first(c) for c in self.calls]
        sums = [d.reshape(-1, d.shape[-1]).sum(0) for d in ds if d is not None]
        if sums:
            self.write(i, [torch.stack(sums).sum(0) if len(sums) > 1 else sums[0]])

    def release(self) -> None:
        super().release()
        self.calls = []


class LinearWeight(Rows):
    """``nn.Linear`` weight (all calls of it): ``grad = D^T A`` with the rows of every call
    stacked. Handled one of three ways, chosen by operation count (``label``):

    * ``trick``: ``G`` from ``<D_i, (A A^T) D_j>`` (no weight-sized tensor; only in ``G``
      and not under ``torch.distributed``), update ``(sum_i c_i D_i)^T A``;
    * ``rows``: each ``D_i^T A`` formed as its pass arrives (fewer inputs than rows, so
      they are smaller than the ``D_i``), ``G`` from them, update ``c @ buf``;
    * ``outputs``: the ``D_i`` kept, the ``D_i^T A`` formed for ``G`` by one batched
      product and dropped, update ``(sum_i c_i D_i)^T A``.

    In ``trick`` and ``outputs`` each pass's ``D_i`` is copied into one ``(k, rows,
    out_features)`` buffer (autograd's copy is freed at once), divided by a power of two
    before any product (exact), so that no product overflows for finite gradients.
    """

    kind = "linear_weight"

    def __init__(
        self, weight: torch.Tensor, spec: Spec, calls: list[Call], *, dist: bool, n_gram: int
    ) -> None:
        super().__init__([weight], spec, n_gram)
        self.calls = calls
        out_f, in_f = weight.shape
        self.call_rows = [int(c.x.numel()) // in_f for c in calls if c.x is not None]
        rows = self.rows = sum(self.call_rows)
        k = spec.k
        trick = k * rows * rows * out_f + rows * rows * in_f + k * k * rows * out_f
        form = k * rows * out_f * in_f + k * k * out_f * in_f
        self.trick = n_gram > 0 and (not dist) and trick < form
        # Forming the weight gradient per loss right away keeps less than the output
        # gradients when the layer has fewer inputs than rows.
        self.keep_rows = not self.trick and in_f < rows
        self.d: torch.Tensor | None = None  # (k, rows, out_f): the D_i (then / sd)
        self.sd: torch.Tensor | None = None
        self.taken = [False] * k

    @property
    def label(self) -> str:
        how = "trick" if self.trick else "rows" if self.keep_rows else "outputs"
        return f"{self.kind}:{how}"

    def needs(self) -> tuple[list[Call], list[torch.Tensor]]:
        return list(self.calls), []

    def take(self, i: int, grads: LossGrads) -> None:
        ds = [grads.first(c) for c in self.calls]
        if all(d is None for d in ds):
            return
        if self.keep_rows:
            self.write(i, [self._grad_of(ds)])
            return
        s = self.spec
        out_f = self.params[0].shape[0]
        if self.d is None:
            self.d = torch.empty((s.k, self.rows, out_f), dtype=s.dtype, device=s.device)
        start = 0
        for n, d in zip(self.call_rows, ds):
            piece = self.d[i, start : start + n]
            if d is None:
                piece.zero_()
            else:
                piece.copy_(d.reshape(n, out_f))
            start += n
        self.taken[i] = True
        self.hits[0] = True

    def _inputs(self) -> list[torch.Tensor]:
        in_f = self.params[0].shape[1]
        return [c.x.reshape(-1, in_f) for c in self.calls]  # type: ignore[union-attr]

    def _grad_of(self, ds: Sequence[torch.Tensor | None]) -> torch.Tensor | None:
        """``sum over calls of D^T A`` for one loss (in the row dtype)."""
        out = None
        out_f = self.params[0].shape[0]
        dtype = self.spec.dtype
        for a, d in zip(self._inputs(), ds):
            if d is None:
                continue
            g = d.reshape(-1, out_f).to(dtype).T @ a.to(dtype)
            out = g if out is None else out + g
        return out

    def _outputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``(k, rows, out_features)`` output gradients divided by a power of two ``sd``
        (exact; rows of losses that missed the layer are zero), and ``sd``."""
        assert self.d is not None
        if self.sd is None:
            for i, taken in enumerate(self.taken):
                if not taken:
                    self.d[i].zero_()
            self.sd = pow2(abs_max(self.d))
            self.d.div_(self.sd)
        return self.d, self.sd

    def block(self) -> torch.Tensor:
        if self.buf is None and not self.keep_rows and self.hits[0]:
            d, sd = self._outputs()
            a = self._stacked_inputs()
            grads = torch.matmul(d.transpose(1, 2), a)  # (k, out_f, in_f)
            self.buf = grads.reshape(self.spec.k, -1).mul_(sd)
        return self.ensure()

    def gram(self) -> torch.Tensor:
        if not self.trick:
            self.block()
            return super().gram()
        if not self.hits[0]:
            return self.spec.zero_gram()
        a = self._stacked_inputs()
        sa = pow2(abs_max(a))
        a = a / sa
        kern = a @ a.T  # (rows, rows)
        del a
        d, sd = self._outputs()
        kd = torch.matmul(kern, d)
        k = self.spec.k
        g = d.reshape(k, -1) @ kd.reshape(k, -1).T
        del kd
        g = 0.5 * (g + g.T)
        return g.to(torch.float64) * (sa.to(torch.float64) * sd.to(torch.float64)) ** 2

    def folded(self) -> None:
        if not self.keep_rows:
            self.buf = None
            self.scale = None

    def combined(self, c: torch.Tensor) -> Grads:
        if self.keep_rows:
            return super().combined(c)
        if not self.hits[0]:
            return [None]
        d, sd = self._outputs()
        out_f = self.params[0].shape[0]
        summed = (c @ d.reshape(self.spec.k, -1)).mul_(sd)  # (sum_i c_i D_i / sd) sd
        return [summed.view(-1, out_f).T @ self._stacked_inputs()]

    def _stacked_inputs(self) -> torch.Tensor:
        """The ``(rows, in_features)`` inputs of every call, in the row dtype."""
        xs = self._inputs()
        a = xs[0] if len(xs) == 1 else torch.cat(xs)
        return a.to(self.spec.dtype)

    def release(self) -> None:
        super().release()
        self.d = self.sd = None
        self.calls = []  # and the recorded inputs

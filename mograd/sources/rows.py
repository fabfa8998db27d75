"""The default exact source: the k per-loss gradients as rows of one ``(k, P)`` buffer.

One backward pass per loss writes row ``i`` of ``J`` (:func:`mograd.gramian.jacobian_rows`);
``G = J_S J_S^T`` on the shared columns (paper eq. 8) and the update ``c @ J`` come from the
same buffer. Leaves outside the optimizer get small per-leaf blocks that never enter ``G``.
Micro-batches accumulate by summing ``J`` (:meth:`RowsCollected.add_`).
"""

from __future__ import annotations

from typing import Any

import torch

from .. import _distributed as distributed
from ..gramian import accumulate_grad, gram, jacobian_rows
from .base import Collected, Step, Update, all_finite, truly_finite

__all__ = ["RowsCollected", "collect_rows"]


def collect_rows(step: Step) -> RowsCollected:
    """k backward passes into ``J``.

    Raises:
        ValueError: If some loss reaches none of the optimizer's parameters while another
            does (its zero gradient would take all the min-norm weight).
    """
    hits: list[bool] = []
    jac, reached, blocks = jacobian_rows(
        step.losses, step.params, step.extras, step.retain_graph, hits=hits
    )
    if step.params and any(hits) and not all(hits):
        i = hits.index(False)
        raise ValueError(
            f"losses[{i}] does not depend on any parameter held by the optimizer (the "
            "others do): its zero gradient would stop the multi-objective step"
        )
    return RowsCollected(step, jac, reached, blocks)


class RowsCollected(Collected):
    """``J`` (k x P), the per-leaf blocks of leaves outside the optimizer, and which
    parameters some loss reached."""

    accumulates = True

    def __init__(
        self,
        step: Step,
        jac: torch.Tensor,
        reached: list[bool],
        blocks: list[torch.Tensor | None],
    ) -> None:
        super().__init__(step)
        self.jac, self.reached, self.blocks = jac, reached, blocks
        self.extras = list(step.extras)
        self.n_cols = step.shared_numel
        self.dtype = jac.dtype

    def reduce(self, group: Any) -> None:
        # One collective for J (k times the usual gradient traffic), one small one for the
        # loss values and which parameters some rank reached.
        k = self.k
        distributed.mean_(self.jac, group)
        small = torch.cat(
            [
                self.values.to(self.jac.dtype),
                torch.tensor(self.reached, dtype=self.jac.dtype, device=self.jac.device),
            ]
        )
        distributed.sum_(small, group)
        world = distributed.world_size(group)
        self.values = (small[:k] / world).to(self.values.dtype)
        self.reached = [bool(r > 0) for r in small[k:].tolist()]

    def gram(self, exact: bool = False) -> torch.Tensor:
        return gram(self.jac[:, : self.n_cols], exact=exact)

    def finite(self) -> torch.Tensor | None:
        parts = [b.sum() for b in self.blocks if b is not None]
        if self.n_cols < self.jac.shape[1]:
            parts.append(self.jac[:, self.n_cols :].sum())
        return all_finite(parts) if parts else None  # NaN/inf in J_S reach G

    def problem(self) -> str | None:
        if truly_finite([self.jac, *self.blocks]):
            return None
        rows = torch.isfinite(self.jac).all(dim=1).tolist()
        bad = [i for i, ok in enumerate(rows) if not ok]
        if bad:
            return f"non-finite gradient of losses{bad}"
        return "non-finite gradient of a leaf outside the optimizer"

    def prepare(self, coefficients: torch.Tensor) -> Update:
        coeffs = coefficients.to(self.jac.dtype)
        combined = coeffs @ self.jac
        grads: list[torch.Tensor | None] = []
        offset = 0
        for p, hit in zip(self.step.params, self.reached):
            n = p.numel()
            grads.append(combined[offset : offset + n].view_as(p) if hit else None)
            offset += n
        extra = [
            None if b is None else (coeffs.to(b.dtype) @ b).view_as(v)
            for v, b in zip(self.extras, self.blocks)
        ]
        return _RowsUpdate(self.step.params, grads, self.extras, extra)

    def add_(self, other: Collected) -> None:
        assert isinstance(other, RowsCollected)
        self.jac.add_(other.jac)
        self.values = self.values + other.values.to(self.values.dtype)
        self.reached = [a or b for a, b in zip(self.reached, other.reached)]
        known = {id(v): i for i, v in enumerate(self.extras)}
        for leaf, block in zip(other.extras, other.blocks):
            i = known.get(id(leaf))
            if i is None:
                self.extras.append(leaf)
                self.blocks.append(block)
            elif block is not None:
                old = self.blocks[i]
                self.blocks[i] = block if old is None else old + block


class _RowsUpdate(Update):
    def __init__(
        self,
        params: list[torch.Tensor],
        grads: list[torch.Tensor | None],
        extras: list[torch.Tensor],
        extra_grads: list[torch.Tensor | None],
    ) -> None:
        self.params, self.grads = params, grads
        self.extras, self.extra_grads = extras, extra_grads

    def commit(self) -> None:
        casts = [None if g is None else g.to(p.dtype) for g, p in zip(self.grads, self.params)]
        accumulate_grad(self.params, casts, disjoint=True, densify=True)
        accumulate_grad(self.extras, self.extra_grads, densify=True)

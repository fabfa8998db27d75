r"""The default exact source: the k per-loss gradients as rows of one ``(k, P)`` buffer.

One backward pass per loss writes row ``i`` of ``J`` (:func:`mograd.gramian.jacobian_rows`);
$G = J_S J_S^\top$ on the shared columns (paper eq. 8) and the update ``c @ J`` come from the
same buffer. Leaves outside the optimizer get small per-leaf blocks that never enter ``G``.
Micro-batches accumulate by summing ``J`` (:meth:`RowsCollected.add_`).

Under ``torch.distributed`` each row of ``J`` is reduce-scattered (rank r keeps the rank
mean of its column shard), ``G`` is the sum over the ranks of the Gram matrices of their
shards (one all-reduce of k x k numbers: ``G`` splits exactly over columns), each rank
combines its shard and one all-gather assembles the update: about (k + 1) / 2 all-reduce
volumes of P per step instead of k (``docs/distributed.md``). Below
:data:`SCATTER_MIN_COLUMNS` columns, where the number of collectives rather than their size
sets the cost, and on backends without a reduce-scatter of their own
(:data:`ALL_REDUCE_BACKENDS`: gloo), ``J`` is all-reduced whole (one collective).
"""

from __future__ import annotations

from typing import Any

import torch

from .. import _distributed as distributed
from ..gramian import accumulate_grad, gram, jacobian_rows
from .base import Collected, Step, Update, add_rows, finite_sum, truly_finite
from .sharded import ColumnShard

__all__ = ["ALL_REDUCE_BACKENDS", "SCATTER_MIN_COLUMNS", "RowsCollected", "collect_rows"]

SCATTER_MIN_COLUMNS = 1 << 16
"""Columns of ``J`` from which the distributed step reduce-scatters ``J`` and all-gathers the
update ((k + 1) / 2 all-reduce volumes, k + 2 collectives) instead of all-reducing ``J``
(k volumes, 2 collectives)."""

ALL_REDUCE_BACKENDS: frozenset[str] = frozenset({"gloo"})
"""Backends that always all-reduce ``J``: gloo's reduce-scatter clones its input, all-reduces
it whole and copies out the rank's chunk, so that scattering would send more, not less."""


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
        self._shard: ColumnShard | None = None
        self._world = 1

    def reduce(self, group: Any) -> None:
        world = distributed.world_size(group)
        if self._scatters(group, world):
            self._scatter(group, world)
            return
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
        self.values = (small[:k] / world).to(self.values.dtype)
        self.reached = [bool(r > 0) for r in small[k:].tolist()]

    def _scatters(self, group: Any, world: int) -> bool:
        """Reduce-scatter ``J`` (:data:`SCATTER_MIN_COLUMNS`, :data:`ALL_REDUCE_BACKENDS`)."""
        if world == 1 or self.jac.shape[1] < max(SCATTER_MIN_COLUMNS, world):
            return False
        return distributed.backend(group, self.jac.device) not in ALL_REDUCE_BACKENDS

    def _scatter(self, group: Any, world: int) -> None:
        """k reduce-scatters of the rows of ``J`` and one small all-reduce (:class:`ColumnShard`);
        the full ``J`` is dropped."""
        jac, k = self.jac, self.k
        n = jac.shape[1] // world
        rows = torch.empty((k, n), dtype=jac.dtype, device=jac.device)
        for i in range(k):
            distributed.reduce_scatter_mean_(rows[i], jac[i, : world * n], group)
        begin = distributed.rank(group) * n
        shard = ColumnShard(
            rows,
            min(n, max(0, self.n_cols - begin)),
            group,
            rest=jac[:, world * n :].clone(),
            rest_shared=max(0, self.n_cols - world * n),
        )
        self.values, self.reached = shard.agree(self.values, self.reached, self.blocks)
        self.jac, self._shard, self._world = jac[:, :0], shard, world

    def gram(self, exact: bool = False) -> torch.Tensor:
        if self._shard is not None:
            return self._shard.gram(exact)
        return gram(self.jac[:, : self.n_cols], exact=exact)

    def finite(self) -> torch.Tensor | None:
        if self._shard is not None:
            return self._shard.finite
        parts = [b.sum() for b in self.blocks if b is not None]
        if self.n_cols < self.jac.shape[1]:
            parts.append(self.jac[:, self.n_cols :].sum())
        return finite_sum(parts) if parts else None  # NaN/inf in J_S reach G

    def problem(self) -> str | None:
        if self._shard is not None:
            return self._shard.problem()
        if truly_finite([self.jac, *self.blocks]):
            return None
        rows = torch.isfinite(self.jac).all(dim=1).tolist()
        bad = [i for i, ok in enumerate(rows) if not ok]
        if bad:
            return f"non-finite gradient of losses{bad}"
        return "non-finite gradient of a leaf outside the optimizer"

    def prepare(self, coefficients: torch.Tensor) -> Update:
        coeffs = coefficients.to(self.jac.dtype)
        combined = coeffs @ self.jac if self._shard is None else self._gathered(coeffs)
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

    def _gathered(self, coeffs: torch.Tensor) -> torch.Tensor:
        """``c @ J`` on every column: the ranks' combined shards, by one all-gather."""
        assert self._shard is not None
        local, rest = self._shard.combine(coeffs)
        body = self._world * local.numel()
        out = torch.empty(body + rest.numel(), dtype=local.dtype, device=local.device)
        distributed.all_gather_(out[:body], local, self._shard.group)
        out[body:] = rest
        return out

    def add_(self, other: Collected) -> None:
        assert isinstance(other, RowsCollected)
        add_rows(self, other)


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

r"""Column shards of ``J``: the exact step under FSDP2 (``fully_shard``), and the pieces that
the data-parallel rows source shares with it.

$G = J J^\top$ splits exactly over *columns*: $G = \sum_s J_{:, s} J_{:, s}^\top$. So a rank
that holds a column shard of the rank-mean per-loss gradients forms a partial Gram matrix,
one all-reduce of k x k numbers gives every rank the exact ``G`` and the same weights, and
each rank combines its own shard (:class:`ColumnShard`). It does not split over *data*
shards: averaging per-rank Gram matrices adds a covariance term, a different algorithm.

Under FSDP2 the optimizer holds sharded ``DTensor`` parameters (:func:`fsdp_group` detects
them). :func:`collect_sharded` runs one backward pass per loss through FSDP's own
reduce-scatter, so that after pass i every rank holds its shard of loss i's data-averaged
gradient in ``p.grad`` (``to_local()``), copies it into row i of a local ``(k, P / world)``
buffer and clears ``p.grad`` for the next pass; ``.grad`` is restored before the pipeline
runs and the combination is added to the sharded ``.grad`` on commit. Representation mode
and loss-level weightings take one weighted backward pass through FSDP's normal path
(:func:`sharded_backward`), whose reduce-scatter already averages over the ranks.

Example:
    The identity the sharded step rests on, on one process (``docs/distributed.md`` runs
    the sharded step itself under ``torchrun``):

    >>> import torch
    >>> from mograd.gramian import gram
    >>> from mograd.sources.sharded import fsdp_group
    >>> j = torch.randn(3, 10, dtype=torch.float64)  # k = 3 per-loss gradients
    >>> bool(torch.allclose(gram(j), gram(j[:, :4]) + gram(j[:, 4:])))  # two column shards
    True
    >>> fsdp_group([torch.nn.Parameter(torch.zeros(2))]) is None  # not FSDP2: other sources
    True
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist

from .. import _distributed as distributed
from ..gramian import accumulate_grad, gram, gram_dtype, jacobian_rows, row_dtype
from .base import Collected, Step, Update, add_rows, gradient_sums, truly_finite
from .features import FeaturesCollected
from .losses import LossesCollected

__all__ = [
    "ColumnShard",
    "ShardedCollected",
    "ShardedFeatures",
    "ShardedLosses",
    "collect_sharded",
    "collect_sharded_features",
    "fsdp_group",
    "fsdp_modules",
    "is_sharded",
    "sharded_backward",
]


def is_sharded(t: object) -> bool:
    """``t`` is a ``DTensor`` (a parameter sharded by FSDP2)."""
    cls = _dtensor()
    return cls is not None and isinstance(t, cls)


@functools.cache
def _dtensor() -> type | None:
    if not dist.is_available():  # pragma: no cover - torch built without torch.distributed
        return None
    from torch.distributed.tensor import DTensor

    return DTensor


def _bad_rows(t: torch.Tensor) -> torch.Tensor:
    """``(rows,)`` bool: the row holds a NaN or an infinity (row by row, so that the
    transient mask is one row, not the whole buffer)."""
    if t.numel() == 0:
        return torch.zeros(t.shape[0], dtype=torch.bool, device=t.device)
    return torch.stack(
        [torch.isfinite(row).all().logical_not() for row in t.reshape(t.shape[0], -1)]
    )


def _local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a ``DTensor`` (the tensor itself otherwise)."""
    return t.to_local() if is_sharded(t) else t  # type: ignore[attr-defined]


class ColumnShard:
    """This rank's column shard of the rank-mean ``J`` and what the ranks agree on.

    Args:
        rows: ``(k, n)`` this rank's columns of the rank-mean per-loss gradients.
        n_shared: How many leading columns of ``rows`` are shared (enter ``G``).
        group: The process group whose ranks together hold every column once.
        rest: ``(k, r)`` columns that every rank holds, not yet averaged (the data-parallel
            remainder); averaged by :meth:`agree`, entering ``G`` once.
        rest_shared: How many leading columns of ``rest`` are shared.

    :meth:`agree` sums the partial Gram matrices and every flag that the guard reads in ONE
    all-reduce, so all ranks take the same branch (the exact recompute of ``G`` is a
    collective, :meth:`gram`). The precision rule of :func:`mograd.gramian.gram` holds on
    each shard, and the partial matrices are summed in float64.
    """

    def __init__(
        self,
        rows: torch.Tensor,
        n_shared: int,
        group: Any,
        rest: torch.Tensor | None = None,
        rest_shared: int = 0,
    ) -> None:
        self.rows, self.n_shared, self.group = rows, n_shared, group
        self.rest = rows[:, :0] if rest is None else rest
        self.rest_shared = rest_shared
        self.k = int(rows.shape[0])
        self._gram: torch.Tensor | None = None
        self.bad_rows = torch.zeros(self.k)
        self.bad_other = torch.zeros(())
        self.finite = torch.ones((), dtype=torch.bool)

    def _partial(self, exact: bool) -> torch.Tensor:
        return gram(self.rows[:, : self.n_shared], exact=exact)

    def _rest_gram(self, exact: bool) -> torch.Tensor:
        return gram(self.rest[:, : self.rest_shared], exact=exact)

    def agree(
        self,
        values: torch.Tensor,
        reached: Sequence[bool],
        others: Sequence[torch.Tensor | None],
    ) -> tuple[torch.Tensor, list[bool]]:
        """One all-reduce: ``G``, the mean loss values, which parameters some rank reached,
        the remainder's mean, and how many ranks saw a non-finite value (per row; outside
        ``G``: the unshared columns and ``others``, this rank's gradients of leaves outside
        the optimizer). Returns the mean values and the reached flags."""
        k, rows, world = self.k, self.rows, distributed.world_size(self.group)
        acc = gram_dtype(rows.device)
        outside = [_bad_rows(rows[:, self.n_shared :])]
        outside += [_bad_rows(o) for o in others if o is not None]
        small = torch.cat(
            [
                self._partial(exact=False).reshape(-1),
                values.to(acc),
                torch.tensor(list(reached), dtype=acc, device=rows.device),
                self.rest.reshape(-1).to(acc),
                _bad_rows(rows).to(acc),
                torch.cat(outside).any().reshape(1).to(acc),
            ]
        )
        distributed.sum_(small, self.group)
        sizes = [k * k, k, len(reached), self.rest.numel(), k, 1]
        g, v, hit, rest, bad_rows, bad_other = torch.split(small, sizes)
        self.rest = (rest.view_as(self.rest) / world).to(self.rest.dtype)
        self._gram = g.view(k, k) + self._rest_gram(exact=False)
        self.bad_rows = bad_rows + _bad_rows(self.rest).to(acc)
        self.bad_other = bad_other[0]
        self.finite = (self.bad_other == 0) & torch.isfinite(self.rest).all()
        return (v / world).to(values.dtype), [bool(h > 0) for h in hit.tolist()]

    def gram(self, exact: bool = False) -> torch.Tensor:
        """``G`` as agreed; ``exact``: recomputed by the exact rule of
        :func:`mograd.gramian.gram`, one more all-reduce (every rank comes here together:
        the guard's path depends only on agreed values, see :meth:`problem`)."""
        if exact:
            partial = self._partial(exact=True)
            distributed.sum_(partial, self.group)
            self._gram = partial + self._rest_gram(exact=True)
        assert self._gram is not None, "agree() first"
        return self._gram

    def problem(self) -> str | None:
        """What is not finite, from the summed counts: the same answer on every rank."""
        bad = [i for i, c in enumerate(self.bad_rows.tolist()) if c > 0]
        if bad:
            return f"non-finite gradient of losses{bad}"
        if float(self.bad_other) > 0:
            return "non-finite gradient of a leaf outside the Gram matrix (on some rank)"
        return None

    def combine(self, coeffs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``c @ J`` on this rank's columns and on the remainder."""
        return coeffs @ self.rows, coeffs @ self.rest


# ---------------------------------------------------------------------- FSDP2
def fsdp_group(params: Sequence[torch.Tensor]) -> Any | None:
    """The process group of the FSDP2 mesh when the optimizer holds sharded ``DTensor``
    parameters (``fully_shard``), else ``None``.

    Raises:
        ValueError: If only some parameters are ``DTensor``s, or they are not sharded on
            one 1-D mesh (HSDP's 2-D mesh, replicated placements).
    """
    flags = [is_sharded(p) for p in params]
    if not any(flags):
        return None
    from torch.distributed.tensor import Shard

    if not all(flags):
        i = flags.index(False)
        raise ValueError(
            f"the optimizer holds sharded DTensor parameters (FSDP2) and plain ones "
            f"(parameter {i}, shape {tuple(params[i].shape)}): apply fully_shard to every "
            "module whose parameters it holds (e.g. fully_shard(model) on the root)"
        )
    mesh = params[0].device_mesh  # type: ignore[attr-defined]
    for i, p in enumerate(params):
        placements, own = p.placements, p.device_mesh  # type: ignore[attr-defined]
        same = own is mesh or own == mesh
        if not same or mesh.ndim != 1 or not isinstance(placements[0], Shard):
            raise ValueError(
                f"parameter {i} (shape {tuple(p.shape)}) has placements {placements} on a "
                f"{mesh.ndim}-D mesh: mograd's sharded step needs every parameter sharded "
                "(Shard) on one 1-D mesh (fully_shard without HSDP); use a 1-D mesh"
            )
    return mesh.get_group()


def fsdp_modules(modules: Any, params: Sequence[torch.Tensor]) -> list[Any]:
    """The ``modules=`` of the wrapper under FSDP2: ``fully_shard``-ed modules (the root)
    whose parameters stay unsharded across the k backward passes.

    Raises:
        ValueError: If one is not an FSDP2 module, or some parameter of the optimizer is in
            none of them.
    """
    from torch.distributed.fsdp import FSDPModule

    mods = [modules] if isinstance(modules, torch.nn.Module) else list(modules)
    for i, m in enumerate(mods):
        if not isinstance(m, FSDPModule):
            raise ValueError(
                f"modules[{i}] ({type(m).__name__}) is not a fully_shard-ed module: under "
                "FSDP2, modules= is the fully_shard-ed model (its root)"
            )
    inside = {id(p) for m in mods for p in m.parameters()}
    for i, p in enumerate(params):
        if id(p) not in inside:
            raise ValueError(
                f"parameter {i} (shape {tuple(p.shape)}) of the optimizer is in none of "
                "modules=: pass the fully_shard-ed root that holds every parameter"
            )
    return mods


@contextlib.contextmanager
def _unsharded(modules: Sequence[Any], keep: bool) -> Iterator[None]:
    """Parameters stay unsharded after this backward pass (``keep``), then FSDP's default."""
    for m in modules:
        m.set_reshard_after_backward(not keep)
    try:
        yield
    finally:
        if keep:
            for m in modules:
                m.set_reshard_after_backward(True)


def collect_sharded(step: Step, modules: Sequence[Any] = ()) -> ShardedCollected:
    """One backward pass per loss through FSDP2; row i of the local ``J`` holds this rank's
    shard of loss i's data-averaged gradient. ``.grad`` is as before when it returns.

    Raises:
        ValueError: If some loss reaches none of the optimizer's parameters while another
            does.
    """
    params, extras, k = step.params, step.extras, step.k
    with torch.no_grad():
        shapes = [_local(p).shape for p in params]
    numels = [s.numel() for s in shapes]
    jac = torch.zeros((k, sum(numels)), dtype=row_dtype(params[0]), device=params[0].device)
    blocks: list[torch.Tensor | None] = [None] * len(extras)
    reached, hits = [False] * len(params), []
    leaves = [*params, *extras]
    saved = [leaf.grad for leaf in leaves]
    try:
        for leaf in leaves:
            leaf.grad = None
        for i, loss in enumerate(step.losses):
            last = i == k - 1
            with _unsharded(modules, keep=not last):
                torch.autograd.backward(loss, retain_graph=step.retain_graph or not last)
            hits.append(_take_row(jac[i], params, numels, reached))
            for j, leaf in enumerate(extras):
                if leaf.grad is not None:
                    if blocks[j] is None:
                        blocks[j] = leaf.new_zeros((k, leaf.numel()), dtype=row_dtype(leaf))
                    blocks[j][i].copy_(leaf.grad.reshape(-1))  # type: ignore[index]
                    leaf.grad = None
    finally:
        for leaf, g in zip(leaves, saved):
            leaf.grad = g
    if any(hits) and not all(hits):
        i = hits.index(False)
        raise ValueError(
            f"losses[{i}] does not depend on any parameter held by the optimizer (the "
            "others do): its zero gradient would stop the multi-objective step (under "
            "FSDP2, also check that gradient sync is not disabled)"
        )
    return ShardedCollected(step, jac, shapes, reached, blocks)


def _take_row(
    row: torch.Tensor, params: Sequence[torch.Tensor], numels: list[int], reached: list[bool]
) -> bool:
    """Move the sharded ``.grad`` of one pass into ``row``; whether any parameter had one."""
    hit, offset = False, 0
    for j, (p, n) in enumerate(zip(params, numels)):
        if p.grad is not None:
            row[offset : offset + n].copy_(_local(p.grad).reshape(-1))
            p.grad = None
            hit = reached[j] = True
        offset += n
    return hit


class ShardedCollected(Collected):
    """The local ``(k, P / world)`` shard of the rank-mean ``J`` under FSDP2 (exact mode,
    any k, micro-batches accumulate)."""

    accumulates = True

    def __init__(
        self,
        step: Step,
        jac: torch.Tensor,
        shapes: list[torch.Size],
        reached: list[bool],
        blocks: list[torch.Tensor | None],
    ) -> None:
        super().__init__(step)
        self.jac, self.shapes, self.reached, self.blocks = jac, shapes, reached, blocks
        self.extras = list(step.extras)
        self.dtype = jac.dtype
        n_shared = sum(s.numel() for s in shapes[: step.n_shared])
        self.shard = ColumnShard(jac, n_shared, step.group)

    def reduce(self, group: Any) -> None:
        self.shard.group = group
        self.values, self.reached = self.shard.agree(self.values, self.reached, self.blocks)

    def gram(self, exact: bool = False) -> torch.Tensor:
        return self.shard.gram(exact)

    def finite(self) -> torch.Tensor | None:
        return self.shard.finite

    def problem(self) -> str | None:
        return self.shard.problem()

    def prepare(self, coefficients: torch.Tensor) -> Update:
        coeffs = coefficients.to(self.jac.dtype)
        combined, _ = self.shard.combine(coeffs)
        grads: list[torch.Tensor | None] = []
        offset = 0
        for p, shape, hit in zip(self.step.params, self.shapes, self.reached):
            n = shape.numel()
            local = combined[offset : offset + n].view(shape)
            offset += n
            grads.append(_as_sharded(local.to(p.dtype), p) if hit else None)
        extra = [
            None if b is None else (coeffs.to(b.dtype) @ b).view_as(v)
            for v, b in zip(self.extras, self.blocks)
        ]
        return _Add([*self.step.params, *self.extras], [*grads, *extra], n=len(grads))

    def add_(self, other: Any) -> None:
        assert isinstance(other, ShardedCollected)
        add_rows(self, other)


def _as_sharded(local: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """A local shard as a ``DTensor`` laid out like the parameter ``p``."""
    from torch.distributed.tensor import DTensor

    return DTensor.from_local(
        local,
        p.device_mesh,  # type: ignore[attr-defined]
        p.placements,  # type: ignore[attr-defined]
        run_check=False,
        shape=p.shape,
        stride=p.stride(),
    )


class _Add(Update):
    """Gradients formed but not yet added to ``.grad`` (the first ``n`` are sharded
    parameters' and occupy disjoint memory)."""

    def __init__(
        self,
        leaves: list[torch.Tensor],
        grads: list[torch.Tensor | None],
        n: int,
        what: str | None = None,
    ) -> None:
        self.leaves, self.grads, self.n, self.what = leaves, grads, n, what

    def _locals(self) -> list[torch.Tensor | None]:
        return [None if g is None else _local(g) for g in self.grads]

    def sums(self) -> list[torch.Tensor]:
        # none: checked by the source (the exact step's combination of checked rows)
        return [] if self.what is None else gradient_sums(self._locals())

    def problem(self) -> str | None:
        if self.what is None or truly_finite(self._locals()):
            return None
        return self.what

    def commit(self) -> None:
        n = self.n
        accumulate_grad(self.leaves[:n], self.grads[:n], disjoint=True)
        accumulate_grad(self.leaves[n:], self.grads[n:], densify=True)


def sharded_backward(
    step: Step, coefficients: torch.Tensor, what: str = "non-finite gradient"
) -> Update:
    r"""$\sum_i c_i \nabla L_i$ by one backward pass through FSDP's normal path (its
    reduce-scatter averages over the ranks: nothing is averaged a second time); added to
    ``.grad`` only on commit (``what`` names a non-finite result)."""
    ref = step.losses[0]
    total = (coefficients.detach().to(ref.dtype) * torch.stack(step.losses)).sum()
    leaves = [*step.params, *step.extras]
    saved = [leaf.grad for leaf in leaves]
    try:
        for leaf in leaves:
            leaf.grad = None
        torch.autograd.backward(total, retain_graph=step.retain_graph)
        grads = [leaf.grad for leaf in leaves]
    finally:
        for leaf, g in zip(leaves, saved):
            leaf.grad = g
    return _Add(leaves, grads, n=len(step.params), what=what)


def collect_sharded_features(step: Step, feats: list[torch.Tensor]) -> ShardedFeatures:
    """k backward passes down to the features (FSDP unshards what they cross)."""
    jac_z, _, _ = jacobian_rows(step.losses, feats, [], True, "the features")
    return ShardedFeatures(step, jac_z)


class ShardedFeatures(FeaturesCollected):
    """Representation mode under FSDP2: the feature Gram matrix summed over the ranks
    (k^2 numbers), then one weighted backward pass through FSDP."""

    def prepare(self, coefficients: torch.Tensor) -> Update:
        return sharded_backward(
            self.step, coefficients, "non-finite gradient in representation mode"
        )


class ShardedLosses(LossesCollected):
    """Loss-level weightings under FSDP2: the loss values averaged, then one weighted
    backward pass through FSDP."""

    def prepare(self, coefficients: Any) -> Update:
        return sharded_backward(self.step, coefficients)

r"""Per-loss gradients and their Gram matrix, and writing ``.grad`` as autograd would.

The torch side of the Gram matrix (paper eq. 8 needs $G = J J^\top$ of the per-loss
gradients):

* :func:`reached_leaves` walks the autograd graph of the losses to find every leaf they
  reach, so that leaves the wrapped optimizer does not hold (a second optimizer's
  parameters, an input with ``requires_grad``) still receive their gradient, as after
  ``loss.backward()``;
* :func:`jacobian_rows` runs one backward pass per loss (each only through the part of the
  graph that the loss reaches) and writes the flattened gradients of the optimizer's
  parameters into one ``(k, P)`` buffer $J$, and those of other leaves into small
  per-leaf ``(k, n)`` blocks that never enter $G$;
* :func:`gram` forms $J_S J_S^\top$ on the shared columns by the one precision rule of
  every Gram matrix (float32 blocks summed in float64);
* :func:`accumulate_grad` adds a gradient to ``.grad`` with the semantics of
  ``loss.backward()``: the parameter's own storage and layout, never an alias of another
  gradient, dense, then the parameter's post-accumulate-grad hooks.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch

__all__ = [
    "GRAM_CHUNK",
    "accumulate_grad",
    "gram",
    "gram_dtype",
    "jacobian_rows",
    "leaves_below",
    "reached_leaves",
    "row_dtype",
]


_ACCUMULATE_GRAD: type = torch._C._functions.AccumulateGrad


def leaves_below(roots: Iterable[Any]) -> Iterator[torch.Tensor]:
    """The leaf tensors (``AccumulateGrad`` variables) below the autograd nodes ``roots``,
    each node visited once, lazily (a caller may stop at the first it looks for)."""
    stack = list(roots)
    seen: set[object] = set()
    while stack:
        fn = stack.pop()
        if fn in seen:
            continue
        seen.add(fn)
        if type(fn) is _ACCUMULATE_GRAD:  # a type check: cheaper than getattr's miss
            yield fn.variable  # type: ignore[attr-defined]
            continue
        stack.extend(nxt for nxt, _ in fn.next_functions if nxt is not None and nxt not in seen)


def reached_leaves(losses: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The leaves that require grad and that some loss reaches, in discovery order."""
    out: list[torch.Tensor] = []
    seen: set[int] = set()
    found = [loss for loss in losses if loss.grad_fn is None and loss.requires_grad]
    roots = [loss.grad_fn for loss in losses if loss.grad_fn is not None]
    for var in [*found, *leaves_below(roots)]:  # a leaf loss is its own leaf
        if id(var) not in seen:
            seen.add(id(var))
            out.append(var)
    return out


def row_dtype(ref: torch.Tensor) -> torch.dtype:
    """The dtype of $J$: float32 or float64 (half precision is accumulated in float32)."""
    return ref.dtype if ref.dtype in (torch.float32, torch.float64) else torch.float32


def _flat(g: torch.Tensor) -> torch.Tensor:
    if g.layout != torch.strided:
        g = g.to_dense()
    return g.reshape(-1)


def jacobian_rows(
    losses: Sequence[torch.Tensor],
    params: Sequence[torch.Tensor],
    extras: Sequence[torch.Tensor],
    retain_last: bool,
    what: str = "any parameter held by the optimizer",
    *,
    hits: list[bool] | None = None,
) -> tuple[torch.Tensor, list[bool], list[torch.Tensor | None]]:
    """One backward pass per loss; rows of $J$ on ``params``, blocks on ``extras``.

    A loss that reaches none of ``params`` raises ``ValueError`` (naming it after
    ``what``), unless ``hits`` is given: it then receives, per loss, whether it reached
    one of ``params``, and the loss's row is zero.

    Returns:
        $J$ of shape ``(k, sum numel(params))``; which params some loss reached; for each
        extra leaf a ``(k, numel)`` block of its per-loss gradients (``None`` if no loss
        reaches it).
    """
    k = len(losses)
    numels = [p.numel() for p in params]
    ref = params[0] if params else losses[0]
    dtype = row_dtype(ref)
    jac = torch.empty((k, sum(numels)), dtype=dtype, device=ref.device)
    reached = [False] * len(params)
    blocks: list[torch.Tensor | None] = [None] * len(extras)
    inputs = [*params, *extras]
    n_params = len(params)
    for i, loss in enumerate(losses):
        retain = retain_last or i < k - 1
        grads = torch.autograd.grad(loss, inputs, retain_graph=retain, allow_unused=True)
        hit = any(g is not None for g in grads[:n_params])
        if hits is not None:
            hits.append(hit)
        elif not hit and n_params:
            raise ValueError(f"losses[{i}] does not depend on {what}")
        row = jac[i]
        offset = 0
        for j, n in enumerate(numels):
            g = grads[j]
            seg = row[offset : offset + n]
            if g is None:
                seg.zero_()
            else:
                seg.copy_(_flat(g))
                reached[j] = True
            offset += n
        for j, leaf in enumerate(extras):
            g = grads[n_params + j]
            if g is None:
                continue
            block = blocks[j]
            if block is None:
                block = torch.zeros((k, leaf.numel()), dtype=row_dtype(leaf), device=leaf.device)
                blocks[j] = block
            block[i].copy_(_flat(g))
        del grads
    return jac, reached, blocks


GRAM_CHUNK = 1 << 14
"""Columns per float32 block of :func:`gram` (blocks are summed in float64)."""


def gram_dtype(device: torch.device) -> torch.dtype:
    """The dtype of every Gram matrix mograd forms: float64, or float32 on devices that have
    no float64 (Apple's MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


def gram(rows: torch.Tensor, *, exact: bool = False) -> torch.Tensor:
    r"""``rows @ rows.T`` with an error that does not grow with the number of columns $P$.

    The one precision rule of every Gram matrix (paper eq. 8): products of float32 blocks of
    :data:`GRAM_CHUNK` columns, summed in float64 (:func:`gram_dtype`), so that the relative
    error stays that of one block, whatever $P$; float64 rows are multiplied directly. With
    ``exact``, the float64 product of the rows divided by a power of two near the largest
    $\lvert J_{ij} \rvert$: finite for any finite rows (the path taken when the blockwise
    product overflowed).

    Args:
        rows: ``(k, P)`` per-loss gradients, each row with unit stride.
        exact: Rescale and multiply in float64.

    Returns:
        The ``(k, k)`` Gram matrix in :func:`gram_dtype`.
    """
    acc = gram_dtype(rows.device)
    if exact and acc == torch.float64 and rows.dtype != torch.float64:
        # float32 (or narrower) entries are below 3.4e38: their float64 products and sums
        # cannot overflow, and the power-of-two rescaling below would change no bit
        j = rows.to(acc)
        return j @ j.T
    if exact:
        j = rows.to(acc)
        amax = j.abs().amax().clamp_min(torch.finfo(acc).tiny)
        s = torch.ldexp(torch.ones_like(amax), torch.frexp(amax)[1].to(acc))
        j = j / s
        return (j @ j.T) * (s * s)
    k, p = rows.shape
    if rows.dtype == acc or p <= GRAM_CHUNK:
        return (rows @ rows.T).to(acc)
    n = p // GRAM_CHUNK
    body = rows[:, : n * GRAM_CHUNK].view(k, n, GRAM_CHUNK).transpose(0, 1)
    out = torch.bmm(body, body.transpose(1, 2)).to(acc).sum(0)
    tail = rows[:, n * GRAM_CHUNK :]
    if tail.shape[1]:
        out += (tail @ tail.T).to(acc)
    return out


def _owns_storage(g: torch.Tensor, p: torch.Tensor, storages: set[int] | None) -> bool:
    if g.layout != torch.strided or p.layout != torch.strided:
        return False
    if g.dtype != p.dtype or g.device != p.device or g.shape != p.shape:
        return False
    if g.stride() != p.stride():
        return False
    if storages is None:
        return True
    key = g.untyped_storage().data_ptr()
    if key in storages:
        return False
    storages.add(key)
    return True


def accumulate_grad(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor | None],
    *,
    disjoint: bool = False,
    densify: bool = False,
) -> None:
    r"""``p.grad += g`` for each pair, as ``loss.backward()`` leaves it.

    A new ``.grad`` has the parameter's dtype and layout (``channels_last`` stays
    ``channels_last``) and never shares memory with another parameter's ``.grad`` (autograd
    may return one tensor for two aliased parameters, or a stride-0 expanded tensor); a
    sparse gradient stays sparse and uncoalesced, as autograd leaves it, unless
    ``densify``. Post-accumulate-grad hooks of each parameter run once, after its ``.grad``
    is written.

    Args:
        params: The leaves.
        grads: Their gradients (``None``: not reached, left alone), each of the leaf's
            shape.
        disjoint: The caller guarantees that the gradients occupy disjoint memory (slices
            of one buffer): they are used in place when their layout fits.
        densify: Make every written ``.grad`` dense (a combination of $k \ge 2$ gradients
            is dense, see ``docs/api.md``).
    """
    storages: set[int] | None = None if disjoint else set()
    for p, g in zip(params, grads):
        if g is None:
            continue
        if densify and g.layout != torch.strided:
            g = g.to_dense()
        if p.grad is None:
            p.grad = _new_grad(g, p, storages)
        elif p.grad.layout != torch.strided and g.layout == torch.strided:
            p.grad = g + p.grad  # a dense gradient added to a sparse one is dense
        else:
            p.grad.add_(g)
        if densify and p.grad.layout != torch.strided:
            p.grad = p.grad.to_dense()
        hooks = getattr(p, "_post_accumulate_grad_hooks", None)
        if hooks:
            for hook in tuple(hooks.values()):
                hook(p)


def _new_grad(g: torch.Tensor, p: torch.Tensor, storages: set[int] | None) -> torch.Tensor:
    if g.layout != torch.strided:
        return g.clone()
    if _owns_storage(g, p, storages):
        return g
    new = torch.empty_like(p, memory_format=torch.preserve_format)
    new.copy_(g)
    return new

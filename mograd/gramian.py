"""Per-loss gradients and their Gram matrix, and writing ``.grad`` as autograd would.

The torch side of the Gram matrix (paper eq. 8 needs ``G = J J^T`` of the per-loss
gradients):

* :func:`reached_leaves` walks the autograd graph of the losses to find every leaf they
  reach, so that leaves the wrapped optimizer does not hold (a second optimizer's
  parameters, an input with ``requires_grad``) still receive their gradient, as after
  ``loss.backward()``;
* :func:`jacobian_rows` runs one backward pass per loss (each only through the part of the
  graph that the loss reaches) and writes the flattened gradients of the optimizer's
  parameters into one ``(k, P)`` buffer ``J``, and those of other leaves into small
  per-leaf ``(k, n)`` blocks that never enter ``G``;
* :func:`gram` forms ``J_S J_S^T`` on the shared columns, rescaling in float64 when the
  float32 product would overflow for finite gradients;
* :func:`accumulate_grad` adds a gradient to ``.grad`` with the semantics of
  ``loss.backward()``: the parameter's own storage and layout, never an alias of another
  gradient, dense, then the parameter's post-accumulate-grad hooks.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch

__all__ = [
    "accumulate_grad",
    "gram",
    "jacobian_rows",
    "leaves_below",
    "reached_leaves",
    "row_dtype",
]


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
        var = getattr(fn, "variable", None)
        if var is not None:
            yield var
            continue
        for nxt, _ in fn.next_functions:
            if nxt is not None and nxt not in seen:
                stack.append(nxt)


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
    """The dtype of ``J``: float32 or float64 (half precision is accumulated in float32)."""
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
) -> tuple[torch.Tensor, list[bool], list[torch.Tensor | None]]:
    """One backward pass per loss; rows of ``J`` on ``params``, blocks on ``extras``.

    Returns:
        ``J`` of shape ``(k, sum numel(params))``; which params some loss reached; for each
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
        if all(g is None for g in grads[:n_params]) and n_params:
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


def gram(shared: torch.Tensor, *, rescale: bool = False) -> torch.Tensor:
    """``J_S J_S^T``; with ``rescale``, in float64 after dividing by ``max |J_S|`` (finite
    for any finite ``J_S``), the path taken when the plain product overflowed."""
    if not rescale:
        return shared @ shared.T
    j = shared.to(torch.float64)
    s = j.abs().amax().clamp_min(torch.finfo(torch.float64).tiny)
    j = j / s
    return (j @ j.T) * (s * s)


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
) -> None:
    """``p.grad += g`` for each pair, as ``loss.backward()`` leaves it.

    A new ``.grad`` has the parameter's dtype and layout (``channels_last`` stays
    ``channels_last``) and never shares memory with another parameter's ``.grad`` (autograd
    may return one tensor for two aliased parameters, or a stride-0 expanded tensor); a
    sparse gradient of a sparse-gradient parameter stays sparse. Post-accumulate-grad hooks
    of each parameter run once, after its ``.grad`` is written.

    Args:
        params: The leaves.
        grads: Their gradients (``None``: not reached, left alone), each of the leaf's
            shape.
        disjoint: The caller guarantees that the gradients occupy disjoint memory (slices
            of one buffer): they are used in place when their layout fits.
    """
    storages: set[int] | None = None if disjoint else set()
    for p, g in zip(params, grads):
        if g is None:
            continue
        if p.grad is None:
            if g.layout != torch.strided:
                p.grad = g.coalesce() if g.is_sparse else g.clone()
            elif _owns_storage(g, p, storages):
                p.grad = g
            else:
                new = torch.empty_like(p, memory_format=torch.preserve_format)
                new.copy_(g)
                p.grad = new
        else:
            p.grad.add_(g)
        hooks = getattr(p, "_post_accumulate_grad_hooks", None)
        if hooks:
            for hook in tuple(hooks.values()):
                hook(p)

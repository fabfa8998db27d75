r"""The one step pipeline: every source's :class:`~mograd.sources.Collected` goes through
the same stages, each written once.

::

    Collected ──► reduce ──► gram ──► unscale ──► combine ──► prepare ──► guard ──► commit
    (a source)    (process   (one      (GradScaler) (weighting,   (sum_i c_i    (raise |   (.grad)
                   group)     precision              MIB, k = 1    grad L_i)     skip |
                              rule)                  identity)                   ignore)

* **reduce** (under ``torch.distributed``): the source averages what it gathered, so every
  rank forms the same $G$ and the same weights.
* **gram**: $G = J J^\top$ by the one precision rule (:func:`mograd.gramian.gram`).
* **unscale**: with a ``GradScaler`` of scale $s$, $G / s^2$: weights and coefficients come
  from the unscaled values.
* **combine** (:class:`Combiner`): normalization, the weighting (paper eq. 8 by default),
  MIB's reweighting and Smooth-IB coefficients (eqs. 12-14), all in
  :func:`mograd.weightings.combine`; $k = 1$ is the identity $c = 1$ on every source.
* **guard** (:func:`run`): one host read of one boolean decides; only when it is false the
  exact checks name what is not finite, a Gram matrix that overflowed for finite gradients
  is recomputed (:meth:`~mograd.sources.Collected.gram` with ``exact``), and the step is
  raised or skipped the same way on every rank, with nothing written.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from . import _distributed as distributed
from .gramian import gram_dtype
from .info import NonFiniteError, StepInfo
from .options import Options
from .sources import Collected, Update
from .sources.base import finite_sum
from .weightings import Combination, Weighting, combine

__all__ = ["Combiner", "run"]

_UNTOUCHED = (
    "; parameters, gradients and optimizer state were left untouched "
    "(use nonfinite='skip' to skip such steps)"
)


class Combiner:
    r"""The combine stage: $(G, L) \mapsto c$ for the wrapper's options."""

    def __init__(self, options: Options) -> None:
        self.options = options

    def __call__(self, gram: torch.Tensor | None, values: torch.Tensor) -> Combination:
        """The combination of one step (``gram=None`` for loss-level weightings)."""
        k = int(values.shape[0])
        dtype = gram_dtype(values.device) if gram is None else gram.dtype
        values = values.to(dtype)
        if k == 1:  # the step is exactly loss.backward(): no weighting, no smoothing
            one = torch.ones(1, dtype=dtype, device=values.device)
            return Combination(one, one, one, one, 0)
        o = self.options
        return combine(
            gram,
            values,
            o.weighting,
            power=o.power,
            mu=o.mu,
            normalize=o.normalize,
            normalized_update=o.normalized_update,
        )

    def snapshot(self) -> object | None:
        """What undoes a stateful weighting's state changes (``None`` for stateless ones),
        so that a step the guard rejects, or recomputes, leaves it as it was."""
        w = self.options.weighting
        if not isinstance(w, Weighting) or type(w).state_dict is Weighting.state_dict:
            return None
        return w._snapshot()

    def restore(self, saved: object | None) -> None:
        """Undo the weighting's state changes since :meth:`snapshot`."""
        w = self.options.weighting
        if saved is not None and isinstance(w, Weighting):
            w._restore(saved)


def _unscale(gram: torch.Tensor | None, scale: torch.Tensor | None) -> torch.Tensor | None:
    if gram is None or scale is None:
        return gram
    return gram / scale.to(gram.dtype) ** 2


def run(col: Collected, combiner: Combiner, policy: str, group: Any) -> StepInfo:
    """The whole step for any source; returns its :class:`StepInfo` (``skipped`` when the
    guard rejected it with ``policy="skip"``).

    Raises:
        NonFiniteError: With ``policy="raise"`` for a non-finite loss, gradient or
            coefficient; nothing is written.
    """
    step = col.step
    saved = None if policy == "ignore" else combiner.snapshot()
    try:
        if step.distributed:
            col.reduce(group)
        gram = col.gram()
        comb = combiner(_unscale(gram, step.scale), col.values)
        update = col.prepare(comb.coefficients)
    except BaseException:
        col.discard()
        combiner.restore(saved)
        raise
    info = StepInfo._of_step(comb, col.values, _unscale(gram, step.scale), col.dtype)
    if policy == "ignore":
        update.commit()
        return info
    # one fused check: a NaN or infinity anywhere makes the total of the sums non-finite
    sums = [col.values.sum(), comb.coefficients.sum(), *update.sums()]
    ok = finite_sum(sums if gram is None else [*sums, gram.sum()])
    gathered = col.finite()
    if gathered is not None:
        ok = ok & gathered
    if step.distributed:
        ok = distributed.agree(ok, group)
    if bool(ok):
        update.commit()
        return info
    return _slow_path(col, combiner, policy, group, info, update, saved)


def _slow_path(
    col: Collected,
    combiner: Combiner,
    policy: str,
    group: Any,
    info: StepInfo,
    update: Update,
    saved: object | None,
) -> StepInfo:
    """After the cheap check failed: name the problem, or recover from an overflowed $G$."""
    problem = _diagnose(col, update)
    gram = col.gram()
    if problem is None and gram is not None and not bool(torch.isfinite(gram).all()):
        gram = col.gram(exact=True)  # finite gradients, overflowed Gram matrix: redo it
        combiner.restore(saved)
        comb = combiner(_unscale(gram, col.step.scale), col.values)
        if not torch.equal(comb.coefficients.to(info.coefficients.dtype), info.coefficients):
            update.rollback()
            update = col.prepare(comb.coefficients)
        info = StepInfo._of_step(comb, col.values, _unscale(gram, col.step.scale), col.dtype)
    if problem is None and not bool(torch.isfinite(info.coefficients).all()):
        problem = "non-finite coefficients (check the loss scale)"
    if col.step.distributed:
        anywhere = not bool(distributed.agree(torch.tensor(problem is None), group))
        if anywhere and problem is None:
            problem = "non-finite value on another rank"
    if problem is None:
        update.commit()
        return info
    update.rollback()
    col.discard()
    combiner.restore(saved)
    if policy == "raise":
        raise NonFiniteError(_message(problem, col.values) + _UNTOUCHED)
    info.skipped = True
    return info


def _diagnose(col: Collected, update: Update) -> str | None:
    """What is not finite, exactly (``""`` for a loss value), or ``None``."""
    if not bool(torch.isfinite(col.values).all()):
        return ""
    return col.problem() or update.problem()


def _message(problem: str, values: torch.Tensor) -> str:
    bad = [i for i, v in enumerate(values.tolist()) if not math.isfinite(v)]
    if bad:
        return "non-finite loss value: " + ", ".join(
            f"losses[{i}] = {values[i].item()}" for i in bad
        )
    return problem

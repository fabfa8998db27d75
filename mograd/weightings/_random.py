"""Random loss weighting: a softmax of standard normal draws at every step.

Lin et al., "Reasonable Effectiveness of Random Weighting: A Litmus Test for Multi-Task
Learning", TMLR 2022 (arXiv:2111.10603), random loss weighting (RLW, Algorithm 2 in the
arXiv version). See ``docs/weightings.md``. A loss-level weighting: it needs neither the Gram
matrix nor the loss values, so the optimizer runs one backward pass.
"""

from __future__ import annotations

from typing import Any

import torch

from ._base import LossWeighting
from ._util import check_seed, generator_state, load_generator_state, nan_guard

__all__ = ["Random"]


class Random(LossWeighting):
    r"""Random loss weighting (RLW; Lin et al. 2022).

    At every step $w = \operatorname{softmax}(z)$ with $z \sim \mathcal{N}(0, I_k)$, whatever
    the Gram matrix. The
    draws come from a CPU :class:`torch.Generator` seeded with ``seed``, in float64
    (``torch.randn(k, dtype=torch.float64)``), so that they are the same on every device and
    every rank; :meth:`state_dict` holds the generator state so that a resumed run draws
    the same weights. Called with a Gram matrix (``w(gram)``) or with the loss values
    (``w(None, losses)``), it uses them only for $k$, the device and dtype, and the
    non-finite contract: a NaN or infinite entry gives NaN weights. The generator advances
    on every call, finite or not.

    When to use it: the litmus-test baseline of multi-task learning; any other weighting
    should beat it.

    Host round trip: no. The weights are drawn on the host and copied to the device
    without waiting for it (from pinned memory on CUDA). Cost: one backward pass (a
    loss-level weighting, ``needs_gram = False``).

    Args:
        seed: Seed of the draws (an int in $[0, 2^{63})$).

    Example:
        >>> import torch
        >>> from mograd.weightings import Random
        >>> w = Random(seed=0)(torch.eye(3))
        >>> bool(torch.isclose(w.sum(), torch.tensor(1.0))), bool((w > 0).all())
        (True, True)
    """

    host_sync = False
    needs_losses = False

    def __init__(self, seed: int = 0) -> None:
        self.seed = check_seed(seed)
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(self.seed)

    def weigh(self, gram: torch.Tensor | None, losses: torch.Tensor | None) -> torch.Tensor:
        like = gram if gram is not None else losses
        assert like is not None
        dtype = like.dtype if like.dtype in (torch.float32, torch.float64) else torch.float32
        z = torch.randn(like.shape[0], generator=self.generator, dtype=torch.float64)
        w = torch.softmax(z, dim=0)
        if like.device.type == "cuda":
            w = w.pin_memory().to(device=like.device, non_blocking=True)
        return nan_guard(w.to(device=like.device, dtype=dtype), gram, losses)

    def state_dict(self) -> dict[str, Any]:
        """The generator state (the next draws)."""
        return generator_state(self.generator)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the generator state of :meth:`state_dict`."""
        load_generator_state("Random", self.generator, state)

    def _snapshot(self) -> object:
        return self.generator.get_state()  # already a copy

    def _restore(self, saved: object) -> None:
        assert isinstance(saved, torch.Tensor)
        self.generator.set_state(saved)

    def __repr__(self) -> str:
        return f"Random(seed={self.seed})"

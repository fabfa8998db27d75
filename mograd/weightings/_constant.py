"""Mean and Constant: fixed weights (linear scalarization).

``Mean`` is $w_i = 1/k$ (the "MIB w.o. aw" ablation of the paper's Fig. 5 when composed with
MIB's reweighting); ``Constant(w)`` uses the given weights as they are (a preference ray of
linear scalarization). Both are tensor operations only: no host synchronization. Both return
NaN weights for a Gram matrix with a NaN or infinite entry (the contract of every weighting).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._base import Weighting
from ._util import check_vector, host_values, nan_guard

__all__ = ["Constant", "Mean"]


class Mean(Weighting):
    """Equal weights $1/k$: the gradient of the mean loss.

    Example:
        >>> import torch
        >>> from mograd.weightings import Mean
        >>> Mean()(torch.eye(4))
        tensor([0.2500, 0.2500, 0.2500, 0.2500])
    """

    host_sync = False

    def weigh(self, gram: torch.Tensor, losses: torch.Tensor | None) -> torch.Tensor:
        k = gram.shape[0]
        return nan_guard(torch.full((k,), 1.0 / k, dtype=gram.dtype, device=gram.device), gram)


class Constant(Weighting):
    r"""Fixed non-negative weights, used as given (linear scalarization).

    Args:
        weights: $k$ finite weights $\ge 0$, not all zero (a sequence or a 1-d tensor).

    Raises:
        ValueError: If a weight is negative or non-finite, or all are zero; when called on a
            Gram matrix whose size is not ``len(weights)``.

    Example:
        >>> import torch
        >>> from mograd.weightings import Constant
        >>> Constant([0.2, 0.8])(torch.eye(2))
        tensor([0.2000, 0.8000])
    """

    host_sync = False

    def __init__(self, weights: Sequence[float] | torch.Tensor) -> None:
        values = check_vector("weights", weights, flatten=True)
        self.weights = values

    def weigh(self, gram: torch.Tensor, losses: torch.Tensor | None) -> torch.Tensor:
        if gram.shape[0] != len(self.weights):
            raise ValueError(
                f"Constant has {len(self.weights)} weights but the Gram matrix is "
                f"{gram.shape[0]} x {gram.shape[0]}"
            )
        w = host_values(self.weights, gram, gram.dtype)
        return nan_guard(w, gram)

    def __repr__(self) -> str:
        return f"Constant({list(self.weights)!r})"

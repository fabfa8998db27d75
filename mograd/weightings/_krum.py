"""Krum: the gradient closest to its neighbours, robust to a few adversarial gradients.

Blanchard et al., "Machine Learning with Adversaries: Byzantine Tolerant Gradient Descent",
NeurIPS 2017 (Krum and Multi-Krum, Section 4). See ``docs/weightings.md``.
"""

from __future__ import annotations

import torch

from ._base import Weighting
from ._util import check_bool, check_int, nan_guard

__all__ = ["Krum"]


class Krum(Weighting):
    r"""Krum and Multi-Krum (Blanchard et al. 2017).

    With $f$ = ``n_byzantine`` possibly adversarial gradients among $k$, each gradient's
    score is the sum of its distances to its $k - f - 2$ nearest other gradients $N_i$,
    $s_i = \sum_{j \in N_i} \lVert g_i - g_j \rVert^2$ with
    $\lVert g_i - g_j \rVert^2 = G_{ii} + G_{jj} - 2 G_{ij}$; Krum selects the gradient of
    lowest score, Multi-Krum the $m$ = ``n_selected`` lowest and averages them: $w_i = 1 / m$
    on the selected ones, 0 elsewhere. The paper squares the
    distances (``squared=True``, the default); TorchJD's ``Krum`` sums the distances themselves
    (``squared=False``). Ties are broken by the lowest index.

    When to use it: gradients from many sources of which a few may be corrupted (federated
    or distributed data), not conflicting tasks; it needs $k \ge f + 3$.

    Host round trip: no (``topk`` and ``sort`` on the device).

    Args:
        n_byzantine: $f$, the number of gradients that may be adversarial ($\ge 0$).
        n_selected: How many gradients Multi-Krum averages ($\ge 1$; 1 is Krum).
        squared: Score with squared distances (the paper) or distances (TorchJD).

    Raises:
        ValueError: When called on fewer than ``n_byzantine + 3`` or ``n_selected`` losses.

    Example:
        >>> import torch
        >>> from mograd.weightings import Krum
        >>> J = torch.tensor([[1.0, 0.0], [1.2, 0.0], [0.9, 0.1], [-5.0, 5.0]])
        >>> Krum()(J @ J.T)
        tensor([1., 0., 0., 0.])
    """

    host_sync = False

    def __init__(self, n_byzantine: int = 0, n_selected: int = 1, squared: bool = True) -> None:
        self.n_byzantine = check_int("n_byzantine", n_byzantine, minimum=0)
        self.n_selected = check_int("n_selected", n_selected)
        self.squared = check_bool("squared", squared)

    def weigh(self, gram: torch.Tensor, losses: torch.Tensor | None) -> torch.Tensor:
        k = gram.shape[0]
        need = max(self.n_byzantine + 3, self.n_selected)
        if k < need:
            raise ValueError(
                f"Krum(n_byzantine={self.n_byzantine}, n_selected={self.n_selected}) needs at "
                f"least {need} losses, got {k}"
            )
        g = gram.detach()
        diag = g.diagonal()
        dist = (diag[:, None] + diag[None, :] - 2.0 * g).clamp_min(0.0)
        if not self.squared:
            dist = dist.sqrt()
        dist = dist + torch.diag(torch.full_like(diag, float("inf")))  # not its own neighbour
        near = torch.sort(dist, dim=1, stable=True).values[:, : k - self.n_byzantine - 2]
        scores = near.sum(dim=1)
        order = torch.sort(scores, stable=True).indices[: self.n_selected]
        w = torch.zeros(k, dtype=gram.dtype, device=gram.device)
        w = w.index_fill(0, order, 1.0 / self.n_selected)
        return nan_guard(w, gram)

    def __repr__(self) -> str:
        return (
            f"Krum(n_byzantine={self.n_byzantine}, n_selected={self.n_selected}, "
            f"squared={self.squared})"
        )

"""ConFIG: the conflict-free direction, from the Gram matrix of the normalized gradients.

Liu, Chu, Thuerey, "ConFIG: Towards Conflict-free Training of Physics Informed Neural
Networks", ICLR 2025 (arXiv:2408.11104), eq. 2. See ``docs/weightings.md``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ._base import Weighting
from ._util import check_vector, from_host, nan_weights, to_host

__all__ = ["ConFIG"]


class ConFIG(Weighting):
    r"""Conflict-free gradient direction (ConFIG; Liu et al. 2024, eq. 2).

    With the unit gradients $u_i = g_i / \lVert g_i \rVert$ (rows of $U$; a zero gradient
    gives a zero row), the direction is the minimum-norm $d_u$ with $u_i^\top d_u = p_i$ for
    every $i$ (least squares when no exact solution exists), $d_u = U^+ p$, and the update is
    $\big(\sum_i g_i^\top e\big) \, e$ with $e = d_u / \lVert d_u \rVert$: the same
    projection ratio $p_i$ onto every unit gradient, scaled to the sum of the gradients'
    projections. In Gram form, with $N = \operatorname{diag}(1 / \lVert g_i \rVert)$ and the
    Gram matrix $N G N$ of the unit gradients, $d_u = J^\top a$ with $a = N (N G N)^+ p$,
    and the weights are $w = \big(\mathbf{1}^\top G a / a^\top G a\big) \, a$. The
    pseudo-inverse drops eigenvalues below $k \, \varepsilon$ ($\varepsilon$ the machine
    epsilon of the dtype) times the largest (of $N G N$, whose trace is the number of
    non-zero gradients). Zero weights when $d_u = 0$.

    When to use it: several losses whose gradients should all improve at a rate set by
    $p$ (default equal rates); scale-free in each gradient, like IMTL-G.

    Host round trip: yes (an eigendecomposition in float64 on the host).

    Args:
        pref_vector: The rates $p$ ($k$ finite values $\ge 0$, not all zero); default all ones
            (as TorchJD's ``ConFIG``).

    Example:
        >>> import torch
        >>> from mograd.weightings import ConFIG
        >>> gram = torch.tensor([[1.0, -0.5], [-0.5, 4.0]], dtype=torch.float64)
        >>> w = ConFIG()(gram)
        >>> proj = (gram @ w) / gram.diagonal().sqrt()  # equal, positive projections
        >>> bool(torch.allclose(proj[0], proj[1])), bool((proj > 0).all())
        (True, True)
    """

    host_sync = True

    def __init__(self, pref_vector: Sequence[float] | torch.Tensor | None = None) -> None:
        self.pref_vector = None if pref_vector is None else check_vector("pref_vector", pref_vector)

    def weigh(self, gram: torch.Tensor, losses: torch.Tensor | None) -> torch.Tensor:
        g = to_host(gram)
        if g is None:
            return nan_weights(gram)
        k = g.shape[0]
        if self.pref_vector is None:
            p = np.ones(k)
        elif len(self.pref_vector) != k:
            raise ValueError(
                f"ConFIG has a pref_vector of {len(self.pref_vector)} entries but the Gram "
                f"matrix is {k} x {k}"
            )
        else:
            p = np.asarray(self.pref_vector, dtype=np.float64)
        return from_host(_config_weights(g, p, torch.finfo(gram.dtype).eps), gram)

    def __repr__(self) -> str:
        pref = None if self.pref_vector is None else list(self.pref_vector)
        return f"ConFIG(pref_vector={pref!r})"


def _config_weights(g: np.ndarray, p: np.ndarray, eps: float) -> np.ndarray:
    k = g.shape[0]
    norms = np.sqrt(np.clip(np.diag(g), 0.0, None))
    top = float(norms.max()) if k else 0.0
    inv = np.where(norms > 0, 1.0 / np.where(norms > 0, norms, 1.0), 0.0)
    if not top > 0:
        return np.zeros(k)
    gu = g * inv[:, None] * inv[None, :]
    lam, vec = np.linalg.eigh(gu)
    keep = lam > k * eps * float(lam.max())
    lam_inv = np.where(keep, 1.0 / np.where(keep, lam, 1.0), 0.0)
    a = inv * (vec @ (lam_inv * (vec.T @ p)))
    norm2 = float(a @ g @ a)
    if not norm2 > 0:
        return np.zeros(k)
    out: np.ndarray = (float(np.sum(g @ a)) / norm2) * a
    return out

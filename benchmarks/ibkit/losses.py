"""The IB loss terms of the paper (Section 3), one function per equation, all in nats."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .models import BottleneckStats

KL_REDUCTIONS = ("sum", "mean")


def gaussian_kl(mu: torch.Tensor, sigma: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """Batch mean of KL(N(mu, diag sigma^2) || N(0, I)).

    ``KL = 1/2 sum_k (mu_k^2 + sigma_k^2 - 1 - log sigma_k^2)`` per example (``"sum"``, the
    paper's and Alemi et al.'s form), or the same divided by K (``"mean"`` over the K
    dimensions). The two differ by the constant factor K: a hidden beta for VIB and for MIB on
    raw gradients, no difference for the gradient-normalized MIB variants (docs/benchmarks.md).

    Args:
        mu: Means, (N, K).
        sigma: Standard deviations, (N, K), positive.
        reduction: ``"sum"`` or ``"mean"`` over the K dimensions.

    Returns:
        0-d tensor, the mean over the batch.

    Raises:
        ValueError: Unknown reduction.
    """
    if reduction not in KL_REDUCTIONS:
        raise ValueError(f"unknown KL reduction {reduction!r}; expected one of {KL_REDUCTIONS}")
    var = sigma.pow(2)
    terms = 0.5 * (mu.pow(2) + var - 1.0 - torch.log(var))
    kl = terms.sum(dim=1) if reduction == "sum" else terms.mean(dim=1)
    return kl.mean()


def kde_mutual_information(h: torch.Tensor, noise_var: torch.Tensor) -> torch.Tensor:
    """Kolchinsky et al.'s batch KDE upper bound on I(X; T) for ``T = h + N(0, s^2 I)``.

    ``I_hat = log N - (1/N) sum_i logsumexp_j(-||h_i - h_j||^2 / (2 s^2))``.

    Args:
        h: Noise-free representations of the mini-batch, (N, K).
        noise_var: ``s^2``, a positive 0-d tensor.

    Returns:
        0-d tensor in [0, log N].
    """
    n = h.shape[0]
    norms = h.pow(2).sum(dim=1)
    # squared distances without a sqrt, so the gradient is finite at i == j
    sq = (norms[:, None] + norms[None, :] - 2.0 * h @ h.T).clamp_min(0.0)
    lse = torch.logsumexp(-sq / (2.0 * noise_var), dim=1)
    return math.log(n) - lse.mean()


def information_term(stats: BottleneckStats, kl_reduction: str = "sum") -> torch.Tensor | None:
    """L_info of a forward pass: KL (gaussian), I_hat (noisy) or None (deterministic).

    Args:
        stats: Output of ``IBModel.forward_stats``.
        kl_reduction: Reduction of the KL over the K dimensions (:func:`gaussian_kl`); the
            KDE estimate I_hat has none.
    """
    if stats.mu is not None and stats.sigma is not None:
        return gaussian_kl(stats.mu, stats.sigma, kl_reduction)
    if stats.h is not None and stats.noise_var is not None:
        return kde_mutual_information(stats.h, stats.noise_var)
    return None


def lagrangian(
    pred: torch.Tensor, info: torch.Tensor | None, beta: float, squared: bool
) -> torch.Tensor:
    """Scalar IB objective ``L_pred + beta * L_info`` or the squared ``L_pred + beta * L_info^2``.

    Args:
        pred: Cross-entropy.
        info: Information term, or None (then only ``pred``).
        beta: Lagrange multiplier.
        squared: Use the squared IB Lagrangian (Rodriguez Galvez et al. 2020).

    Returns:
        0-d tensor.
    """
    if info is None:
        return pred
    return pred + beta * (info.pow(2) if squared else info)


def prediction_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy L_pred (batch mean, nats)."""
    return F.cross_entropy(logits, y)


def info_plane_point(
    info: float, cross_entropy: float, num_classes: int = 10
) -> tuple[float, float]:
    """Information-plane coordinates.

    Args:
        info: Mean KL (VIB family) or I_hat (NIB family): the I(X;Z) upper bound.
        cross_entropy: Mean decoder cross-entropy.
        num_classes: Number of balanced classes, so ``H(Y) = log num_classes``.

    Returns:
        ``(I(X;Z) bound, I(Z;Y) bound = H(Y) - CE)``.
    """
    return float(info), math.log(num_classes) - float(cross_entropy)

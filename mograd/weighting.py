r"""Pure weighting functions: nonlinear reweighting and Smooth-IB coefficients.

The second of mograd's three layers. Each function maps tensors to tensors, with no
parameters, no autograd and no host synchronization:

* :func:`reweight` is paper eq. 12: $\tilde w_i = (w^*_i)^p$. The paper writes
  $p = 1 + \sqrt{\text{sqrted}}$ for a boolean ``sqrted``; $p = 2$ is MIB's default and
  $p = 1$ leaves the min-norm weights as they are (MGDA).
* :func:`smooth_coefficients` is paper eqs. 13-14: with $x_i = \tilde w_i L_i$ held
  as constants in the weights, the gradient of
  $L_{\text{smooth}} = \sum_i x_i + \mu \log \sum_i \exp\big((x_i - m) / \mu\big) + m$,
  $m = \min_j x_j$, is $\sum_i c_i \nabla L_i$ with
  $c_i = \tilde w_i \big(1 + \operatorname{softmax}(x / \mu)_i\big)$. With ``mu=None`` there
  is no smoothing and $c = \tilde w$.
* :func:`smooth_ib_loss` is the literal loss of eq. 13, for readers and tests.

See ``docs/derivation.md`` for the derivation of the coefficient form.
"""

from __future__ import annotations

import torch

__all__ = ["reweight", "smooth_coefficients", "smooth_ib_loss"]


def reweight(weights: torch.Tensor, power: float = 2.0) -> torch.Tensor:
    r"""Nonlinear reweighting $\tilde w = w^p$, $p$ = ``power`` (paper eq. 12).

    Args:
        weights: Non-negative weights, shape ``(k,)``.
        power: Exponent $p > 0$; ``2.0`` is the paper's ``sqrted=True`` (MIB default),
            ``1.0`` returns the weights unchanged.

    Returns:
        The reweighted weights, same shape, dtype and device.

    Example:
        >>> import torch
        >>> from mograd.weighting import reweight
        >>> reweight(torch.tensor([0.25, 0.75]))
        tensor([0.0625, 0.5625])
    """
    if power == 1.0:
        return weights
    if power == 2.0:
        return weights * weights
    return weights.pow(power)


def smooth_coefficients(
    reweighted: torch.Tensor, losses: torch.Tensor, mu: float | None = 0.2
) -> torch.Tensor:
    r"""Per-loss gradient coefficients of the Smooth-IB aggregation (paper eqs. 13-14).

    $c_i = \tilde w_i (1 + a_i)$ with $a = \operatorname{softmax}(\tilde w \odot L / \mu)$;
    $c = \tilde w$ when ``mu`` is ``None``. The combined gradient is $\sum_i c_i \nabla L_i$.

    Args:
        reweighted: The reweighted weights $\tilde w$, shape ``(k,)``.
        losses: The loss values $L$ (detached), shape ``(k,)``.
        mu: Temperature $\mu > 0$ (paper default ``0.2``), or ``None`` for no smoothing.

    Returns:
        The coefficients $c$, shape ``(k,)``.

    Example:
        >>> import torch
        >>> from mograd.weighting import smooth_coefficients
        >>> smooth_coefficients(torch.tensor([0.5, 0.5]), torch.tensor([1.0, 1.0]))
        tensor([0.7500, 0.7500])
    """
    if mu is None:
        return reweighted
    losses = losses.to(reweighted.dtype)
    logits = reweighted * losses / mu
    attention = torch.softmax(logits, dim=0)
    if reweighted.dtype != torch.float64:
        # Finite losses near the dtype's maximum overflow w~ L / mu; softmax subtracts the
        # maximum, so float64 logits give the right attention. Chosen by torch.where (no
        # host synchronization), it leaves the usual case bit-identical.
        wide = torch.softmax(reweighted.double() * losses.double() / mu, dim=0)
        ok = torch.isfinite(logits).all()
        attention = torch.where(ok, attention, wide.to(attention.dtype))
    return reweighted * (1.0 + attention)


def smooth_ib_loss(reweighted: torch.Tensor, losses: torch.Tensor, mu: float = 0.2) -> torch.Tensor:
    r"""The Smooth-IB loss of paper eq. 13, literally, with the weights held constant.

    $\sum_i x_i + \mu \log \sum_i \exp\big((x_i - \min_j x_j) / \mu\big) + \min_j x_j$ with
    $x = \tilde w \odot L$. Its gradient with respect to ``losses`` equals
    :func:`smooth_coefficients`.

    Args:
        reweighted: The reweighted weights $\tilde w$ (treated as constants), shape ``(k,)``.
        losses: The losses $L$, shape ``(k,)``; may require grad.
        mu: Temperature $\mu > 0$.

    Returns:
        A scalar tensor.

    Example:
        >>> import torch
        >>> from mograd.weighting import smooth_ib_loss
        >>> L = torch.tensor([1.0, 2.0], requires_grad=True)
        >>> smooth_ib_loss(torch.tensor([0.5, 0.5]), L).backward()
        >>> L.grad
        tensor([0.5379, 0.9621])
    """
    x = reweighted.detach() * losses
    m = x.min()
    return x.sum() + mu * torch.log(torch.exp((x - m) / mu).sum()) + m

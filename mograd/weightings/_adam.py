r"""Adam on a small tensor held by a weighting, with the update masked by a finiteness flag.

The loss-level weightings with learned parameters (UW, IMTL-L, FAMO, GradNorm, IMTL) train
them inside the weighting with this update rule: Adam (Kingma & Ba 2015) as
:class:`torch.optim.Adam` computes it (L2 ``weight_decay`` added to the gradient, bias
corrections $1 - \beta^t$), written with out-of-place tensor operations so that the whole
step runs on the losses' device without a host synchronization, and so that a step whose
input was not finite (``ok`` false) leaves every state tensor exactly as it was.
"""

from __future__ import annotations

import torch

__all__ = ["ADAM_KEYS", "adam_init", "adam_step"]

#: The state tensors of :func:`adam_init` / :func:`adam_step`.
ADAM_KEYS = ("param", "exp_avg", "exp_avg_sq", "step")


def adam_init(param: torch.Tensor) -> dict[str, torch.Tensor]:
    """Adam's state for a parameter (its moments zero, step 0), in the parameter's dtype."""
    return {
        "param": param,
        "exp_avg": torch.zeros_like(param),
        "exp_avg_sq": torch.zeros_like(param),
        "step": torch.zeros((), dtype=param.dtype, device=param.device),
    }


def adam_step(
    state: dict[str, torch.Tensor],
    grad: torch.Tensor,
    ok: torch.Tensor,
    *,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> dict[str, torch.Tensor]:
    """One Adam step on ``state["param"]`` with gradient ``grad``, applied only where ``ok``.

    Args:
        state: What :func:`adam_init` (or a previous step) returned.
        grad: The gradient, same shape as the parameter.
        ok: A 0-d bool tensor; ``False`` returns the state unchanged.
        lr: Learning rate.
        betas: Decay of the first and second moments.
        eps: Added to the denominator.
        weight_decay: L2 penalty (added to the gradient, as :class:`torch.optim.Adam`).

    Returns:
        The new state (new tensors; the old ones are not modified).
    """
    b1, b2 = betas
    p, m, v, t = (state[k] for k in ADAM_KEYS)
    g = grad if weight_decay == 0.0 else torch.add(grad, p, alpha=weight_decay)
    # torch.optim.Adam's own formulas (lerp, addcmul, addcdiv). A non-finite step is
    # discarded by the torch.where below, whatever NaN it computed on the way.
    m_new = torch.lerp(m, g, 1.0 - b1)
    v_new = torch.addcmul(v * b2, g, g, value=1.0 - b2)
    t_new = t + 1.0
    bc1 = 1.0 - torch.pow(b1, t_new)
    bc2 = 1.0 - torch.pow(b2, t_new)
    denom = v_new.sqrt() / bc2.sqrt() + eps
    p_new = p - (m_new / denom) * (lr / bc1)
    return {
        "param": torch.where(ok, p_new, p),
        "exp_avg": torch.where(ok, m_new, m),
        "exp_avg_sq": torch.where(ok, v_new, v),
        "step": torch.where(ok, t_new, t),
    }

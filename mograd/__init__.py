"""mograd: multi-objective gradient training for PyTorch.

Wrap any ``torch.optim`` optimizer and step on several losses at once::

    opt = mograd.MOWrapper(torch.optim.Adam(model.parameters(), lr=1e-3))
    opt.zero_grad()
    info = opt.step([l_pred, l_info])

Each step computes the per-loss gradients (:mod:`mograd.gramian`), finds min-norm weights
with Frank-Wolfe (:mod:`mograd.solver`) or any other weighting of :mod:`mograd.weightings`,
reweights them nonlinearly and aggregates them with the Smooth-IB log-sum-exp rule
(:mod:`mograd.weighting`), then lets the wrapped optimizer step (:mod:`mograd.optimizer`).
:mod:`mograd.pareto` measures and traces Pareto fronts.
"""

from . import pareto, weightings
from .optimizer import MOWrapper, MultiObjectiveOptimizer, NonFiniteError, StepInfo
from .solver import MinNormResult, min_norm_solve, min_norm_weights
from .weighting import reweight, smooth_coefficients, smooth_ib_loss

# The one place the version is written: pyproject.toml reads it (setuptools' dynamic version).
__version__ = "0.1.0"

__all__ = [
    "MOWrapper",
    "MinNormResult",
    "MultiObjectiveOptimizer",
    "NonFiniteError",
    "StepInfo",
    "__version__",
    "min_norm_solve",
    "min_norm_weights",
    "pareto",
    "reweight",
    "smooth_coefficients",
    "smooth_ib_loss",
    "weightings",
]

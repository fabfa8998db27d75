r"""Pareto-front utilities: dominance filtering, 2-D hypervolume, IGD and front tracing.

Front tracing (:func:`trace_front`) trains once per configuration; with ``rays=`` each
configuration is a preference ray (:func:`preference_rays`) and the front records how far each
final point is from its ray (:func:`ray_angles`). See ``docs/pareto.md`` and
``docs/multi_fashion.md``.

All objectives are **minimized**. To use an objective that should be maximized (for example the
information-plane term $I(Z;Y)$), pass its negative.

Inputs may be ``numpy`` arrays, ``torch`` tensors (any device, any float dtype) or nested lists;
they are converted to ``float64`` numpy arrays. Results are numpy arrays or Python floats.

Example:
    >>> import numpy as np
    >>> from mograd.pareto import hypervolume, non_dominated
    >>> pts = np.array([[0.0, 1.0], [0.5, 0.5], [1.0, 0.0], [0.8, 0.8]])
    >>> non_dominated(pts).tolist()
    [True, True, True, False]
    >>> hypervolume(pts, ref=[1.0, 1.0])
    0.25
"""

from .fronts import Front, trace_front
from .metrics import ArrayLike, hypervolume, igd, non_dominated, preference_rays, ray_angles

__all__ = [
    "ArrayLike",
    "Front",
    "hypervolume",
    "igd",
    "non_dominated",
    "preference_rays",
    "ray_angles",
    "trace_front",
]

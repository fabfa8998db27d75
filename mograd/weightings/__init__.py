"""Weightings: pure maps from the k x k Gram matrix of the per-loss gradients to k weights.

The pure layer beside :mod:`mograd.solver`: no parameters, no autograd. Every weighting is a
:class:`Weighting`; calling it on the Gram matrix ``G = J J^T`` returns weights ``w`` and the
optimizer's update is ``sum_i w_i g_i``. :func:`combine` adds gradient normalization and
MIB's reweighting and Smooth-IB coefficients around any of them.

=================  ===========================================================  ====================
name               method (paper)                                               file
=================  ===========================================================  ====================
``"min_norm"``     MinNorm / MGDA (Sener & Koltun 2018; MIB eq. 8)              ``_min_norm.py``
``"mean"``         Mean, equal weights                                          ``_constant.py``
(instance only)    Constant(w), fixed weights (linear scalarization)            ``_constant.py``
``"upgrad"``       UPGrad, sum of dual-cone projections (Quinton & Rey 2024)    ``_upgrad.py``
``"dualproj"``     DualProj, mean projected on the dual cone (GEM 2017)         ``_dualproj.py``
``"imtlg"``        IMTL-G, equal projections (Liu et al. 2021)                  ``_imtlg.py``
``"aligned_mtl"``  Aligned-MTL, balanced eigenbasis (Senushkin et al. 2023)     ``_aligned_mtl.py``
``"cagrad"``       CAGrad(c=0.5), conflict-averse (Liu et al. 2021)             ``_cagrad.py``
``"pcgrad"``       PCGrad, gradient surgery (Yu et al. 2020); seeded RNG        ``_pcgrad.py``
``"nash_mtl"``     Nash-MTL, bargaining solution (Navon et al. 2022); stateful  ``_nash_mtl.py``
``"random"``       Random loss weighting (Lin et al. 2022); seeded RNG          ``_random.py``
=================  ===========================================================  ====================

Each is described, with its formula and when to use it, in ``docs/weightings.md``.

:data:`WEIGHTINGS` maps each name accepted by ``MOWrapper(opt, weights=name)`` to its class.
"""

from __future__ import annotations

from ._aligned_mtl import AlignedMTL
from ._base import Weighting, check_gram
from ._cagrad import CAGrad
from ._combine import NORMALIZATIONS, Combination, Normalization, combine, normalizers
from ._constant import Constant, Mean
from ._dualproj import DualProj
from ._imtlg import IMTLG
from ._min_norm import MinNorm
from ._nash_mtl import NashMTL
from ._pcgrad import PCGrad
from ._random import Random
from ._upgrad import UPGrad

__all__ = [
    "IMTLG",
    "NORMALIZATIONS",
    "WEIGHTINGS",
    "AlignedMTL",
    "CAGrad",
    "Combination",
    "Constant",
    "DualProj",
    "Mean",
    "MinNorm",
    "NashMTL",
    "Normalization",
    "PCGrad",
    "Random",
    "UPGrad",
    "Weighting",
    "check_gram",
    "combine",
    "from_name",
    "normalizers",
]

#: Names accepted by ``MOWrapper(opt, weights=...)``, each with its default instance's class.
WEIGHTINGS: dict[str, type[Weighting]] = {
    "min_norm": MinNorm,
    "mgda": MinNorm,
    "mean": Mean,
    "upgrad": UPGrad,
    "dualproj": DualProj,
    "imtlg": IMTLG,
    "aligned_mtl": AlignedMTL,
    "cagrad": CAGrad,
    "pcgrad": PCGrad,
    "nash_mtl": NashMTL,
    "random": Random,
}


def from_name(name: str) -> Weighting:
    """A default instance of the weighting called ``name`` (see :data:`WEIGHTINGS`).

    Raises:
        ValueError: If the name is unknown; the message lists the known names.

    Example:
        >>> from mograd.weightings import from_name
        >>> from_name("mean")
        Mean()
    """
    key = name.lower().replace("-", "_")
    if key not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {name!r}; known names: {sorted(WEIGHTINGS)}")
    return WEIGHTINGS[key]()

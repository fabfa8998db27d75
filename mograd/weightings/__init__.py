r"""Weightings: pure maps from the $k \times k$ Gram matrix (or the $k$ loss values) to $k$ weights.

The pure layer beside :mod:`mograd.solver`: no parameters, no autograd. Every weighting is a
:class:`Weighting`; calling it on the Gram matrix $G = J J^\top$ returns weights $w$ and the
optimizer's update is $\sum_i w_i g_i$. A :class:`LossWeighting` (``needs_gram`` false)
needs only the loss values, ``c = weighting(None, losses)``, and its update is the gradient of
$\sum_i c_i L_i$: one backward pass. :func:`combine` adds gradient normalization and MIB's
reweighting and Smooth-IB coefficients around any of them.

Gram-matrix weightings (``needs_gram``; the per-loss gradients or their Gram matrix):

| name | method (paper) | file |
|---|---|---|
| ``"min_norm"`` | MinNorm / MGDA (Sener & Koltun 2018; MIB eq. 8) | ``_min_norm.py`` |
| ``"mean"`` | Mean, equal weights | ``_constant.py`` |
| ``"sum"`` | Sum, all weights 1 | ``_sum.py`` |
| (instance only) | Constant(w), fixed weights (linear scalarization) | ``_constant.py`` |
| ``"upgrad"`` | UPGrad, sum of dual-cone projections (Quinton & Rey 2024) | ``_upgrad.py`` |
| ``"dualproj"`` | DualProj, mean projected on the dual cone (GEM 2017) | ``_dualproj.py`` |
| ``"imtlg"`` | IMTL-G, equal projections (Liu et al. 2021) | ``_imtlg.py`` |
| ``"aligned_mtl"`` | Aligned-MTL, eigenbasis (Senushkin et al. 2023) | ``_aligned_mtl.py`` |
| ``"cagrad"`` | CAGrad(c=0.5), conflict-averse (Liu et al. 2021) | ``_cagrad.py`` |
| ``"pcgrad"`` | PCGrad, gradient surgery (Yu et al. 2020); seeded RNG | ``_pcgrad.py`` |
| ``"nash_mtl"`` | Nash-MTL, bargaining solution (Navon et al. 2022); stateful | ``_nash_mtl.py`` |
| ``"fairgrad"`` | FairGrad, alpha-fair (Ban & Ji 2024) | ``_fairgrad.py`` |
| ``"config"`` | ConFIG, conflict-free direction (Liu et al. 2024) | ``_config.py`` |
| ``"gradvac"`` | GradVac, cosine targets (Wang et al. 2021); stateful | ``_gradvac.py`` |
| ``"excess_mtl"`` | ExcessMTL, excess risks (He et al. 2024); stateful | ``_excess_mtl.py`` |
| ``"cr_mogm"`` | CR-MOGM, EMA of any weighting (Zhou et al. 2022); stateful | ``_crmogm.py`` |
| ``"krum"`` | Krum / Multi-Krum (Blanchard et al. 2017) | ``_krum.py`` |
| ``"pcd"`` | PCD, priority-constrained (Varam et al. 2026); stateful | ``_pcd.py`` |
| ``"modo"`` | MoDo (Chen et al. 2023); stateful | ``_modo.py`` |
| ``"sdmgrad"`` | SDMGrad (Xiao et al. 2023); stateful | ``_sdmgrad.py`` |
| ``"gradnorm"`` | GradNorm, learned (Chen et al. 2018); uses losses | ``_gradnorm.py`` |
| ``"imtl"`` | IMTL, IMTL-G + IMTL-L (Liu et al. 2021); uses losses | ``_imtl.py`` |

Loss-level weightings (``needs_gram`` false; one backward pass):

| name | method (paper) | file |
|---|---|---|
| ``"random"`` | RLW, random weights (Lin et al. 2022); seeded RNG | ``_random.py`` |
| ``"uw"`` | UW, learned log-variances (Kendall et al. 2018) | ``_uw.py`` |
| ``"dwa"`` | DWA, dynamic weight average (Liu et al. 2019) | ``_dwa.py`` |
| ``"famo"`` | FAMO, fast adaptive (Liu et al. 2023) | ``_famo.py`` |
| ``"stch"`` | STCH, smooth Tchebycheff (Lin et al. 2024) | ``_stch.py`` |
| ``"imtl_l"`` | IMTL-L, learned loss scales (Liu et al. 2021) | ``_imtl_l.py`` |
| ``"gls"`` | GLS, geometric mean (Chennupati et al. 2019) | ``_gls.py`` |
| ``"cosmos"`` | COSMOS, cosine-penalized (Ruchte & Grabocka 2021) | ``_cosmos.py`` |
| ``"pbi"`` | PBI, boundary intersection (Zhang & Li 2007) | ``_pbi.py`` |

Each is described, with its formula, cost and when to use it, in ``docs/weightings.md``.

:data:`WEIGHTINGS` maps each name accepted by ``MOWrapper(opt, weights=name)`` to its class.
"""

from __future__ import annotations

from ._aligned_mtl import AlignedMTL
from ._base import LossWeighting, Weighting, check_gram, check_loss_vector
from ._cagrad import CAGrad
from ._combine import NORMALIZATIONS, Combination, Normalization, combine, normalizers
from ._config import ConFIG
from ._constant import Constant, Mean
from ._cosmos import COSMOS
from ._crmogm import CRMOGM
from ._dualproj import DualProj
from ._dwa import DWA
from ._excess_mtl import ExcessMTL
from ._fairgrad import FairGrad
from ._famo import FAMO
from ._gls import GLS
from ._gradnorm import GradNorm
from ._gradvac import GradVac
from ._imtl import IMTL
from ._imtl_l import IMTLL
from ._imtlg import IMTLG
from ._krum import Krum
from ._min_norm import MinNorm
from ._modo import MoDo
from ._nash_mtl import NashMTL
from ._pbi import PBI
from ._pcd import PCD
from ._pcgrad import PCGrad
from ._random import Random
from ._sdmgrad import SDMGrad
from ._stch import STCH
from ._sum import Sum
from ._upgrad import UPGrad
from ._uw import UW

__all__ = [
    "COSMOS",
    "CRMOGM",
    "DWA",
    "FAMO",
    "GLS",
    "IMTL",
    "IMTLG",
    "IMTLL",
    "NORMALIZATIONS",
    "PBI",
    "PCD",
    "STCH",
    "UW",
    "WEIGHTINGS",
    "AlignedMTL",
    "CAGrad",
    "Combination",
    "ConFIG",
    "Constant",
    "DualProj",
    "ExcessMTL",
    "FairGrad",
    "GradNorm",
    "GradVac",
    "Krum",
    "LossWeighting",
    "Mean",
    "MinNorm",
    "MoDo",
    "NashMTL",
    "Normalization",
    "PCGrad",
    "Random",
    "SDMGrad",
    "Sum",
    "UPGrad",
    "Weighting",
    "check_gram",
    "check_loss_vector",
    "combine",
    "from_name",
    "normalizers",
]

#: Names accepted by ``MOWrapper(opt, weights=...)``, each with its default instance's class.
WEIGHTINGS: dict[str, type[Weighting]] = {
    "min_norm": MinNorm,
    "mgda": MinNorm,
    "mean": Mean,
    "sum": Sum,
    "upgrad": UPGrad,
    "dualproj": DualProj,
    "imtlg": IMTLG,
    "imtl_g": IMTLG,
    "aligned_mtl": AlignedMTL,
    "cagrad": CAGrad,
    "pcgrad": PCGrad,
    "nash_mtl": NashMTL,
    "fairgrad": FairGrad,
    "config": ConFIG,
    "gradvac": GradVac,
    "excess_mtl": ExcessMTL,
    "cr_mogm": CRMOGM,
    "krum": Krum,
    "pcd": PCD,
    "modo": MoDo,
    "sdmgrad": SDMGrad,
    "gradnorm": GradNorm,
    "imtl": IMTL,
    "random": Random,
    "rlw": Random,
    "uw": UW,
    "dwa": DWA,
    "famo": FAMO,
    "stch": STCH,
    "imtl_l": IMTLL,
    "gls": GLS,
    "geometric_mean": GLS,
    "cosmos": COSMOS,
    "pbi": PBI,
}


def from_name(name: str) -> Weighting:
    """A default instance of the weighting called ``name`` (see :data:`WEIGHTINGS`).

    Raises:
        ValueError: If the name is unknown; the message lists the known names.

    Example:
        >>> from mograd.weightings import from_name
        >>> from_name("mean")
        Mean()
        >>> from_name("IMTL-L").needs_gram
        False
    """
    key = name.lower().replace("-", "_")
    if key not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {name!r}; known names: {sorted(WEIGHTINGS)}")
    return WEIGHTINGS[key]()

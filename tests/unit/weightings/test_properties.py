"""TorchJD's aggregator property tests, replayed on every Gram-matrix weighting.

The aggregator is ``A(J) = J^T w(J J^T)`` (fresh instances: the first step of the stateful
ones). The properties, inputs and tolerances are those of TorchJD's ``tests/unit/aggregation``
(its ``_asserts.py`` and ``_inputs.py``, re-implemented here from their definitions in
``_inputs.py``): expected structure on the scaled and typical matrices, non-conflicting,
permutation invariance and linearity under scaling on the typical matrices, strong
stationarity on the non-strongly-stationary ones. Two deliberate differences: the Gram
matrix is formed in float64 from the float32 Jacobians (the methods here solve exactly, and a
float32 Gram matrix of 20 linearly dependent rows is indefinite at 1e-8 and ill-posed at the
1e-4 level for the near-degenerate strictly weak matrices; the float32 path is checked in
``test_numerics.py``), and strong stationarity asks ``|A(J)| > 1e-5 |J|`` (TorchJD: an
absolute 5e-3; the exact UPGrad aggregate of one strictly weak matrix is 6.4e-4).

Which property applies to which method (and why), asserted below:

- structure: every method (Krum on k >= 3).
- non-conflicting: MinNorm, UPGrad, DualProj (by construction), CAGrad with c >= 1 (the
  paper's Prop. 3.2), Nash-MTL and FairGrad(alpha=1) (``alpha_i (G alpha)_i = 1 > 0``), CR-MOGM
  around MinNorm (its first step is MinNorm's).
- permutation invariance: every symmetric method; not PCGrad, GradVac (random orders),
  Random (random draws) or PCD (loss 0 is the primary).
- linear under scaling: Mean, Sum, Random (same draws), UPGrad (Quinton & Rey 2024),
  PCGrad (each projection is positively homogeneous in each row), ConFIG (unit gradients,
  length linear in the rows).
- strong stationarity: the methods whose weights are positive by construction, so that
  ``J^T w = 0`` means strong stationarity: Mean, Sum, Random, UPGrad, DualProj (``w >= p``),
  Nash-MTL and FairGrad (``w > 0``), ExcessMTL (softmax weights).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from mograd.weightings import (
    CRMOGM,
    IMTL,
    IMTLG,
    PCD,
    AlignedMTL,
    CAGrad,
    ConFIG,
    DualProj,
    ExcessMTL,
    FairGrad,
    GradNorm,
    GradVac,
    Krum,
    Mean,
    MinNorm,
    MoDo,
    NashMTL,
    PCGrad,
    Random,
    SDMGrad,
    Sum,
    UPGrad,
    Weighting,
)

from ._inputs import property_matrices

Factory = Callable[[], Weighting]
METHODS: dict[str, Factory] = {
    "mean": Mean,
    "sum": Sum,
    "min_norm": MinNorm,
    "upgrad": UPGrad,
    "dualproj": DualProj,
    "imtlg": IMTLG,
    "aligned_mtl": AlignedMTL,
    "cagrad(0.5)": CAGrad,
    "cagrad(1)": lambda: CAGrad(c=1.0),
    "cagrad(2)": lambda: CAGrad(c=2.0),
    "pcgrad": PCGrad,
    "nash_mtl": NashMTL,
    "fairgrad(1)": FairGrad,
    "fairgrad(2)": lambda: FairGrad(alpha=2.0),
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
}
NON_CONFLICTING = ["min_norm", "upgrad", "dualproj", "cagrad(1)", "cagrad(2)", "nash_mtl"]
NON_CONFLICTING += ["fairgrad(1)", "cr_mogm"]
NOT_SYMMETRIC = {"pcgrad", "gradvac", "random", "pcd"}
LINEAR = ["mean", "sum", "random", "upgrad", "pcgrad", "config"]
STRONG = ["mean", "sum", "random", "upgrad", "dualproj", "nash_mtl", "fairgrad(1)"]
STRONG += ["excess_mtl"]

PM = property_matrices()
TYPICAL = {**PM["zero"], **PM["normal"], **PM["strong"], **PM["strictly_weak"], **PM["non_weak"]}
NON_STRONG = {**PM["strictly_weak"], **PM["non_weak"]}


def aggregate(factory: Factory, j: torch.Tensor) -> torch.Tensor:
    j = j.double()
    w = factory()(j @ j.T, torch.ones(j.shape[0], dtype=torch.float64))
    return j.T @ w


def usable(name: str, j: torch.Tensor) -> bool:
    return name != "krum" or j.shape[0] >= 3


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("name", sorted(METHODS))
def test_expected_structure(name: str) -> None:
    """Finite aggregates of the right shape, no exception, on every scaled and typical
    matrix, with the Gram matrix in float64 and in float32."""
    for label, j in {**PM["scaled"], **TYPICAL}.items():
        if not usable(name, j):
            continue
        v = aggregate(METHODS[name], j)
        assert v.shape == (j.shape[1],) and torch.isfinite(v).all(), (label, v)
        w = METHODS[name]()(j @ j.T, torch.ones(j.shape[0]))
        assert w.dtype == torch.float32 and torch.isfinite(w).all(), (label, w)


@pytest.mark.parametrize("name", NON_CONFLICTING)
def test_non_conflicting(name: str) -> None:
    for label, j in TYPICAL.items():
        d = j.double() @ aggregate(METHODS[name], j)
        positive = d[d >= 0]
        torch.testing.assert_close(
            positive.norm(), d.norm(), atol=4e-4, rtol=4e-4, msg=lambda m, lb=label: f"{lb}: {m}"
        )


@pytest.mark.parametrize("name", sorted(set(METHODS) - NOT_SYMMETRIC))
def test_permutation_invariant(name: str) -> None:
    gen = torch.Generator().manual_seed(0)
    for label, j in TYPICAL.items():
        if not usable(name, j):
            continue
        v = aggregate(METHODS[name], j)
        for _ in range(3):
            perm = torch.randperm(j.shape[0], generator=gen)
            torch.testing.assert_close(
                aggregate(METHODS[name], j[perm]),
                v,
                atol=1e-4,
                rtol=1e-4,
                msg=lambda m, lb=label: f"{lb}: {m}",
            )


@pytest.mark.parametrize("name", LINEAR)
def test_linear_under_scaling(name: str) -> None:
    gen = torch.Generator().manual_seed(1)
    for label, j in TYPICAL.items():
        jd = j.double()
        for _ in range(3):
            c1, c2 = (torch.rand(j.shape[0], generator=gen, dtype=torch.float64) for _ in "ab")
            a, b = (torch.rand((), generator=gen, dtype=torch.float64) for _ in "ab")
            x1 = aggregate(METHODS[name], torch.diag(c1) @ jd)
            x2 = aggregate(METHODS[name], torch.diag(c2) @ jd)
            x = aggregate(METHODS[name], torch.diag(a * c1 + b * c2) @ jd)
            torch.testing.assert_close(
                x, a * x1 + b * x2, atol=1e-4, rtol=1e-4, msg=lambda m, lb=label: f"{lb}: {m}"
            )


@pytest.mark.parametrize("name", STRONG)
def test_strongly_stationary(name: str) -> None:
    """Not strongly stationary (no ``w > 0`` with ``J^T w = 0``) implies ``A(J) != 0``."""
    for label, j in NON_STRONG.items():
        assert float(aggregate(METHODS[name], j).norm()) > 1e-5 * float(j.norm()), label


def test_min_norm_is_not_strongly_stationary() -> None:
    """The contrapositive fails for MGDA, as it should: on a strictly weakly stationary J
    the min-norm point of the convex hull is 0 (with some zero weights)."""
    j = PM["strictly_weak"]["strictly_weak(20, 10, 10)"]
    assert float(aggregate(MinNorm, j).norm()) < 1e-6 * float(j.norm())

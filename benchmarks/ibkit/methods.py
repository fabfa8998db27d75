"""The method registry: which bottleneck, which loss, which optimizer.

=============  =============  ==========  ===============================================
name           bottleneck     L_info      optimisation
=============  =============  ==========  ===============================================
RES18          deterministic  --          Adam on CE
VIB            gaussian       mean KL     Adam on CE + beta KL
NIB            noisy          I_hat       Adam on CE + beta I_hat
VIB-squared    gaussian       mean KL     Adam on CE + beta KL^2
NIB-squared    noisy          I_hat       Adam on CE + beta I_hat^2
MIB            gaussian       mean KL     MOWrapper(Adam) on (CE, KL): min-norm, p=2, mu=0.2
MIB w.o. s     gaussian       mean KL     same without Smooth-IB (mu=None)
MIB w.o. aw    gaussian       mean KL     same with fixed weights (0.5, 0.5), p=2, mu=0.2
VIB w. aw      gaussian       mean KL     MOWrapper(Adam) on (CE, KL): min-norm, p=1, no
                                          smoothing (MGDA)
MIB-l2 *       gaussian       mean KL     MIB on l2-normalized gradients g_i / |g_i|
MIB-loss *     gaussian       mean KL     MIB on loss-normalized gradients g_i / L_i
MGDA-l2 *      gaussian       mean KL     plain min-norm (p=1, no smoothing) on g_i / |g_i|
MIB-l2-orig *  gaussian       mean KL     weights of the l2-normalized problem applied to
                                          the raw gradients (original MGDA convention)
=============  =============  ==========  ===============================================

``*``: interpretations the paper does not state (gradient normalization, docs/api.md
and docs/benchmarks.md). The paper's eq. 8 is the min-norm problem on the raw gradients, which
is what ``MIB`` runs. The normalized variants follow the LibMTL convention: the weights come
from the normalized Gram matrix and the update is ``sum_i c_i g_i / n_i``, which makes the step
invariant to rescaling either loss (so the reduction of the KL over the K dimensions, a hidden
beta for raw MIB and VIB, does not matter). ``MIB-l2-orig`` is not in the default method lists:
on the IB problem it collapses the representation (docs/benchmarks.md).

The multi-objective methods see the VIB loss *pair* (CE, KL) without beta: choosing the
trade-off is the optimizer's job there. "RES18" is the name of the deterministic baseline in
the paper's tables; with ``--backbone cnn`` it is the same deterministic head on the small CNN.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MAIN_METHODS = ("RES18", "VIB", "NIB", "VIB-squared", "NIB-squared", "MIB")
ABLATION_METHODS = ("VIB w. aw", "MIB w.o. aw", "MIB w.o. s")
PAPER_METHODS = MAIN_METHODS + ABLATION_METHODS
# Gradient-normalized variants: interpretations the paper does not state.
INTERPRETATION_METHODS = ("MIB-l2", "MIB-loss", "MGDA-l2")
# Registered but not run by default (collapses the representation on the IB problem).
OPTIONAL_METHODS = ("MIB-l2-orig",)
ALL_METHODS = PAPER_METHODS + INTERPRETATION_METHODS
KNOWN_METHODS = ALL_METHODS + OPTIONAL_METHODS
# The columns of the interpretations table: the references first, then the variants.
INTERPRETATION_TABLE = ("VIB", "MIB", *INTERPRETATION_METHODS, *OPTIONAL_METHODS)
# The bars of the paper's Figure 5, in its order.
ABLATION_FIGURE = ("VIB", "VIB w. aw", "MIB w.o. aw", "MIB w.o. s", "MIB")


@dataclass(frozen=True)
class MethodSpec:
    """How one method is built and trained.

    Attributes:
        name: Display name.
        kind: Bottleneck kind for :func:`ibkit.models.build_model`.
        squared: Squared IB Lagrangian (scalar methods only).
        multi_objective: Train with ``mograd.MOWrapper`` on (L_pred, L_info).
        mo_options: Keyword arguments of ``mograd.MOWrapper`` (weights, power, mu,
            normalize, normalized_update).
        interpretation: A variant the paper does not state (labelled so in the tables).
    """

    name: str
    kind: str
    squared: bool = False
    multi_objective: bool = False
    mo_options: dict[str, Any] = field(default_factory=dict)
    interpretation: bool = False


_SPECS: dict[str, MethodSpec] = {
    "RES18": MethodSpec("RES18", "deterministic"),
    "VIB": MethodSpec("VIB", "gaussian"),
    "NIB": MethodSpec("NIB", "noisy"),
    "VIB-squared": MethodSpec("VIB-squared", "gaussian", squared=True),
    "NIB-squared": MethodSpec("NIB-squared", "noisy", squared=True),
    "MIB": MethodSpec(
        "MIB",
        "gaussian",
        multi_objective=True,
        mo_options={"weights": "min_norm", "power": 2.0, "mu": 0.2},
    ),
    "MIB w.o. s": MethodSpec(
        "MIB w.o. s",
        "gaussian",
        multi_objective=True,
        mo_options={"weights": "min_norm", "power": 2.0, "mu": None},
    ),
    "MIB w.o. aw": MethodSpec(
        "MIB w.o. aw",
        "gaussian",
        multi_objective=True,
        mo_options={"weights": (0.5, 0.5), "power": 2.0, "mu": 0.2},
    ),
    "VIB w. aw": MethodSpec(
        "VIB w. aw",
        "gaussian",
        multi_objective=True,
        mo_options={"weights": "min_norm", "power": 1.0, "mu": None},
    ),
    "MIB-l2": MethodSpec(
        "MIB-l2",
        "gaussian",
        multi_objective=True,
        mo_options={"weights": "min_norm", "power": 2.0, "mu": 0.2, "normalize": "l2"},
        interpretation=True,
    ),
    "MIB-loss": MethodSpec(
        "MIB-loss",
        "gaussian",
        multi_objective=True,
        mo_options={"weights": "min_norm", "power": 2.0, "mu": 0.2, "normalize": "loss"},
        interpretation=True,
    ),
    "MGDA-l2": MethodSpec(
        "MGDA-l2",
        "gaussian",
        multi_objective=True,
        mo_options={"weights": "mgda", "normalize": "l2"},
        interpretation=True,
    ),
    "MIB-l2-orig": MethodSpec(
        "MIB-l2-orig",
        "gaussian",
        multi_objective=True,
        mo_options={
            "weights": "min_norm",
            "power": 2.0,
            "mu": 0.2,
            "normalize": "l2",
            "normalized_update": False,
        },
        interpretation=True,
    ),
}

# Accepted spellings on the command line (case-insensitive, '_' for spaces, '-sq' for squared).
_ALIASES = {
    "vib-sq": "VIB-squared",
    "nib-sq": "NIB-squared",
    "vib_squared": "VIB-squared",
    "nib_squared": "NIB-squared",
    "mib-wo-s": "MIB w.o. s",
    "mib-wo-aw": "MIB w.o. aw",
    "vib-w-aw": "VIB w. aw",
    "mib_l2": "MIB-l2",
    "mib_loss": "MIB-loss",
    "mgda_l2": "MGDA-l2",
}


def canonical_name(name: str) -> str:
    """Resolve a method name or alias to its registry name.

    Args:
        name: E.g. ``"MIB"``, ``"vib-sq"``, ``"MIB w.o. s"``, ``"mib-wo-s"``.

    Returns:
        The registry name.

    Raises:
        ValueError: Unknown method.
    """
    for key in _SPECS:
        if key.lower() == name.lower():
            return key
    alias = _ALIASES.get(name.lower())
    if alias is not None:
        return alias
    known = ", ".join(repr(k) for k in KNOWN_METHODS)
    raise ValueError(
        f"unknown method {name!r}; expected one of {known} (or aliases "
        f"{', '.join(sorted(_ALIASES))})"
    )


def get_method(name: str) -> MethodSpec:
    """The :class:`MethodSpec` of a method name or alias."""
    return _SPECS[canonical_name(name)]


def slug(name: str) -> str:
    """File-name-safe form of a method name, e.g. ``"MIB w.o. s" -> "MIB_w.o._s"``."""
    return name.replace(" ", "_").replace("/", "_")

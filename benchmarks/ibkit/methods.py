"""The method registry: which bottleneck, which loss, which optimizer (SPEC 1 and 2).

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
=============  =============  ==========  ===============================================

The multi-objective methods see the VIB loss *pair* (CE, KL) without beta: choosing the
trade-off is the optimizer's job there. "RES18" is the name of the deterministic baseline in
the paper's tables; with ``--backbone cnn`` it is the same deterministic head on the small CNN.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MAIN_METHODS = ("RES18", "VIB", "NIB", "VIB-squared", "NIB-squared", "MIB")
ABLATION_METHODS = ("VIB w. aw", "MIB w.o. aw", "MIB w.o. s")
ALL_METHODS = MAIN_METHODS + ABLATION_METHODS
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
        mo_options: Keyword arguments of ``mograd.MOWrapper`` (weights, power, mu).
    """

    name: str
    kind: str
    squared: bool = False
    multi_objective: bool = False
    mo_options: dict[str, Any] = field(default_factory=dict)


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
    known = ", ".join(repr(k) for k in ALL_METHODS)
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

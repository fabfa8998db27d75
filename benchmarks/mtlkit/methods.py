"""Every compared method as ``mograd.MOWrapper`` keyword arguments.

Single-point methods (one run per seed):

==============  ==================================================================
label           ``MOWrapper(inner, ...)``
==============  ==================================================================
Mean            ``weights="mean"`` (equal weights: the gradient of the mean loss)
MGDA            ``weights="mgda"`` (min-norm weights, Sener & Koltun 2018)
MIB             ``weights="min_norm"`` (power 2, Smooth-IB mu = 0.2: the MIB defaults)
MIB-l2          ``weights="min_norm", normalize="l2"``
MIB-loss        ``weights="min_norm", normalize="loss"``
UPGrad          ``weights="upgrad"``
DualProj        ``weights="dualproj"``
IMTL-G          ``weights="imtlg"``
Aligned-MTL     ``weights="aligned_mtl"``
CAGrad          ``weights="cagrad"``
PCGrad          ``weights=PCGrad(seed=s)``
Nash-MTL        ``weights="nash_mtl"``
Random          ``weights=Random(seed=s)``, ``s`` the run's seed
==============  ==================================================================

``<label> (repr)`` is the same method in representation mode (``opt.step(losses,
features=z)``, MGDA-UB's approximation: the Gram matrix of the gradients with respect to the
shared 50-d representation). It exists for every method whose weights depend on the Gram
matrix (all but Mean and Random).

Front methods (one run per preference ray, :func:`mograd.pareto.preference_rays`; the ray
``r`` is normalized to sum 1):

==============  ==================================================================
LS              ``weights=Constant(r)`` (linear scalarization, the usual baseline)
UPGrad-pref     ``weights=UPGrad(pref_vector=r)``
DualProj-pref   ``weights=DualProj(pref_vector=r)``
AlignedMTL-pref ``weights=AlignedMTL(pref_vector=r)``
EPO-style-pref  ``weights=RayBalance(pref_vector=r)`` (:mod:`mtlkit.epo`, this kit's
                EPO-style ray-targeting weighting)
==============  ==================================================================

A method whose weighting this checkout of mograd does not have yet is reported as
unavailable (``available``) and left out of a run with a message.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

import mograd

__all__ = [
    "FRONT_METHODS",
    "SINGLE_METHODS",
    "Method",
    "available",
    "expand",
    "resolve_names",
]


def _weighting(cls_name: str, **kwargs: Any) -> Any:
    """An instance of ``mograd.weightings.<cls_name>`` (AttributeError when it is missing),
    or of this kit's :class:`~mtlkit.epo.RayBalance`."""
    if cls_name == "RayBalance":
        from .epo import RayBalance

        return RayBalance(**kwargs)
    import mograd.weightings as W

    return getattr(W, cls_name)(**kwargs)


@dataclass(frozen=True)
class Method:
    """One trainable configuration: a label, the wrapper's keyword arguments and the mode.

    Attributes:
        label: Row name in tables and figures (``"LS r=0.85/0.15"`` for a front point).
        group: The method name (``"LS"``, ``"MGDA"``, ``"MGDA (repr)"`` ...); a front's points
            share it.
        make_kwargs: ``make_kwargs(seed)`` builds the ``MOWrapper`` keyword arguments (fresh
            weighting objects; the random weightings are seeded with the run's seed).
        describe: The same keyword arguments as text, for the results' record.
        representation: Step in representation mode (``features=z``).
        ray: The preference ray (sum 1) of a front point, else ``None``.
        legacy: Equivalent keyword arguments for a mograd without the weighting layer
            (``weights="min_norm"|"equal"|sequence``, ``power``, ``mu``), or ``None``.
    """

    label: str
    group: str
    make_kwargs: Callable[[int], dict[str, Any]]
    describe: str
    representation: bool = False
    ray: tuple[float, ...] | None = None
    legacy: dict[str, Any] | None = field(default=None)


@dataclass(frozen=True)
class _Single:
    kwargs: dict[str, Any]
    legacy: dict[str, Any] | None
    gram_based: bool = True
    seeded: str | None = None  # class seeded with the run's seed instead of the name


SINGLE_METHODS: dict[str, _Single] = {
    "Mean": _Single({"weights": "mean"}, {"weights": "equal", "power": 1.0, "mu": None}, False),
    "MGDA": _Single({"weights": "mgda"}, {"weights": "min_norm", "power": 1.0, "mu": None}),
    "MIB": _Single({"weights": "min_norm"}, {"weights": "min_norm"}),
    "MIB-l2": _Single({"weights": "min_norm", "normalize": "l2"}, None),
    "MIB-loss": _Single({"weights": "min_norm", "normalize": "loss"}, None),
    "UPGrad": _Single({"weights": "upgrad"}, None),
    "DualProj": _Single({"weights": "dualproj"}, None),
    "IMTL-G": _Single({"weights": "imtlg"}, None),
    "Aligned-MTL": _Single({"weights": "aligned_mtl"}, None),
    "CAGrad": _Single({"weights": "cagrad"}, None),
    "PCGrad": _Single({"weights": "pcgrad"}, None, True, "PCGrad"),
    "Nash-MTL": _Single({"weights": "nash_mtl"}, None),
    "Random": _Single({"weights": "random"}, None, False, "Random"),
}

#: Front methods: name -> mograd.weightings class taking ``pref_vector`` (None for LS).
FRONT_METHODS: dict[str, str | None] = {
    "LS": None,
    "UPGrad-pref": "UPGrad",
    "DualProj-pref": "DualProj",
    "AlignedMTL-pref": "AlignedMTL",
    "EPO-style-pref": "RayBalance",
}

REPR_SUFFIX = " (repr)"


def all_names() -> list[str]:
    """Every accepted method name, in table order."""
    names = list(FRONT_METHODS)
    for name, spec in SINGLE_METHODS.items():
        names.append(name)
        if spec.gram_based:
            names.append(name + REPR_SUFFIX)
    return names


def resolve_names(names: Sequence[str]) -> list[str]:
    """Canonical method names for user input (case- and separator-insensitive).

    Raises:
        ValueError: An unknown name; the message lists the known ones.
    """

    def key(s: str) -> str:
        return "".join(ch for ch in s.lower() if ch.isalnum())

    known = {key(n): n for n in all_names()}
    out = []
    for n in names:
        k = key(n)
        if k not in known:
            raise ValueError(f"unknown method {n!r}; known: {', '.join(all_names())}")
        if known[k] not in out:
            out.append(known[k])
    return out


def _fmt(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


def expand(name: str, rays: np.ndarray) -> list[Method]:
    """The runs of one method: one for a single-point method, one per ray for a front."""
    if name in FRONT_METHODS:
        cls = FRONT_METHODS[name]
        out = []
        for r in np.asarray(rays, dtype=np.float64):
            w = tuple(float(v) for v in r / r.sum())
            label = f"{name} r={w[0]:.2f}/{w[1]:.2f}"
            if cls is None:

                def make(seed: int, w: tuple[float, ...] = w) -> dict[str, Any]:
                    return {"weights": _weighting("Constant", weights=list(w))}

                desc = f"weights=Constant({list(np.round(w, 4))})"
                legacy = {"weights": w, "power": 1.0, "mu": None}
            else:

                def make(seed: int, w: tuple[float, ...] = w, cls: str = cls) -> dict[str, Any]:
                    return {"weights": _weighting(cls, pref_vector=torch.tensor(w))}

                desc = f"weights={cls}(pref_vector={list(np.round(w, 4))})"
                legacy = None
            out.append(Method(label, name, make, desc, False, w, legacy))
        return out
    representation = name.endswith(REPR_SUFFIX)
    base = name[: -len(REPR_SUFFIX)] if representation else name
    spec = SINGLE_METHODS[base]

    def make_single(seed: int, spec: _Single = spec) -> dict[str, Any]:
        if spec.seeded:
            return {"weights": _weighting(spec.seeded, seed=seed)}
        return dict(spec.kwargs)

    kw = {"weights": f"{spec.seeded}(seed=<run seed>)"} if spec.seeded else spec.kwargs
    desc = _fmt(kw) + (", step(..., features=z)" if representation else "")
    return [Method(name, name, make_single, desc, representation, None, spec.legacy)]


def build_optimizer(
    method: Method, inner: torch.optim.Optimizer, seed: int = 0
) -> tuple[mograd.MOWrapper, str]:
    """``MOWrapper(inner, **kwargs)``, falling back to the legacy spelling if needed.

    Returns:
        The wrapper and ``"weightings"`` or ``"legacy"`` (which spelling was used).

    Raises:
        ValueError, TypeError, AttributeError: The method is not available in this mograd.
    """
    try:
        return mograd.MOWrapper(inner, **method.make_kwargs(seed)), "weightings"
    except (ValueError, TypeError, AttributeError):
        if method.legacy is None:
            raise
        return mograd.MOWrapper(inner, **method.legacy), "legacy"


def available(method: Method) -> str | None:
    """``None`` when this mograd can run ``method``, else the reason it cannot."""
    p = torch.zeros(2, requires_grad=True)
    try:
        opt, _ = build_optimizer(method, torch.optim.SGD([p], lr=0.1))
        loss = [(p * torch.tensor([1.0, 0.0])).sum() ** 2, (p - 1.0).pow(2).sum()]
        opt.zero_grad()
        if method.representation:
            z = p * 1.0
            opt.step([z[0] ** 2, (z[1] - 1.0) ** 2], features=z)
        else:
            opt.step(loss)
    except (ValueError, TypeError, AttributeError, ImportError, NotImplementedError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None

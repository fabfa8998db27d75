"""Every compared method: the registry's weightings, their variants, the single-task models.

The list is built from :data:`mograd.weightings.WEIGHTINGS` when the benchmark runs, so a
weighting added to the registry is benchmarked without a change here. For each distinct
weighting class (aliases share one row; ``MinNorm`` is spelled ``weights="mgda"``, plain
MGDA):

- ``<name>``: ``MOWrapper(inner, weights="<registry name>")``, or
  ``weights=<Class>(seed=s)`` with ``s`` the run's seed for classes that take a ``seed``;
- ``<name>-l2`` / ``<name>-loss``: the same with ``normalize="l2"`` / ``"loss"``, each where
  it changes the update on tasks of very different scales (:func:`scale_sensitive`;
  Nash-MTL and IMTL-G, for instance, are invariant, so normalizing them changes nothing;
  the loss-level weightings, which need no Gram matrix, allow ``"loss"`` only);
- ``<name> (repr)``: representation mode, ``opt.step(losses, features=z)`` (MGDA-UB's
  approximation: the Gram matrix of the gradients with respect to the shared
  representation), for every row that depends on the Gram matrix (all but those whose
  weights ignore it, :func:`gram_based`, such as Mean and Random, unless ``normalize="l2"``).

Besides: ``MIB`` (``weights="min_norm"``: power 2, Smooth-IB mu 0.2, the MIB defaults),
``MIB-l2`` and ``MIB-loss``, and the single-task baselines ``single <task>`` (plain PyTorch:
``loss_t.backward(); inner.step()`` on that task's loss alone, same network).

Every multi-task run passes ``shared_params=`` the trunk's parameters, so the Gram matrix
(and the cosines) are those of the shared trunk; every parameter still receives
``sum_i c_i grad L_i``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

import mograd
from mograd.weightings import WEIGHTINGS, Weighting, combine

from .tasks import TASKS

__all__ = [
    "Method",
    "available",
    "build_optimizer",
    "catalogue",
    "gram_based",
    "needs_gram",
    "registry_rows",
    "resolve_names",
    "scale_sensitive",
]

REPR = " (repr)"
#: Display names of the classes whose class name is not the usual spelling.
LABELS = {
    "MinNorm": "MGDA",
    "IMTLG": "IMTL-G",
    "IMTLL": "IMTL-L",
    "AlignedMTL": "Aligned-MTL",
    "NashMTL": "Nash-MTL",
    "CRMOGM": "CR-MOGM",
}
#: Calls of a fresh instance before its weights are compared (stateful weightings such as
#: GradNorm or DWA start from equal weights).
CALLS = 3
#: The registry name used for a class with several (``MinNorm``: plain MGDA, not MIB).
PREFERRED = {"MinNorm": "mgda"}
NORMS = ("l2", "loss")


@dataclass(frozen=True)
class Method:
    """One trainable configuration.

    Attributes:
        label: Row name (``"UPGrad-l2"``, ``"MGDA (repr)"``, ``"single class"``).
        make_kwargs: ``make_kwargs(seed)``: the ``MOWrapper`` keyword arguments (fresh
            weighting objects; seeded classes get the run's seed).
        describe: The same keyword arguments as text, for the record.
        representation: Step in representation mode (``features=z``).
        single: Index of the task of a single-task baseline, else ``None``.
        base: The row this one varies (its own label for a base row).
        gram: Whether the step forms the Gram matrix (``False`` for the loss-level
            weightings and the single-task baselines: one backward pass).
    """

    label: str
    make_kwargs: Callable[[int], dict[str, Any]]
    describe: str
    representation: bool = False
    single: int | None = None
    base: str = ""
    gram: bool = True


@dataclass(frozen=True)
class _Row:
    label: str
    name: str
    cls: type[Weighting]
    seeded: bool


def registry_rows() -> list[_Row]:
    """One row per distinct weighting class of the registry, in registry order."""
    rows: dict[type[Weighting], _Row] = {}
    for name, cls in WEIGHTINGS.items():
        if cls in rows and PREFERRED.get(cls.__name__) != name:
            continue
        try:
            seeded = "seed" in inspect.signature(cls).parameters
        except (TypeError, ValueError):
            seeded = False
        rows[cls] = _Row(LABELS.get(cls.__name__, cls.__name__), name, cls, seeded)
    return list(rows.values())


def _factory(row: _Row) -> Callable[[int], Any]:
    """``seed -> weights=`` value: a seeded instance or the registry name."""
    if row.seeded:
        return lambda seed: row.cls(seed=seed)  # type: ignore[call-arg]
    return lambda seed: row.name


def _instance(row: _Row) -> Weighting:
    return row.cls(seed=0) if row.seeded else row.cls()  # type: ignore[call-arg]


def _probe() -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed 4-task Jacobian with rows of very different lengths, and loss values."""
    gen = torch.Generator().manual_seed(0)
    jac = torch.randn(len(TASKS), 40, generator=gen, dtype=torch.float64)
    jac[1] += 0.8 * jac[0]  # some alignment, some conflict
    jac[3] -= 0.5 * jac[2]
    return jac, torch.tensor([1.0, 30.0, 0.02, 3.0], dtype=torch.float64)


def _last(call: Callable[[Weighting], torch.Tensor], row: _Row) -> torch.Tensor:
    """What ``call`` returns on the :data:`CALLS`-th call of one fresh instance."""
    inst = _instance(row)
    for _ in range(CALLS - 1):
        call(inst)
    return call(inst)


def needs_gram(row: _Row) -> bool:
    """``False`` for the loss-level weightings (``LossWeighting``: one backward pass)."""
    return bool(getattr(row.cls, "needs_gram", True))


def scale_sensitive(row: _Row, normalize: str = "l2") -> bool:
    """Whether ``normalize=`` changes this weighting's update direction, at the third call
    of a fresh instance on a fixed Jacobian whose rows (and losses) are rescaled by 1, 30,
    0.02 and 3.

    ``"l2"`` is never offered for a loss-level weighting (it needs the gradient norms)."""
    gram_free = not needs_gram(row)
    if gram_free and normalize != "loss":
        return False
    jac, scale = _probe()
    jac = jac * scale[:, None]
    gram = None if gram_free else jac @ jac.T
    try:
        raw = _last(lambda w: combine(gram, scale, w).coefficients, row)
        normed = _last(lambda w: combine(gram, scale, w, normalize=normalize).coefficients, row)
    except Exception:
        return False
    a, b = jac.T @ raw.to(jac.dtype), jac.T @ normed.to(jac.dtype)
    cos = float(a @ b / (a.norm() * b.norm()).clamp_min(1e-300))
    return not cos > 0.999


def gram_based(row: _Row) -> bool:
    """Whether the weights depend on the Gram matrix (representation mode is meaningful),
    at the third call of a fresh instance."""
    if not needs_gram(row):
        return False
    jac, losses = _probe()
    g1 = jac @ jac.T
    g2 = torch.diag(torch.tensor([1.0, 4.0, 0.25, 2.0], dtype=torch.float64)) @ g1
    g2 = g2 @ g2.T / 3.0
    try:
        w1 = _last(lambda w: w(g1, losses), row)
        w2 = _last(lambda w: w(g2, losses), row)
    except Exception:
        return True
    return not torch.equal(w1, w2)  # learned weightings move slowly, but they move


def _multi(
    label: str,
    weights: Callable[[int], Any],
    shown: str,
    extra: dict[str, Any],
    base: str = "",
    gram: bool = True,
) -> Method:
    def make(seed: int) -> dict[str, Any]:
        return {"weights": weights(seed), **extra}

    desc = ", ".join([f"weights={shown}", *(f"{k}={v!r}" for k, v in extra.items())])
    return Method(label, make, desc, False, None, base or label, gram)


def catalogue() -> dict[str, Method]:
    """Every method this mograd can be asked for, by label (see the module docstring)."""
    out: dict[str, Method] = {}
    for t, task in enumerate(TASKS):
        label = f"single {task.name}"
        desc = f"plain PyTorch on the {task.name} loss alone"
        out[label] = Method(label, lambda seed: {}, desc, False, t, label, False)
    rows = registry_rows()
    for row in rows:
        shown = f"{row.cls.__name__}(seed=<run seed>)" if row.seeded else repr(row.name)
        f = _factory(row)
        gram = needs_gram(row)
        out[row.label] = _multi(row.label, f, shown, {}, row.label, gram)
        for norm in NORMS:
            if scale_sensitive(row, norm):
                lab = f"{row.label}-{norm}"
                out[lab] = _multi(lab, f, shown, {"normalize": norm}, row.label, gram)
    for mib in (None, *NORMS):
        lab = "MIB" if mib is None else f"MIB-{mib}"
        extra = {} if mib is None else {"normalize": mib}
        out[lab] = _multi(lab, lambda seed: "min_norm", "'min_norm'", extra, "MIB")
    by_label = {r.label: r for r in rows}
    for lab, m in list(out.items()):
        of = by_label.get(m.base)
        blind = of is not None and not gram_based(of) and "normalize='l2'" not in m.describe
        if m.single is not None or blind:  # nothing in these rows depends on the Gram matrix
            continue
        desc = m.describe + ", step(losses, features=z)"
        out[lab + REPR] = Method(lab + REPR, m.make_kwargs, desc, True, None, m.base, True)
    return out


def resolve_names(names: Sequence[str], known: Sequence[str]) -> list[str]:
    """Canonical labels for user input (case- and separator-insensitive).

    Raises:
        ValueError: An unknown name; the message lists the known ones.
    """

    def key(s: str) -> str:
        return "".join(ch for ch in s.lower() if ch.isalnum())

    table = {key(n): n for n in known}
    out: list[str] = []
    for n in names:
        if key(n) not in table:
            raise ValueError(f"unknown method {n!r}; known: {', '.join(known)}")
        if table[key(n)] not in out:
            out.append(table[key(n)])
    return out


def build_optimizer(
    method: Method, inner: torch.optim.Optimizer, shared: Iterable[torch.Tensor], seed: int
) -> mograd.MOWrapper:
    """``MOWrapper(inner, shared_params=shared, **method.make_kwargs(seed))``."""
    return mograd.MOWrapper(inner, shared_params=list(shared), **method.make_kwargs(seed))


def available(method: Method) -> str | None:
    """``None`` when this mograd can run ``method`` on four losses, else the reason."""
    if method.single is not None:
        return None
    p = torch.zeros(len(TASKS), requires_grad=True)
    try:
        opt = build_optimizer(method, torch.optim.SGD([p], lr=0.1), [p], 0)
        z = p * torch.tensor([1.0, 2.0, 0.5, 1.5])
        losses = [(z[i] - i) ** 2 + 0.1 * z.sum() ** 2 + 0.5 for i in range(len(TASKS))]
        opt.zero_grad()
        opt.step(losses, features=z) if method.representation else opt.step(losses)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None

"""The torch glue: :class:`MultiObjectiveOptimizer` (alias :data:`MOWrapper`).

The third of mograd's layers and the only one that touches parameters. One step:

1. per-loss gradients ``J`` (k x P) on the optimizer's parameters, one backward pass per
   loss (:mod:`mograd.gramian`); leaves outside the optimizer that the losses reach get
   their own small blocks;
2. under ``torch.distributed``, ``J`` and the loss values are averaged over the process
   group (:mod:`mograd._distributed`), so that every rank forms the same Gram matrix;
3. ``G = J_S J_S^T`` on the shared parameters S;
4. normalization, the weighting (min-norm by default, paper eq. 8), MIB's reweighting
   (eq. 12) and Smooth-IB coefficients (eqs. 13-14): :func:`mograd.weightings.combine`;
5. ``.grad += sum_i c_i J_i`` for every leaf that some loss reaches, as
   ``loss.backward()`` would write it;
6. the wrapped optimizer steps.

In *representation* mode (``features=z``, MGDA-UB) the Gram matrix is formed from the
gradients with respect to the shared representation ``z`` instead, and one backward pass of
``sum_i c_i L_i`` writes the gradients. ``docs/api.md`` states the full contract.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from . import _distributed as distributed
from ._checks import check_int, check_losses, check_number, loss_values
from .frugal import GramianEngine, weighted_gradients
from .gramian import accumulate_grad, gram, jacobian_rows, reached_leaves
from .solver import DEFAULT_MAX_ITER, DEFAULT_TOL
from .weightings import (
    NORMALIZATIONS,
    WEIGHTINGS,
    Combination,
    Constant,
    Mean,
    MinNorm,
    Weighting,
    combine,
    from_name,
)

__all__ = ["MOWrapper", "MultiObjectiveOptimizer", "NonFiniteError", "StepInfo"]

NonFinitePolicy = Literal["raise", "skip", "ignore"]
_POLICIES = ("raise", "skip", "ignore")
_LEGACY_NAMES = ("min_norm", "mib", "equal")


class _Unset:
    def __repr__(self) -> str:
        return "<default>"


_UNSET: Any = _Unset()


class NonFiniteError(FloatingPointError):
    """A loss or a gradient is NaN or infinite (raised with ``nonfinite="raise"``)."""


class StepInfo:
    """Diagnostics of one multi-objective backward pass.

    All tensor fields are detached, on the parameters' device, and computed without a
    device-to-host synchronization; call ``.tolist()`` or :meth:`as_dict` to read them.
    ``grad_norms`` and ``cosines`` are derived from the Gram matrix when first read, so a
    step whose diagnostics nobody reads does not pay for them.

    Attributes:
        weights: The weighting's weights ``w`` (min-norm ``w*`` by default), ``(k,)``.
        reweighted: ``w~ = w ** power``, shape ``(k,)``.
        coefficients: The coefficients ``c`` on the raw per-loss gradients: the combined
            gradient is ``sum_i c_i grad L_i``, shape ``(k,)``.
        losses: Loss values in at least float32 (averaged over the process group when
            distributed), ``(k,)``.
        grad_norms: Norms of the per-loss gradients on the shared parameters (or on the
            features in representation mode), ``(k,)``.
        cosines: Pairwise cosine similarities of those gradients, ``(k, k)``.
        iterations: Solver iterations (0 for k = 1 and for weightings without a solver,
            1 for the k = 2 closed form).
        skipped: ``True`` when a non-finite value made the step a no-op
            (``nonfinite="skip"``).
        normalizers: The gradient normalizers ``n`` (all ones for ``normalize="none"``).
    """

    _FIELDS = (
        "weights",
        "reweighted",
        "coefficients",
        "losses",
        "grad_norms",
        "cosines",
        "iterations",
        "skipped",
        "normalizers",
    )

    def __init__(
        self,
        weights: torch.Tensor,
        reweighted: torch.Tensor,
        coefficients: torch.Tensor,
        losses: torch.Tensor,
        grad_norms: torch.Tensor,
        cosines: torch.Tensor,
        iterations: int,
        skipped: bool = False,
        normalizers: torch.Tensor | None = None,
    ) -> None:
        self.weights = weights
        self.reweighted = reweighted
        self.coefficients = coefficients
        self.losses = losses
        self._grad_norms: torch.Tensor | None = grad_norms
        self._cosines: torch.Tensor | None = cosines
        self._gram: torch.Tensor | None = None
        self.iterations = iterations
        self.skipped = skipped
        self.normalizers = normalizers

    @classmethod
    def _from_gram(cls, comb: Combination, values: torch.Tensor, gram: torch.Tensor) -> StepInfo:
        """The step's diagnostics from its combination and the (unscaled) Gram matrix."""
        info = cls.__new__(cls)
        info.weights = comb.weights
        info.reweighted = comb.reweighted
        info.coefficients = comb.coefficients
        info.losses = values
        info._grad_norms = info._cosines = None
        info._gram = gram.detach()
        info.iterations = comb.iterations
        info.skipped = False
        info.normalizers = comb.normalizers
        return info

    def _derive(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._grad_norms is None or self._cosines is None:
            assert self._gram is not None
            norms, cosines = _diagnostics(self._gram)
            if self._grad_norms is None:
                self._grad_norms = norms
            if self._cosines is None:
                self._cosines = cosines
        return self._grad_norms, self._cosines

    @property
    def grad_norms(self) -> torch.Tensor:
        return self._derive()[0]

    @grad_norms.setter
    def grad_norms(self, value: torch.Tensor) -> None:
        self._grad_norms = value

    @property
    def cosines(self) -> torch.Tensor:
        return self._derive()[1]

    @cosines.setter
    def cosines(self, value: torch.Tensor) -> None:
        self._cosines = value

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._FIELDS)
        return f"StepInfo({inner})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StepInfo):
            return NotImplemented
        return all(_same(getattr(self, n), getattr(other, n)) for n in self._FIELDS)

    __hash__ = None  # type: ignore[assignment]

    def as_dict(self) -> dict[str, Any]:
        """Plain Python numbers and lists (one host synchronization), e.g. for logging."""
        out: dict[str, Any] = {}
        for name in ("weights", "reweighted", "coefficients", "losses", "grad_norms", "cosines"):
            out[name] = getattr(self, name).tolist()
        if self.normalizers is not None:
            out["normalizers"] = self.normalizers.tolist()
        out["iterations"] = self.iterations
        out["skipped"] = self.skipped
        return out


def _same(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and bool(torch.equal(a, b))
    return a == b


@dataclass
class _Accumulation:
    """Per-loss gradients and loss values summed over micro-batches (see ``accumulate``)."""

    jac: torch.Tensor
    values: torch.Tensor
    reached: list[bool]
    params: list[torch.Tensor]
    n_shared: int
    extras: list[torch.Tensor]
    blocks: list[torch.Tensor | None]
    scale: torch.Tensor | None
    count: int = 1


def _all_finite(*tensors: torch.Tensor) -> torch.Tensor:
    """One boolean tensor, without a host synchronization."""
    out = torch.isfinite(tensors[0]).all()
    for t in tensors[1:]:
        out = out & torch.isfinite(t).all()
    return out


def _wide(t: torch.Tensor) -> torch.Tensor:
    """Values of a sparse tensor; half precision widened to float32 for sums and norms."""
    if t.layout != torch.strided:
        t = t.coalesce().values() if t.is_sparse else t.to_dense()
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """The 2-norm of a list of tensors, in at least float32."""
    norms = [torch.linalg.vector_norm(_wide(g)).to(torch.float64) for g in grads]
    out: torch.Tensor = torch.linalg.vector_norm(torch.stack(norms))
    return out


def _truly_finite(tensors: Sequence[torch.Tensor | None]) -> bool:
    """The exact (slow) check, used only after the cheap one failed."""
    return all(t is None or bool(torch.isfinite(_wide(t)).all()) for t in tensors)


def _untouched(leaves: list[torch.Tensor]) -> bool:
    """No leaf has a ``.grad`` yet nor a post-accumulate-grad hook (a plain backward pass
    can then be undone by clearing ``.grad``)."""
    return all(
        leaf.grad is None and not getattr(leaf, "_post_accumulate_grad_hooks", None)
        for leaf in leaves
    )


def _repr_problem(
    values: torch.Tensor,
    gram_matrix: torch.Tensor,
    coefficients: torch.Tensor,
    jac_z: torch.Tensor,
    grads: Sequence[torch.Tensor | None],
) -> str | None:
    """``None`` when a representation-mode step is finite, else what is not (``""`` for a
    loss value, named by the caller). One host read in the usual case."""
    # One read of every gradient and one small check (a sum can overflow for finite
    # gradients: the exact check below then decides).
    parts = [values, gram_matrix.reshape(-1), coefficients]
    parts += [_wide(gr).sum().reshape(1) for gr in grads if gr is not None]
    if bool(torch.isfinite(torch.cat(parts)).all()):
        return None
    if not bool(torch.isfinite(values).all()):
        return ""
    if not _truly_finite([jac_z, *grads]) or not bool(torch.isfinite(coefficients).all()):
        return "non-finite gradient in representation mode"
    return None


def _diagnostics(gram_matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    norms = gram_matrix.diagonal().clamp_min(0).sqrt()
    denom = (norms[:, None] * norms[None, :]).clamp_min(torch.finfo(gram_matrix.dtype).tiny)
    return norms, gram_matrix / denom


def _resolve(
    weights: object, max_iter: int, tol: float
) -> tuple[Weighting | Callable[[torch.Tensor], torch.Tensor], bool]:
    """The weighting object, and whether ``weights`` is one of MIB's own spellings."""
    names = sorted({*_LEGACY_NAMES, *WEIGHTINGS})
    if isinstance(weights, str):
        key = weights.lower().replace("-", "_")
        if key in ("min_norm", "mib"):
            return MinNorm(max_iter, tol), True
        if key == "equal":
            return Mean(), True
        if key == "mgda":
            return MinNorm(max_iter, tol), False
        if key not in WEIGHTINGS:
            raise ValueError(
                f"weights must be one of {names}, a Weighting, a callable "
                f"or a sequence of numbers, got {weights!r}"
            )
        return from_name(key), False
    if isinstance(weights, Weighting):
        return weights, False
    if isinstance(weights, (torch.Tensor, Sequence)):
        return Constant(weights), True
    if callable(weights):
        return weights, False
    raise ValueError(
        f"weights must be one of {names}, a Weighting, a callable or a sequence of "
        f"numbers, got {weights!r}"
    )


class MultiObjectiveOptimizer(torch.optim.Optimizer):
    """Wrap any ``torch.optim`` optimizer to step on several losses at once (MIB).

    The wrapper shares ``param_groups``, ``state`` and ``defaults`` with the wrapped
    optimizer, so LR schedulers, ``zero_grad``, step hooks and checkpoints work on it.
    Like ``loss.backward()``, :meth:`backward` *adds* the combined gradient to ``.grad``
    of every leaf that the losses reach: call ``zero_grad()`` between steps as usual.

    Args:
        optimizer: The wrapped ``torch.optim.Optimizer`` (Adam, SGD, LBFGS, ...).
        shared_params: Parameters whose per-loss gradients form the Gram matrix (default:
            all of the optimizer's parameters, including groups added later). Every
            parameter still receives ``sum_i c_i grad L_i``.
        weights: How the Gram matrix becomes weights. MIB's own spellings,
            ``"min_norm"`` (the paper's min-norm weights, eq. 8; alias ``"mib"``),
            ``"equal"`` (``1/k``, the "MIB w.o. aw" ablation) and a sequence of fixed
            weights, default to MIB's reweighting and smoothing (``power=2.0``,
            ``mu=0.2``). Every other choice is used exactly as it is (``power=1.0``,
            ``mu=None``): a name from :data:`mograd.weightings.WEIGHTINGS` (``"mgda"``,
            ``"mean"``, ``"upgrad"``, ...), a :class:`~mograd.weightings.Weighting`, or
            any callable ``gram -> weights``.
        power: Reweighting exponent ``p > 0``: ``w~ = w ** p`` (paper eq. 12). Passing it
            composes MIB's reweighting with any weighting on purpose.
        mu: Smooth-IB temperature ``mu > 0`` (paper eq. 13), or ``None`` for no smoothing.
        normalize: Gradient normalization before the weighting: ``"none"`` (default, the
            paper), ``"l2"`` (``n_i = |g_i|``), ``"loss"`` (``n_i = |L_i|``) or ``"loss+"``
            (``n_i = |L_i| |g_i|``). See ``docs/api.md``.
        normalized_update: With normalization, ``True`` (LibMTL's convention) makes the
            update ``sum_i c_i g_i / n_i``; ``False`` (the original MGDA code's
            convention) applies the same coefficients to the raw gradients,
            ``sum_i c_i g_i``.
        nonfinite: What a NaN or infinite loss, gradient or coefficient does: ``"raise"``
            a :class:`NonFiniteError` (default), ``"skip"`` the step leaving parameters,
            gradients and optimizer state untouched (reported as ``StepInfo.skipped``),
            or ``"ignore"`` (no check: NaN flows on as in plain PyTorch, and a step needs
            no device-to-host synchronization at all). "raise" and "skip" read one
            boolean from the device per step.
        max_iter: Frank-Wolfe iteration cap (min-norm weights, k >= 3).
        tol: Frank-Wolfe duality-gap tolerance, relative to the largest squared gradient
            norm (min-norm weights, k >= 3).
        process_group: Process group over which per-loss gradients are averaged when
            ``torch.distributed`` is initialized (default: the world group).
        jacobian: How the exact step forms the Gram matrix: ``"rows"`` (default) keeps the
            k per-loss gradients in one k x P buffer; ``"gramian"`` never holds it
            (:class:`mograd.frugal.GramianEngine`: module by module, then one more
            backward pass of ``sum_i c_i L_i`` writes the gradients; O(P) memory instead of
            O(k P), see ``docs/performance.md``). Same weights, same update.
        modules: With ``jacobian="gramian"``: the model (or modules) holding every
            parameter of the wrapped optimizer; forward hooks are registered on it.

    Raises:
        TypeError: If ``optimizer`` is not a ``torch.optim.Optimizer``.
        ValueError: For invalid options; the message names the value.

    Example:
        >>> import torch
        >>> from mograd import MOWrapper
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> model = torch.nn.Linear(3, 2)
        >>> opt = MOWrapper(torch.optim.Adam(model.parameters(), lr=1e-2))
        >>> out = model(torch.randn(8, 3))
        >>> info = opt.step([out[:, 0].pow(2).mean(), (out[:, 1] - 1).pow(2).mean()])
        >>> bool(torch.isclose(info.weights.sum(), torch.tensor(1.0)))
        True
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        shared_params: Sequence[torch.Tensor] | torch.Tensor | None = None,
        weights: str
        | Weighting
        | Callable[[torch.Tensor], torch.Tensor]
        | Sequence[float] = "min_norm",
        power: float = _UNSET,
        mu: float | None = _UNSET,
        normalize: str = "none",
        normalized_update: bool = True,
        nonfinite: NonFinitePolicy = "raise",
        max_iter: int = DEFAULT_MAX_ITER,
        tol: float = DEFAULT_TOL,
        process_group: Any = None,
        jacobian: str = "rows",
        modules: torch.nn.Module | Sequence[torch.nn.Module] | None = None,
    ) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
            )
        if isinstance(optimizer, MultiObjectiveOptimizer):
            raise TypeError("optimizer is already a MultiObjectiveOptimizer; wrap the inner one")
        if isinstance(optimizer, torch.optim.SparseAdam):
            raise ValueError(
                "SparseAdam needs sparse gradients, but mograd combines k >= 2 gradients into "
                "a dense one; use Adam (sparse gradients are densified, see docs/api.md)"
            )
        self.optimizer = optimizer
        if nonfinite not in _POLICIES:
            raise ValueError(f"nonfinite must be one of {_POLICIES}, got {nonfinite!r}")
        self.nonfinite: NonFinitePolicy = nonfinite
        self.max_iter = check_int("max_iter", max_iter, minimum=1)
        if (
            isinstance(tol, bool)
            or not isinstance(tol, (int, float))
            or not (math.isfinite(tol) and tol >= 0)
        ):
            raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
        self.tol = float(tol)
        self.weighting, mib_spelling = _resolve(weights, self.max_iter, self.tol)
        if power is _UNSET:
            power = 2.0 if mib_spelling else 1.0
        self.power = check_number("power", power, positive=True)
        if mu is _UNSET:
            mu = 0.2 if mib_spelling else None
        self.mu = None if mu is None else check_number("mu", mu, positive=True)
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
        self.normalize = normalize
        if not isinstance(normalized_update, bool):
            raise ValueError(f"normalized_update must be a bool, got {normalized_update!r}")
        self.normalized_update = normalized_update
        self.process_group = process_group
        if jacobian not in ("rows", "gramian"):
            raise ValueError(f"jacobian must be 'rows' or 'gramian', got {jacobian!r}")
        self.jacobian = jacobian
        self._engine: GramianEngine | None = None
        if jacobian == "gramian":
            if modules is None:
                raise ValueError(
                    "jacobian='gramian' needs modules=: the model whose parameters the "
                    "wrapped optimizer holds (forward hooks record what the Gram matrix needs)"
                )
            self._engine = GramianEngine(modules, self._held())
        elif modules is not None:
            raise ValueError("modules= is only used with jacobian='gramian'")

        held = self._held()
        self._shared: list[torch.Tensor] | None = None  # None: every held parameter
        if shared_params is not None:
            if isinstance(shared_params, torch.Tensor):
                shared_params = [shared_params]
            shared = list(shared_params)
            if not shared:
                raise ValueError("shared_params is empty; pass None to share all parameters")
            held_ids = {id(p) for p in held}
            for i, p in enumerate(shared):
                if not isinstance(p, torch.Tensor):
                    raise TypeError(f"shared_params[{i}] is a {type(p).__name__}, not a tensor")
                if id(p) not in held_ids:
                    raise ValueError(
                        f"shared_params[{i}] (shape {tuple(p.shape)}) is not held by the "
                        "wrapped optimizer"
                    )
            self._shared = shared

        self._wrapper_state: dict[str, int] = {"steps": 0, "skipped": 0}
        self._skip_pending = False
        self._acc: _Accumulation | None = None
        self.last_info: StepInfo | None = None

        # What torch.optim.Optimizer.__init__ would set, minus the parameter bookkeeping
        # that stays with the wrapped optimizer.
        self._optimizer_step_pre_hooks = OrderedDict()
        self._optimizer_step_post_hooks = OrderedDict()
        self._optimizer_state_dict_pre_hooks = OrderedDict()
        self._optimizer_state_dict_post_hooks = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks = OrderedDict()
        self._optimizer_load_state_dict_post_hooks = OrderedDict()
        self._patch_step_function()

    # ------------------------------------------------------------------ shared state
    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """The wrapped optimizer's ``param_groups`` (the same list object)."""
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self.optimizer.param_groups = value

    @property
    def state(self) -> Any:
        """The wrapped optimizer's ``state`` (the same dict object)."""
        return self.optimizer.state

    @state.setter
    def state(self, value: Any) -> None:
        self.optimizer.state = value

    @property
    def defaults(self) -> dict[str, Any]:
        """The wrapped optimizer's ``defaults``."""
        return self.optimizer.defaults

    @defaults.setter
    def defaults(self, value: dict[str, Any]) -> None:
        self.optimizer.defaults = value

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__.copy()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        norm = "" if self.normalize == "none" else f", normalize={self.normalize!r}"
        return (
            f"{type(self).__name__}(weights={self._weighting_name()}, power={self.power}, "
            f"mu={self.mu}{norm}, nonfinite={self.nonfinite!r},\n  optimizer={self.optimizer!r})"
        )

    def _weighting_name(self) -> str:
        w = self.weighting
        if isinstance(w, Weighting):
            return repr(w)
        return getattr(w, "__qualname__", None) or repr(w)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a parameter group to the wrapped optimizer.

        Its parameters are trained, and they enter the Gram matrix unless ``shared_params``
        was given (adding to the wrapped optimizer directly has the same effect).
        """
        self.optimizer.add_param_group(param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset the gradients of all parameters (delegates to the wrapped optimizer)."""
        self.optimizer.zero_grad(set_to_none=set_to_none)

    # ------------------------------------------------------------------ checkpoints
    def _config(self) -> dict[str, Any]:
        return {
            "weights": self._weighting_name(),
            "power": self.power,
            "mu": self.mu,
            "normalize": self.normalize,
            "normalized_update": self.normalized_update,
        }

    def state_dict(self) -> dict[str, Any]:
        """The wrapped optimizer's state dict plus the wrapper's own under ``"mograd"``.

        ``"mograd"`` holds the step counters, the options (checked on load) and the
        weighting's state (random generators, warm starts). State-dict hooks registered
        on the wrapper run as they would on any optimizer.
        """
        for pre_hook in self._optimizer_state_dict_pre_hooks.values():
            pre_hook(self)
        sd = self.optimizer.state_dict()
        own: dict[str, Any] = dict(self._wrapper_state)
        own["config"] = self._config()
        if isinstance(self.weighting, Weighting):
            own["weighting"] = self.weighting.state_dict()
        sd["mograd"] = own
        for post_hook in self._optimizer_state_dict_post_hooks.values():
            hook_result = post_hook(self, sd)
            if hook_result is not None:
                sd = hook_result
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict produced by :meth:`state_dict` (or by the bare wrapped optimizer).

        Warns (``UserWarning``) when the checkpoint was written with other options.
        """
        sd = dict(state_dict)
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            hook_result = pre_hook(self, sd)
            if hook_result is not None:
                sd = dict(hook_result)
        own = sd.pop("mograd", None)
        self.optimizer.load_state_dict(sd)
        if own is not None:
            config = own.get("config")
            if config is not None:
                mine = self._config()
                diff = {k: (v, mine.get(k)) for k, v in config.items() if mine.get(k) != v}
                if diff:
                    listed = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
                    warnings.warn(
                        f"loading a mograd checkpoint written with other options ({listed})",
                        UserWarning,
                        stacklevel=2,
                    )
            if isinstance(self.weighting, Weighting) and "weighting" in own:
                self.weighting.load_state_dict(own["weighting"])
            self._wrapper_state = {"steps": int(own["steps"]), "skipped": int(own["skipped"])}
        self._skip_pending = False
        self._acc = None
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    @property
    def steps(self) -> int:
        """Steps of the wrapped optimizer taken so far (skipped steps excluded; checkpointed)."""
        return self._wrapper_state["steps"]

    # ------------------------------------------------------------------ layout
    def _held(self) -> list[torch.Tensor]:
        seen: set[int] = set()
        out = []
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                if id(p) not in seen:
                    seen.add(id(p))
                    out.append(p)
        return out

    def _layout(self) -> tuple[list[torch.Tensor], int]:
        """The parameters that require grad, shared ones first, and the shared column count."""
        held = [p for p in self._held() if p.requires_grad]
        if not held:
            raise ValueError("the wrapped optimizer holds no parameter that requires grad")
        devices = {p.device for p in held}
        if len(devices) > 1:
            raise ValueError(
                f"parameters are on several devices ({sorted(map(str, devices))}); "
                "mograd needs them on one device"
            )
        if self._shared is None:
            return held, sum(p.numel() for p in held)
        shared_ids = {id(p) for p in self._shared}
        first = [p for p in held if id(p) in shared_ids]
        rest = [p for p in held if id(p) not in shared_ids]
        return first + rest, sum(p.numel() for p in first)

    @staticmethod
    def _extras(losses: list[torch.Tensor], params: list[torch.Tensor]) -> list[torch.Tensor]:
        held = {id(p) for p in params}
        return [v for v in reached_leaves(losses) if id(v) not in held]

    def _device_type(self) -> str:
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                return str(p.device.type)
        return "cpu"

    def _check_k(self, k: int) -> None:
        if k > 1 and isinstance(self.weighting, Constant) and len(self.weighting.weights) != k:
            raise ValueError(
                f"weights has {len(self.weighting.weights)} entries but {k} losses were given"
            )

    # ------------------------------------------------------------------ the step
    def _combine(self, gram_matrix: torch.Tensor, values: torch.Tensor) -> Combination:
        return combine(
            gram_matrix,
            values,
            self.weighting,
            power=self.power,
            mu=self.mu,
            normalize=self.normalize,
            normalized_update=self.normalized_update,
        )

    def _raise_or_skip(self, policy: str, values: torch.Tensor, what: str) -> bool:
        """After a confirmed non-finite value: raise, or return True (skip)."""
        if policy == "raise":
            bad = [i for i, v in enumerate(values.tolist()) if not math.isfinite(v)]
            if bad:
                what = "non-finite loss value: " + ", ".join(
                    f"losses[{i}] = {values[i].item()}" for i in bad
                )
            raise NonFiniteError(
                what + "; parameters, gradients and optimizer state were left untouched "
                "(use nonfinite='skip' to skip such steps)"
            )
        return True

    def _record(self, info: StepInfo, skipped: bool) -> StepInfo:
        if skipped:
            info.skipped = True
            self._skip_pending = True
            self._wrapper_state["skipped"] += 1
        self.last_info = info
        return info

    def backward(
        self,
        losses: Sequence[torch.Tensor] | None = None,
        *,
        features: torch.Tensor | Sequence[torch.Tensor] | None = None,
        grad_scaler: torch.amp.GradScaler | None = None,
        retain_graph: bool = False,
    ) -> StepInfo:
        """Write ``sum_i c_i grad L_i`` into ``.grad`` and return the step's diagnostics.

        Args:
            losses: k >= 1 scalar losses from one forward pass. With k = 1 this is exactly
                ``losses[0].backward()``. ``None`` applies the micro-batches gathered with
                :meth:`accumulate`.
            features: Representation mode (MGDA-UB): the shared representation ``z`` (or
                several tensors) that all losses are computed from. The weights come from
                the gradients with respect to ``z`` and one backward pass of
                ``sum_i c_i L_i`` writes the gradients: cheaper, an approximation of the
                exact step (see ``docs/performance.md``).
            grad_scaler: A ``torch.amp.GradScaler``: losses are scaled before backward (so
                ``.grad`` holds scaled gradients for ``scaler.step(opt)``), while weights
                and coefficients are computed from the unscaled values. Non-finite
                gradients are then left to the scaler.
            retain_graph: Keep the autograd graph after the last backward pass.

        Returns:
            A :class:`StepInfo` (also kept as ``last_info``).

        Raises:
            TypeError, ValueError: For malformed losses; nothing is modified.
            NonFiniteError: With ``nonfinite="raise"`` when a loss, gradient or coefficient
                is NaN or infinite; nothing is modified.
        """
        with _no_autocast(self._device_type()):
            return self._backward(losses, features, grad_scaler, retain_graph)

    def _backward(
        self,
        losses: Sequence[torch.Tensor] | None,
        features: torch.Tensor | Sequence[torch.Tensor] | None,
        grad_scaler: torch.amp.GradScaler | None,
        retain_graph: bool,
    ) -> StepInfo:
        if losses is None:
            if features is not None or grad_scaler is not None:
                raise ValueError("features= and grad_scaler= need losses")
            return self._flush()
        if self._acc is not None:
            raise RuntimeError(
                "micro-batches gathered with accumulate() are pending: apply them with "
                "backward() or step() (no losses) first"
            )
        losses = check_losses(losses)
        k = len(losses)
        self._check_k(k)
        self._skip_pending = False
        values = loss_values(losses)
        scale = None
        if grad_scaler is not None:
            scale = grad_scaler.scale(torch.ones((), device=losses[0].device))
            losses = [grad_scaler.scale(loss) for loss in losses]
        policy = "ignore" if grad_scaler is not None else self.nonfinite
        params, n_shared = self._layout()
        if self._engine is not None and (features is not None or k == 1):
            self._engine.clear()  # the forward records are not needed
        if features is not None:
            return self._representation(losses, values, features, params, retain_graph, policy)
        extras = self._extras(losses, params)
        if k == 1:
            return self._single(losses[0], values, params, extras, retain_graph, policy, scale)
        if self._engine is not None:
            return self._frugal(
                losses, values, params, n_shared, extras, retain_graph, policy, scale
            )
        jac, reached, blocks = jacobian_rows(losses, params, extras, retain_graph)
        return self._finish(jac, values, reached, params, n_shared, extras, blocks, scale, policy)

    def accumulate(
        self,
        losses: Sequence[torch.Tensor],
        *,
        grad_scaler: torch.amp.GradScaler | None = None,
        retain_graph: bool = False,
    ) -> None:
        """Gather one micro-batch: add its per-loss gradients and loss values to a buffer.

        Nothing is written to ``.grad``. After the last micro-batch, ``backward()`` (or
        ``step()``) without losses solves once on the summed per-loss gradients and loss
        values, i.e. on the full batch: scale each micro-batch's losses by ``1/n`` as in
        plain PyTorch accumulation, and n micro-batches give the weights and the update of
        one batch n times larger. A non-finite micro-batch makes the whole accumulated step
        non-finite (raised or skipped when it is applied). Exact mode only.

        Args:
            losses: The k scalar losses of this micro-batch (k fixed across micro-batches).
            grad_scaler: As in :meth:`backward` (the scale must not change in between).
            retain_graph: Keep the autograd graph after the last backward pass.
        """
        with _no_autocast(self._device_type()):
            self._accumulate(losses, grad_scaler, retain_graph)

    def _accumulate(
        self,
        losses: Sequence[torch.Tensor],
        grad_scaler: torch.amp.GradScaler | None,
        retain_graph: bool,
    ) -> None:
        if self._engine is not None:
            raise ValueError(
                "accumulate() needs jacobian='rows': the Gram matrix of summed micro-batch "
                "gradients cannot be formed from per-micro-batch Gram matrices"
            )
        losses = check_losses(losses)
        k = len(losses)
        self._check_k(k)
        values = loss_values(losses)
        scale = None
        if grad_scaler is not None:
            scale = grad_scaler.scale(torch.ones((), device=losses[0].device))
            losses = [grad_scaler.scale(loss) for loss in losses]
        acc = self._acc
        if acc is None:
            params, n_shared = self._layout()
            extras = self._extras(losses, params)
            jac, reached, blocks = jacobian_rows(losses, params, extras, retain_graph)
            self._acc = _Accumulation(jac, values, reached, params, n_shared, extras, blocks, scale)
            return
        if k != acc.jac.shape[0]:
            raise ValueError(
                f"accumulate() got {k} losses, earlier micro-batches {acc.jac.shape[0]}"
            )
        params, _ = self._layout()
        if len(params) != len(acc.params) or any(a is not b for a, b in zip(params, acc.params)):
            raise RuntimeError("the optimizer's parameters changed during accumulation")
        known = {id(v) for v in acc.extras}
        extras = [v for v in self._extras(losses, params) if id(v) not in known]
        all_extras = [*acc.extras, *extras]
        jac, reached, blocks = jacobian_rows(losses, params, all_extras, retain_graph)
        acc.jac.add_(jac)
        del jac
        acc.values = acc.values + values.to(acc.values.dtype)
        acc.reached = [a or b for a, b in zip(acc.reached, reached)]
        merged: list[torch.Tensor | None] = []
        for old, new in zip([*acc.blocks, *[None] * len(extras)], blocks):
            merged.append(new if old is None else old if new is None else old + new)
        acc.extras, acc.blocks = all_extras, merged
        acc.count += 1

    def _flush(self) -> StepInfo:
        acc = self._acc
        if acc is None:
            raise ValueError("backward() without losses: nothing was gathered with accumulate()")
        self._acc = None
        self._skip_pending = False
        policy = "ignore" if acc.scale is not None else self.nonfinite
        return self._finish(
            acc.jac,
            acc.values,
            acc.reached,
            acc.params,
            acc.n_shared,
            acc.extras,
            acc.blocks,
            acc.scale,
            policy,
        )

    def _finish(
        self,
        jac: torch.Tensor,
        values: torch.Tensor,
        reached: list[bool],
        params: list[torch.Tensor],
        n_shared: int,
        extras: list[torch.Tensor],
        blocks: list[torch.Tensor | None],
        scale: torch.Tensor | None,
        policy: str,
    ) -> StepInfo:
        k = jac.shape[0]
        if distributed.is_distributed():
            # One collective for J (k times the usual gradient traffic), one small one for
            # the loss values and which parameters some rank reached.
            distributed.mean_(jac, self.process_group)
            small = torch.cat(
                [values.to(jac.dtype), torch.tensor(reached, dtype=jac.dtype, device=jac.device)]
            )
            distributed.sum_(small, self.process_group)
            world = distributed.world_size(self.process_group)
            values = (small[:k] / world).to(values.dtype)
            reached = [bool(r > 0) for r in small[k:].tolist()]
        shared = jac[:, :n_shared]
        g = gram(shared)
        unscale = None if scale is None else scale.to(g.dtype) ** 2
        comb = self._combine(g if unscale is None else g / unscale, values)
        skip = False
        if policy != "ignore":
            finite = _all_finite(values, g, comb.coefficients)  # NaN/inf in J_S reach G
            if n_shared < jac.shape[1]:
                finite = finite & torch.isfinite(jac[:, n_shared:].sum())
            for block in blocks:
                if block is not None:
                    finite = finite & torch.isfinite(block.sum())
            if not bool(finite):
                if not bool(torch.isfinite(values).all()):
                    skip = self._raise_or_skip(policy, values, "")
                elif not _truly_finite([jac, *blocks]):
                    rows = torch.isfinite(jac).all(dim=1).tolist()
                    bad = [i for i, ok in enumerate(rows) if not ok]
                    what = (
                        f"non-finite gradient of losses{bad}"
                        if bad
                        else ("non-finite gradient of a leaf outside the optimizer")
                    )
                    skip = self._raise_or_skip(policy, values, what)
                else:
                    # Finite gradients whose float32 Gram matrix overflowed: redo it in float64.
                    g = gram(shared, rescale=True)
                    unscale = None if scale is None else scale.to(g.dtype) ** 2
                    comb = self._combine(g if unscale is None else g / unscale, values)
                    if not bool(torch.isfinite(comb.coefficients).all()):
                        skip = self._raise_or_skip(
                            policy, values, "non-finite coefficients (check the loss scale)"
                        )
        g_user = g if unscale is None else g / unscale
        info = StepInfo._from_gram(comb, values, g_user)
        if skip:
            return self._record(info, skipped=True)
        coeffs = comb.coefficients.to(jac.dtype)
        combined = coeffs @ jac
        del jac, shared
        grads: list[torch.Tensor | None] = []
        offset = 0
        for p, hit in zip(params, reached):
            n = p.numel()
            grads.append(combined[offset : offset + n].view_as(p) if hit else None)
            offset += n
        accumulate_grad(params, [_cast(gr, p) for gr, p in zip(grads, params)], disjoint=True)
        accumulate_grad(
            extras,
            [
                None if b is None else (coeffs.to(b.dtype) @ b).view_as(v)
                for v, b in zip(extras, blocks)
            ],
        )
        return self._record(info, skipped=False)

    def _frugal(
        self,
        losses: list[torch.Tensor],
        values: torch.Tensor,
        params: list[torch.Tensor],
        n_shared: int,
        extras: list[torch.Tensor],
        retain_graph: bool,
        policy: str,
        scale: torch.Tensor | None,
    ) -> StepInfo:
        """The exact step without the k x P buffer (``jacobian="gramian"``)."""
        assert self._engine is not None
        shared = params[: self._n_shared_params(params, n_shared)]
        g, reached = self._engine.gram(losses, params, shared, process_group=self.process_group)
        if distributed.is_distributed():
            values = values.clone()
            distributed.mean_(values, self.process_group)
        unscale = None if scale is None else scale.to(g.dtype) ** 2
        g_user = g if unscale is None else g / unscale
        comb = self._combine(g_user, values)
        info = StepInfo._from_gram(comb, values, g_user)
        if policy != "ignore" and not bool(_all_finite(values, g, comb.coefficients)):
            what = "non-finite gradient (it reached the Gram matrix) or coefficients"
            if self._raise_or_skip(policy, values, what):
                return self._record(info, skipped=True)
        grads = weighted_gradients(
            losses,
            comb.coefficients,
            params,
            extras,
            reached=reached,
            retain_graph=retain_graph,
            process_group=self.process_group,
        )
        if policy != "ignore":
            sums = [_wide(gr).sum() for gr in grads if gr is not None]
            if sums and not bool(torch.isfinite(torch.stack(sums).sum())):
                if not _truly_finite(grads) and self._raise_or_skip(
                    policy, values, "non-finite gradient"
                ):
                    return self._record(info, skipped=True)
        n = len(params)
        accumulate_grad(params, [_cast(gr, p) for gr, p in zip(grads[:n], params)])
        accumulate_grad(extras, grads[n:])
        return self._record(info, skipped=False)

    @staticmethod
    def _n_shared_params(params: list[torch.Tensor], n_shared_cols: int) -> int:
        count, cols = 0, 0
        for p in params:
            if cols >= n_shared_cols:
                break
            cols += p.numel()
            count += 1
        return count

    def _single(
        self,
        loss: torch.Tensor,
        values: torch.Tensor,
        params: list[torch.Tensor],
        extras: list[torch.Tensor],
        retain_graph: bool,
        policy: str,
        scale: torch.Tensor | None,
    ) -> StepInfo:
        leaves = [*params, *extras]
        grads = torch.autograd.grad(loss, leaves, retain_graph=retain_graph, allow_unused=True)
        if all(g is None for g in grads[: len(params)]):
            raise ValueError("losses[0] does not depend on any parameter held by the optimizer")
        present = [g for g in grads[: len(params)] if g is not None]
        norm = _norm(present).to(values.dtype)
        if scale is not None:
            norm = norm / scale.to(norm.dtype)
        one = torch.ones(1, dtype=values.dtype, device=values.device)
        info = StepInfo(one, one, one, values, norm.reshape(1), one[:, None], 0, normalizers=one)
        skip = False
        if policy != "ignore":
            finite = _all_finite(values, norm)
            others = [_wide(g).sum() for g in grads[len(params) :] if g is not None]
            if others:
                finite = finite & torch.isfinite(torch.stack(others).sum())
            if not bool(finite) and not (
                bool(torch.isfinite(values).all()) and _truly_finite(list(grads))
            ):
                skip = self._raise_or_skip(policy, values, "non-finite gradient of losses[0]")
        if skip:
            return self._record(info, skipped=True)
        accumulate_grad(leaves, grads)
        return self._record(info, skipped=False)

    def _representation(
        self,
        losses: list[torch.Tensor],
        values: torch.Tensor,
        features: torch.Tensor | Sequence[torch.Tensor],
        params: list[torch.Tensor],
        retain_graph: bool,
        policy: str,
    ) -> StepInfo:
        feats = [features] if isinstance(features, torch.Tensor) else list(features)
        for i, f in enumerate(feats):
            if not isinstance(f, torch.Tensor) or not f.requires_grad:
                hint = (
                    " (gradients are disabled: was the forward pass run under torch.no_grad()?)"
                    if not torch.is_grad_enabled()
                    or (isinstance(f, torch.Tensor) and f.grad_fn is None)
                    else ""
                )
                raise ValueError(
                    f"features[{i}] must be a tensor that requires grad (the shared "
                    f"representation the losses are computed from){hint}"
                )
        k = len(losses)
        jac_z, _, _ = jacobian_rows(losses, feats, [], True, "the features")
        g = gram(jac_z)
        if distributed.is_distributed():
            # Features of different ranks are different samples: the full-batch Gram is the
            # sum of the per-rank Gram matrices (up to a scale that the weights ignore).
            packed = torch.cat([g.reshape(-1), values.to(g.dtype)])
            distributed.sum_(packed, self.process_group)
            world = distributed.world_size(self.process_group)
            g = packed[: k * k].view(k, k) / world**2
            values = (packed[k * k :] / world).to(values.dtype)
        comb = self._combine(g, values)
        info = StepInfo._from_gram(comb, values, g)
        ref = losses[0]
        total = (comb.coefficients.detach().to(ref.dtype) * torch.stack(losses)).sum()
        if policy == "ignore" and not distributed.is_distributed():
            # Nothing to check: one plain backward pass writes every leaf's .grad exactly as
            # loss.backward() does (the hand-written step's cost).
            torch.autograd.backward(total, retain_graph=retain_graph)
            return self._record(info, skipped=False)
        extras = self._extras(losses, params)
        leaves = [*params, *extras]
        if not distributed.is_distributed() and _untouched(leaves):
            # The usual step (after zero_grad): one plain backward pass writes every .grad as
            # loss.backward() does, then the check; a rejected step clears them again, which
            # restores the state exactly (no .grad existed and no hook has run).
            torch.autograd.backward(total, retain_graph=retain_graph)
            written = [leaf.grad for leaf in leaves]
            problem = _repr_problem(values, g, comb.coefficients, jac_z, written)
            if problem is None:
                return self._record(info, skipped=False)
            for leaf in leaves:
                leaf.grad = None
            self._raise_or_skip(policy, values, problem)
            return self._record(info, skipped=True)
        grads = list(
            torch.autograd.grad(total, leaves, retain_graph=retain_graph, allow_unused=True)
        )
        n = len(params)
        if distributed.is_distributed():
            present = [gr for gr in grads[:n] if gr is not None]
            if present:
                flat = torch.cat([gr.reshape(-1) for gr in present])
                distributed.mean_(flat, self.process_group)
                parts = iter(torch.split(flat, [gr.numel() for gr in present]))
                grads[:n] = [None if gr is None else next(parts).view_as(gr) for gr in grads[:n]]
        if policy != "ignore":
            problem = _repr_problem(values, g, comb.coefficients, jac_z, grads)
            if problem is not None:
                self._raise_or_skip(policy, values, problem)
                return self._record(info, skipped=True)
        accumulate_grad(leaves, grads)
        return self._record(info, skipped=False)

    # ------------------------------------------------------------------ stepping
    def _reevaluates(self) -> bool:
        return isinstance(self.optimizer, torch.optim.LBFGS)

    @torch.no_grad()
    def _inner_step(self) -> None:
        if self._skip_pending:
            self._skip_pending = False
            return
        self.optimizer.step()
        self._wrapper_state["steps"] += 1

    def _closure_step(self, closure: Callable[[], Any]) -> torch.Tensor:
        def evaluate() -> torch.Tensor:
            with torch.enable_grad():
                out = closure()
            losses = [out] if isinstance(out, torch.Tensor) and out.numel() == 1 else out
            info = self.backward(losses)
            if info.skipped and self._reevaluates():
                self._skip_pending = False
                raise NonFiniteError(
                    "non-finite value in a closure evaluation of "
                    f"{type(self.optimizer).__name__}, which re-evaluates the closure "
                    "within one step and so cannot skip it"
                )
            return (info.coefficients.to(info.losses.dtype) * info.losses).sum()

        if self._reevaluates():
            self._skip_pending = False
            result = self.optimizer.step(evaluate)  # type: ignore[arg-type]
            self._wrapper_state["steps"] += 1
            return result  # type: ignore[return-value]
        objective = evaluate()
        self._inner_step()
        return objective

    def step(  # type: ignore[override]
        self,
        losses: Sequence[torch.Tensor] | Callable[[], Any] | None = None,
        closure: Callable[[], Any] | None = None,
        *,
        features: torch.Tensor | Sequence[torch.Tensor] | None = None,
    ) -> Any:
        """:meth:`backward` on ``losses`` (or on what ``closure`` returns), then the inner step.

        * ``step(losses)`` returns the step's :class:`StepInfo`.
        * ``step(closure)`` (positional or keyword, as in ``torch.optim``): the closure
          zeroes the gradients, runs the model and returns the losses (a list, or one
          scalar); mograd does the multi-objective backward. Optimizers that re-evaluate
          the closure (LBFGS) get the multi-objective backward at every evaluation.
          Returns, as ``torch.optim`` does, the loss: the scalar ``sum_i c_i L_i`` whose
          gradient was applied (for k = 1, the loss itself); the :class:`StepInfo` is
          ``last_info``.
        * A plain ``step()`` after :meth:`backward` only runs the wrapped optimizer's step
          (skipped when that backward was skipped for a non-finite value): gradient
          clipping or ``GradScaler.step`` fit in between. After :meth:`accumulate` it first
          applies the gathered micro-batches and returns their :class:`StepInfo`.

        Args:
            losses: The k scalar losses, a closure, or ``None``.
            closure: A closure, as keyword.
            features: Representation mode, see :meth:`backward`.
        """
        if callable(losses) and not isinstance(losses, (torch.Tensor, Sequence)):
            if closure is not None:
                raise ValueError("pass one closure, not two")
            losses, closure = None, losses
        if losses is not None and closure is not None:
            raise ValueError("pass either losses or closure, not both")
        if closure is not None:
            if features is not None:
                raise ValueError("features= cannot be combined with a closure")
            return self._closure_step(closure)
        if self._reevaluates():
            raise ValueError(
                f"{type(self.optimizer).__name__} re-evaluates the model within a step: "
                "call opt.step(closure) with a closure that returns the losses"
            )
        info: StepInfo | None = None
        if losses is not None:
            info = self.backward(losses, features=features)
        elif features is not None:
            raise ValueError("features= needs losses")
        elif self._acc is not None:
            with _no_autocast(self._device_type()):
                info = self._flush()
        self._inner_step()
        return info


def _no_autocast(device_type: str) -> contextlib.AbstractContextManager[Any]:
    """mograd's own math (Gram matrix, weights, the combination) never runs under autocast:
    a bf16 Gram matrix would change the weights in the third digit."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def _cast(g: torch.Tensor | None, p: torch.Tensor) -> torch.Tensor | None:
    if g is None or g.dtype == p.dtype:
        return g
    return g.to(p.dtype)


MOWrapper = MultiObjectiveOptimizer
"""Alias of :class:`MultiObjectiveOptimizer`."""

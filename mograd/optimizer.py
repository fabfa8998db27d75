r"""The torch glue: :class:`MultiObjectiveOptimizer` (alias :data:`MOWrapper`).

The only layer that touches parameters, and only as ``torch.optim`` plumbing: it shares
``param_groups``, ``state`` and ``defaults`` with the wrapped optimizer, keeps checkpoints,
and offers the entry points (``backward``, ``accumulate``, ``step``, closures). A step is
one pass through :mod:`mograd.pipeline`:

1. a *source* (:mod:`mograd.sources`) gathers what the step needs: the $k$ per-loss
   gradients as rows of $J$ (default), the Gram matrix module by module
   (``jacobian="gramian"``, :mod:`mograd.frugal`), the gradients with respect to the
   features (representation mode, ``features=z``), the one gradient ($k = 1$), or only the
   loss values (loss-level weightings);
2. the pipeline's stages, the same for every source: reduce over the process group,
   $G = J_S J_S^\top$ (paper eq. 8), unscale, the weighting with MIB's reweighting and
   Smooth-IB coefficients (eqs. 12-14), the non-finite guard, and
   $\sum_i c_i \nabla L_i$ added to ``.grad`` as ``loss.backward()`` would add it;
3. the wrapped optimizer steps.

``docs/api.md`` states the full contract and ``docs/architecture.md`` the layout.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch.optim import optimizer as torch_optimizer

from . import _distributed as distributed
from ._checks import check_losses, loss_values
from .frugal import GramianEngine
from .info import NonFiniteError, StepInfo
from .options import UNSET, NonFinitePolicy, Options, WeightsArg
from .pipeline import Combiner, run
from .solver import DEFAULT_MAX_ITER, DEFAULT_TOL
from .sources import (
    Collected,
    GramianCollected,
    LossesCollected,
    Step,
    check_features,
    collect_features,
    collect_rows,
    collect_single,
)
from .sources.sharded import (
    ShardedLosses,
    collect_sharded,
    collect_sharded_features,
    fsdp_group,
    fsdp_modules,
    is_sharded,
)
from .weightings import Constant, Weighting

__all__ = ["MOWrapper", "MultiObjectiveOptimizer", "NonFiniteError", "StepInfo"]


class MultiObjectiveOptimizer(torch.optim.Optimizer):
    r"""Wrap any ``torch.optim`` optimizer to step on several losses at once (MIB).

    The wrapper shares ``param_groups``, ``state`` and ``defaults`` with the wrapped
    optimizer, so LR schedulers, ``zero_grad``, step hooks and checkpoints work on it.
    Like ``loss.backward()``, :meth:`backward` *adds* the combined gradient to ``.grad``
    of every leaf that the losses reach: call ``zero_grad()`` between steps as usual.

    Args:
        optimizer: The wrapped ``torch.optim.Optimizer`` (Adam, SGD, LBFGS, ...).
        shared_params: Parameters whose per-loss gradients form the Gram matrix (default:
            all of the optimizer's parameters, including groups added later). Every
            parameter still receives $\sum_i c_i \nabla L_i$.
        weights: How the Gram matrix becomes weights. MIB's own spellings,
            ``"min_norm"`` (the paper's min-norm weights, eq. 8; alias ``"mib"``),
            ``"equal"`` ($1/k$, the "MIB w.o. aw" ablation) and a sequence of fixed
            weights, default to MIB's reweighting and smoothing (``power=2.0``,
            ``mu=0.2``). Every other choice is used exactly as it is (``power=1.0``,
            ``mu=None``): a name from :data:`mograd.weightings.WEIGHTINGS` (``"mgda"``,
            ``"mean"``, ``"upgrad"``, ...), a :class:`~mograd.weightings.Weighting`, or
            any callable ``gram -> weights``.
        power: Reweighting exponent $p > 0$: $\tilde w = w^p$ (paper eq. 12). Passing it
            composes MIB's reweighting with any weighting on purpose.
        mu: Smooth-IB temperature $\mu > 0$ (paper eq. 13), or ``None`` for no smoothing.
        normalize: Gradient normalization before the weighting: ``"none"`` (default, the
            paper), ``"l2"`` ($n_i = \lVert g_i \rVert$), ``"loss"`` ($n_i = \lvert L_i \rvert$)
            or ``"loss+"`` ($n_i = \lvert L_i \rvert \, \lVert g_i \rVert$). See
            ``docs/api.md``.
        normalized_update: With normalization, ``True`` (LibMTL's convention) makes the
            update $\sum_i c_i g_i / n_i$; ``False`` (the original MGDA code's
            convention) applies the same coefficients to the raw gradients,
            $\sum_i c_i g_i$.
        nonfinite: What a NaN or infinite loss, gradient or coefficient does: ``"raise"``
            a :class:`NonFiniteError` (default), ``"skip"`` the step leaving parameters,
            gradients and optimizer state untouched (reported as ``StepInfo.skipped``),
            or ``"ignore"`` (no check: NaN flows on as in plain PyTorch, and a step needs
            no device-to-host synchronization at all). "raise" and "skip" read one
            boolean from the device per step.
        max_iter: Frank-Wolfe iteration cap (min-norm weights, $k \ge 3$).
        tol: Frank-Wolfe duality-gap tolerance, relative to the largest squared gradient
            norm (min-norm weights, $k \ge 3$).
        process_group: Process group over which per-loss gradients are averaged when
            ``torch.distributed`` is initialized (default: the world group).
        jacobian: How the exact step forms the Gram matrix: ``"rows"`` (default) keeps the
            $k$ per-loss gradients in one $k \times P$ buffer; ``"gramian"`` never holds it
            (:class:`mograd.frugal.GramianEngine`: module by module from forward records,
            and the update $\sum_i c_i \nabla L_i$ from the same records, without weight
            gradients of ``nn.Linear`` layers and without another backward pass; $O(P)$
            memory instead of $O(k P)$, see ``docs/performance.md``). Same weights, same
            update.
        modules: With ``jacobian="gramian"``: the model (or modules) holding every
            parameter of the wrapped optimizer; forward hooks are registered on it. Under
            FSDP2 (optional): the ``fully_shard``-ed root, whose parameters then stay
            unsharded across the $k$ backward passes of a step ($k - 1$ fewer all-gathers
            per module, see ``docs/distributed.md``).

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
        weights: WeightsArg = "min_norm",
        power: float = UNSET,
        mu: float | None = UNSET,
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
        self.options = Options.parse(
            weights=weights,
            power=power,
            mu=mu,
            normalize=normalize,
            normalized_update=normalized_update,
            nonfinite=nonfinite,
            max_iter=max_iter,
            tol=tol,
            jacobian=jacobian,
        )
        o = self.options
        self.weighting, self.power, self.mu = o.weighting, o.power, o.mu
        self.normalize, self.normalized_update = o.normalize, o.normalized_update
        self.nonfinite, self.max_iter, self.tol = o.nonfinite, o.max_iter, o.tol
        self.jacobian, self.process_group = o.jacobian, process_group
        self._engine = self._make_engine(modules)
        self._shared = self._check_shared(shared_params)
        self._combiner = Combiner(o)
        self._wrapper_state: dict[str, int] = {"steps": 0, "skipped": 0}
        self._skip_pending = False
        self._acc: Collected | None = None
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

    def _make_engine(
        self, modules: torch.nn.Module | Sequence[torch.nn.Module] | None
    ) -> GramianEngine | None:
        self._fsdp_modules: list[Any] = []
        if fsdp_group(self._held()) is not None:  # FSDP2: the sharded source
            if self.jacobian == "gramian":
                raise ValueError(
                    "jacobian='gramian' does not work under FSDP2 (its forward records "
                    "hold unsharded activations of one rank); use the default "
                    "jacobian='rows', which keeps only k x P / world values per rank"
                )
            if modules is not None:
                self._fsdp_modules = fsdp_modules(modules, self._held())
            return None
        if self.jacobian != "gramian":
            if modules is not None:
                raise ValueError("modules= is only used with jacobian='gramian'")
            return None
        if modules is None:
            raise ValueError(
                "jacobian='gramian' needs modules=: the model whose parameters the "
                "wrapped optimizer holds (forward hooks record what the Gram matrix needs)"
            )
        return GramianEngine(modules, self._held())

    def _check_shared(
        self, shared_params: Sequence[torch.Tensor] | torch.Tensor | None
    ) -> list[torch.Tensor] | None:
        """``None``: every held parameter is shared."""
        if shared_params is None:
            return None
        if isinstance(shared_params, torch.Tensor):
            shared_params = [shared_params]
        shared = list(shared_params)
        if not shared:
            raise ValueError("shared_params is empty; pass None to share all parameters")
        held_ids = {id(p) for p in self._held()}
        for i, p in enumerate(shared):
            if not isinstance(p, torch.Tensor):
                raise TypeError(f"shared_params[{i}] is a {type(p).__name__}, not a tensor")
            if id(p) not in held_ids:
                raise ValueError(
                    f"shared_params[{i}] (shape {tuple(p.shape)}) is not held by the "
                    "wrapped optimizer"
                )
        return shared

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
            f"{type(self).__name__}(weights={self.options.weighting_name()}, "
            f"power={self.power}, mu={self.mu}{norm}, nonfinite={self.nonfinite!r},\n"
            f"  optimizer={self.optimizer!r})"
        )

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
        own["config"] = self.options.config()
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
                mine = self.options.config()
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
        """The parameters that require grad, shared ones first, and how many are shared."""
        held = [p for p in self._held() if p.requires_grad]
        devices = {p.device for p in held}
        if len(devices) > 1:
            raise ValueError(
                f"parameters are on several devices ({sorted(map(str, devices))}); "
                "mograd needs them on one device"
            )
        if self._shared is None:
            return held, len(held)
        shared_ids = {id(p) for p in self._shared}
        first = [p for p in held if id(p) in shared_ids]
        return first + [p for p in held if id(p) not in shared_ids], len(first)

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

    def _policy(self, scale: torch.Tensor | None) -> str:
        # With a GradScaler, non-finite gradients are the scaler's to handle.
        return "ignore" if scale is not None else self.nonfinite

    def _step_of(
        self,
        losses: Sequence[torch.Tensor],
        grad_scaler: torch.amp.GradScaler | None,
        retain_graph: bool,
    ) -> Step:
        """Validate the losses and describe the step (nothing is computed yet)."""
        checked = check_losses(losses)
        self._check_k(len(checked))
        values = loss_values(checked)
        scale = None
        if grad_scaler is not None:
            scale = grad_scaler.scale(torch.ones((), device=checked[0].device))
            checked = [grad_scaler.scale(loss) for loss in checked]
        params, n_shared = self._layout()
        group = fsdp_group(params)
        if group is None:
            group = self.process_group
        elif self.process_group is not None and self.process_group is not group:
            raise ValueError(
                "under FSDP2 mograd reduces over the process group of the parameters' "
                "device mesh; leave process_group unset"
            )
        return Step(
            losses=checked,
            values=values,
            params=params,
            n_shared=n_shared,
            retain_graph=retain_graph,
            scale=scale,
            group=group,
            distributed=distributed.is_distributed(),
            checked=self._policy(scale) != "ignore",
        )

    def _collect(self, step: Step, features: list[torch.Tensor] | None) -> Collected:
        """The one place where a step's source is chosen."""
        engine = self._engine
        loss_level = not getattr(self.weighting, "needs_gram", True)
        if _sharded(step):  # FSDP2: the same choices, on column shards (sources.sharded)
            if step.k > 1 and loss_level:
                return ShardedLosses(step)
            if step.k > 1 and features is not None:
                return collect_sharded_features(step, features)
            return collect_sharded(step, self._fsdp_modules)
        frugal = engine is not None and step.k > 1 and features is None and not loss_level
        if engine is not None and not frugal:
            engine.clear()  # the forward records are not needed
        if step.k == 1:
            return collect_single(step)
        if loss_level:
            return LossesCollected(step)
        if features is not None:
            return collect_features(step, features)
        if frugal and step.params:
            assert engine is not None
            return GramianCollected(step, engine)
        return collect_rows(step)

    def _finish(self, col: Collected) -> StepInfo:
        self._skip_pending = False
        info = run(col, self._combiner, self._policy(col.step.scale), col.step.group)
        if info.skipped:
            self._skip_pending = True
            self._wrapper_state["skipped"] += 1
        self.last_info = info
        return info

    # ------------------------------------------------------------------ entry points
    def backward(
        self,
        losses: Sequence[torch.Tensor] | None = None,
        *,
        features: torch.Tensor | Sequence[torch.Tensor] | None = None,
        grad_scaler: torch.amp.GradScaler | None = None,
        retain_graph: bool = False,
    ) -> StepInfo:
        r"""Write $\sum_i c_i \nabla L_i$ into ``.grad`` and return the step's diagnostics.

        Args:
            losses: $k \ge 1$ scalar losses from one forward pass. With $k = 1$ this is exactly
                ``losses[0].backward()``. ``None`` applies the micro-batches gathered with
                :meth:`accumulate`.
            features: Representation mode (MGDA-UB): the shared representation $z$ (or
                several tensors) that all losses are computed from. The weights come from
                the gradients with respect to $z$ and one backward pass of
                $\sum_i c_i L_i$ writes the gradients: cheaper, an approximation of the
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
            if losses is None:
                if features is not None or grad_scaler is not None:
                    raise ValueError("features= and grad_scaler= need losses")
                return self._flush()
            if self._acc is not None:
                raise RuntimeError(
                    "micro-batches gathered with accumulate() are pending: apply them with "
                    "backward() or step() (no losses) first"
                )
            feats = None if features is None else check_features(features)
            return self._finish(
                self._collect(self._step_of(losses, grad_scaler, retain_graph), feats)
            )

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
        values, i.e. on the full batch: scale each micro-batch's losses by $1/n$ as in
        plain PyTorch accumulation, and $n$ micro-batches give the weights and the update of
        one batch $n$ times larger. A non-finite micro-batch makes the whole accumulated step
        non-finite (raised or skipped when it is applied). Exact mode only (the rows
        source, whatever the weighting; ``jacobian="gramian"`` cannot accumulate).

        Args:
            losses: The $k$ scalar losses of this micro-batch ($k$ fixed across micro-batches).
            grad_scaler: As in :meth:`backward` (the scale must not change in between).
            retain_graph: Keep the autograd graph after the last backward pass.
        """
        with _no_autocast(self._device_type()):
            if self._engine is not None:
                raise ValueError(
                    "accumulate() needs jacobian='rows': the Gram matrix of summed "
                    "micro-batch gradients cannot be formed from per-micro-batch records"
                )
            step = self._step_of(losses, grad_scaler, retain_graph)
            acc = self._acc
            if acc is not None:
                _check_same_batch(acc.step, step)
            if _sharded(step):
                col: Collected = collect_sharded(step, self._fsdp_modules)
            elif step.k == 1:
                col = collect_single(step, accumulating=True)
            else:
                col = collect_rows(step)
            if acc is None:
                self._acc = col
            else:
                acc.add_(col)

    def _flush(self) -> StepInfo:
        acc = self._acc
        if acc is None:
            raise ValueError("backward() without losses: nothing was gathered with accumulate()")
        self._acc = None
        return self._finish(acc)

    # ------------------------------------------------------------------ stepping
    def _reevaluates(self) -> bool:
        return isinstance(self.optimizer, torch.optim.LBFGS)

    @torch.no_grad()
    def _inner_step(self) -> None:
        if self._skip_pending:
            self._skip_pending = False
            return
        with _global_hooks_once():
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
                    "within one step and so cannot skip it; parameters, gradients and "
                    "optimizer state were restored"
                )
            return (info.coefficients.to(info.losses.dtype) * info.losses).sum()

        if self._reevaluates():
            self._skip_pending = False
            with self._restored_on_error(), _global_hooks_once():
                result = self.optimizer.step(evaluate)  # type: ignore[arg-type]
            self._wrapper_state["steps"] += 1
            return result  # type: ignore[return-value]
        objective = evaluate()
        self._inner_step()
        return objective

    @contextlib.contextmanager
    def _restored_on_error(self) -> Iterator[None]:
        """Parameters, ``.grad`` and optimizer state as they were, if a re-evaluating step
        (LBFGS) fails on a non-finite value half way."""
        if self.nonfinite == "ignore":
            yield
            return
        held = self._held()
        data = [p.detach().clone() for p in held]
        grads = [None if p.grad is None else p.grad.clone() for p in held]
        state = copy.deepcopy(self.optimizer.state_dict())
        try:
            yield
        except NonFiniteError:
            with torch.no_grad():
                for p, d, g in zip(held, data, grads):
                    p.copy_(d)
                    p.grad = g
            self.optimizer.load_state_dict(state)
            raise

    def step(  # type: ignore[override]
        self,
        losses: Sequence[torch.Tensor] | Callable[[], Any] | None = None,
        closure: Callable[[], Any] | None = None,
        *,
        features: torch.Tensor | Sequence[torch.Tensor] | None = None,
    ) -> Any:
        r""":meth:`backward` on ``losses`` (or on what ``closure`` returns), then the inner step.

        * ``step(losses)`` returns the step's :class:`StepInfo`.
        * ``step(closure)`` (positional or keyword, as in ``torch.optim``): the closure
          zeroes the gradients, runs the model and returns the losses (a list, or one
          scalar); mograd does the multi-objective backward. Optimizers that re-evaluate
          the closure (LBFGS) get the multi-objective backward at every evaluation.
          Returns, as ``torch.optim`` does, the loss: the scalar $\sum_i c_i L_i$ whose
          gradient was applied (for $k = 1$, the loss itself); the :class:`StepInfo` is
          ``last_info``.
        * A plain ``step()`` after :meth:`backward` only runs the wrapped optimizer's step
          (skipped when that backward was skipped for a non-finite value): gradient
          clipping or ``GradScaler.step`` fit in between. After :meth:`accumulate` it first
          applies the gathered micro-batches and returns their :class:`StepInfo`.

        Args:
            losses: The $k$ scalar losses, a closure, or ``None``.
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
            info = self.backward()
        self._inner_step()
        return info


def _sharded(step: Step) -> bool:
    """The optimizer holds FSDP2's sharded parameters (all of them: ``fsdp_group``)."""
    return bool(step.params) and is_sharded(step.params[0])


def _check_same_batch(first: Step, step: Step) -> None:
    """A micro-batch must match the ones gathered before it (checked before any work)."""
    if step.k != first.k:
        raise ValueError(f"accumulate() got {step.k} losses, earlier micro-batches {first.k}")
    if len(step.params) != len(first.params) or any(
        a is not b for a, b in zip(step.params, first.params)
    ):
        raise RuntimeError("the optimizer's parameters changed during accumulation")


@contextlib.contextmanager
def _global_hooks_once() -> Iterator[None]:
    """The wrapped optimizer's step without the global step hooks of
    ``torch.optim.optimizer.register_optimizer_step_pre_hook``/``_post_hook``: the
    wrapper's own step already ran them, once per step as for any optimizer."""
    pre = torch_optimizer._global_optimizer_pre_hooks
    post = torch_optimizer._global_optimizer_post_hooks
    if not pre and not post:
        yield
        return
    saved_pre, saved_post = dict(pre), dict(post)
    pre.clear()
    post.clear()
    try:
        yield
    finally:
        pre.update(saved_pre)
        post.update(saved_post)


def _no_autocast(device_type: str) -> contextlib.AbstractContextManager[Any]:
    """mograd's own math (Gram matrix, weights, the combination) never runs under autocast:
    a bf16 Gram matrix would change the weights in the third digit."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


MOWrapper = MultiObjectiveOptimizer
"""Alias of :class:`MultiObjectiveOptimizer`."""

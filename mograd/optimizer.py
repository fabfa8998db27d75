"""The torch glue: :class:`MultiObjectiveOptimizer` (alias :data:`MOWrapper`).

The third of mograd's three layers and the only one that touches parameters. One step
(SPEC 1):

1. per-loss gradients on the optimizer's parameters, flattened into ``J`` (k x P), one row at
   a time so that no second k x P copy is made (a loss that reaches only part of the graph,
   like the IB KL term that reaches only the encoder, back-propagates only there);
2. under ``torch.distributed``, ``J`` and the loss values are averaged over the process
   group, so that every rank forms the same Gram matrix;
3. ``G = J_S J_S^T`` on the shared parameters S (:mod:`mograd.solver`);
4. min-norm weights, reweighting and Smooth-IB coefficients (:mod:`mograd.weighting`);
5. ``.grad = sum_i c_i J_i`` for every parameter that some loss reaches;
6. the wrapped optimizer steps.

In *representation* mode (``features=z``, MGDA-UB) the Gram matrix is formed from the
gradients with respect to the shared representation ``z`` instead, and one backward pass of
``sum_i c_i L_i`` writes the gradients.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.distributed as dist

from .solver import DEFAULT_MAX_ITER, DEFAULT_TOL, min_norm_solve
from .weighting import reweight, smooth_coefficients

__all__ = ["MOWrapper", "MultiObjectiveOptimizer", "NonFiniteError", "StepInfo"]

NonFinitePolicy = Literal["raise", "skip", "ignore"]
_POLICIES = ("raise", "skip", "ignore")


class NonFiniteError(FloatingPointError):
    """A loss or a gradient is NaN or infinite (raised with ``nonfinite="raise"``)."""


@dataclass
class StepInfo:
    """Diagnostics of one multi-objective backward pass.

    All tensor fields are detached, on the parameters' device, and computed without a
    device-to-host synchronization; call ``.tolist()`` or :meth:`as_dict` to read them.

    Attributes:
        weights: Min-norm weights ``w*`` (or the fixed weights), shape ``(k,)``.
        reweighted: ``w~ = w* ** power``, shape ``(k,)``.
        coefficients: Smooth-IB coefficients ``c``: the combined gradient is
            ``sum_i c_i grad L_i``, shape ``(k,)``.
        losses: Loss values (averaged over the process group when distributed), ``(k,)``.
        grad_norms: Norms of the per-loss gradients on the shared parameters (or on the
            features in representation mode), ``(k,)``.
        cosines: Pairwise cosine similarities of those gradients, ``(k, k)``.
        iterations: Solver iterations (0 for k = 1 or fixed weights, 1 for the k = 2
            closed form).
        skipped: ``True`` when a non-finite value made the step a no-op
            (``nonfinite="skip"``).
    """

    weights: torch.Tensor
    reweighted: torch.Tensor
    coefficients: torch.Tensor
    losses: torch.Tensor
    grad_norms: torch.Tensor
    cosines: torch.Tensor
    iterations: int
    skipped: bool = False

    def as_dict(self) -> dict[str, Any]:
        """Plain Python numbers and lists (one host synchronization), e.g. for logging."""
        out: dict[str, Any] = {}
        for name in ("weights", "reweighted", "coefficients", "losses", "grad_norms", "cosines"):
            out[name] = getattr(self, name).tolist()
        out["iterations"] = self.iterations
        out["skipped"] = self.skipped
        return out


def _all_finite(*tensors: torch.Tensor) -> torch.Tensor:
    """One boolean tensor, without a host synchronization."""
    out = torch.isfinite(tensors[0]).all()
    for t in tensors[1:]:
        out = out & torch.isfinite(t).all()
    return out


def _check_number(name: str, value: object, *, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or (positive and v <= 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return v


class MultiObjectiveOptimizer(torch.optim.Optimizer):
    """Wrap any ``torch.optim`` optimizer to step on several losses at once (MIB, SPEC 1).

    The wrapper shares ``param_groups``, ``state`` and ``defaults`` with the wrapped
    optimizer, so LR schedulers, ``zero_grad``, step hooks and checkpoints work on it.
    Like ``loss.backward()``, :meth:`backward` *adds* the combined gradient to ``.grad``:
    call ``zero_grad()`` between steps as usual.

    Args:
        optimizer: The wrapped ``torch.optim.Optimizer`` (Adam, SGD, ...).
        shared_params: Parameters whose per-loss gradients form the Gram matrix (default:
            all of the optimizer's parameters). Every parameter still receives
            ``sum_i c_i grad L_i``.
        weights: ``"min_norm"`` (Frank-Wolfe min-norm weights, the paper's method),
            ``"equal"`` (``1/k`` each, the "MIB w.o. aw" ablation) or a fixed sequence of
            non-negative weights used in place of ``w*`` as given.
        power: Reweighting exponent ``p > 0``: ``w~ = w* ** p`` (2.0 = paper's
            ``sqrted=True``; 1.0 = plain MGDA).
        mu: Smooth-IB temperature ``mu > 0`` (paper: 0.2), or ``None`` for no smoothing.
        nonfinite: What a NaN or infinite loss or gradient does: ``"raise"`` a
            :class:`NonFiniteError` (default), ``"skip"`` the step leaving parameters,
            gradients and optimizer state untouched (reported as ``StepInfo.skipped``), or
            ``"ignore"`` (no check: NaN flows on as in plain PyTorch, and a step needs no
            device-to-host synchronization at all). "raise" and "skip" read one boolean from
            the device per step.
        max_iter: Frank-Wolfe iteration cap (k >= 3).
        tol: Frank-Wolfe duality-gap tolerance, relative to the largest squared gradient
            norm (k >= 3).
        process_group: Process group over which per-loss gradients are averaged when
            ``torch.distributed`` is initialized (default: the world group).

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
        shared_params: Iterable[torch.Tensor] | None = None,
        weights: str | Sequence[float] = "min_norm",
        power: float = 2.0,
        mu: float | None = 0.2,
        nonfinite: NonFinitePolicy = "raise",
        max_iter: int = DEFAULT_MAX_ITER,
        tol: float = DEFAULT_TOL,
        process_group: Any = None,
    ) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
            )
        if isinstance(optimizer, MultiObjectiveOptimizer):
            raise TypeError("optimizer is already a MultiObjectiveOptimizer; wrap the inner one")
        self.optimizer = optimizer
        self.power = _check_number("power", power, positive=True)
        self.mu = None if mu is None else _check_number("mu", mu, positive=True)
        if nonfinite not in _POLICIES:
            raise ValueError(f"nonfinite must be one of {_POLICIES}, got {nonfinite!r}")
        self.nonfinite: NonFinitePolicy = nonfinite
        if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
            raise ValueError(f"max_iter must be an int >= 1, got {max_iter!r}")
        self.max_iter = max_iter
        if (
            isinstance(tol, bool)
            or not isinstance(tol, (int, float))
            or not (math.isfinite(tol) and tol >= 0)
        ):
            raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
        self.tol = float(tol)
        self.weights = self._check_weights(weights)
        self.process_group = process_group

        held = [p for group in optimizer.param_groups for p in group["params"]]
        held_ids = {id(p) for p in held}
        if shared_params is None:
            shared = list(held)
        else:
            if isinstance(shared_params, torch.Tensor):
                shared_params = [shared_params]
            shared = list(shared_params)
            if not shared:
                raise ValueError("shared_params is empty; pass None to share all parameters")
            for i, p in enumerate(shared):
                if not isinstance(p, torch.Tensor):
                    raise TypeError(f"shared_params[{i}] is a {type(p).__name__}, not a tensor")
                if id(p) not in held_ids:
                    raise ValueError(
                        f"shared_params[{i}] (shape {tuple(p.shape)}) is not held by the "
                        "wrapped optimizer"
                    )
        shared_ids = {id(p) for p in shared}
        self._shared_ids = shared_ids
        # Layout: shared parameters first (a contiguous prefix of J), then the others.
        self._params: list[torch.Tensor] = [p for p in held if id(p) in shared_ids] + [
            p for p in held if id(p) not in shared_ids
        ]

        self._wrapper_state: dict[str, int] = {"steps": 0, "skipped": 0}
        self._skip_pending = False
        self.last_info: StepInfo | None = None

        # What torch.optim.Optimizer.__init__ would set, minus the parameter bookkeeping
        # that stays with the wrapped optimizer.
        self._optimizer_step_pre_hooks: dict[int, Callable[..., Any]] = OrderedDict()
        self._optimizer_step_post_hooks: dict[int, Callable[..., Any]] = OrderedDict()
        self._optimizer_state_dict_pre_hooks: dict[int, Callable[..., Any]] = OrderedDict()
        self._optimizer_state_dict_post_hooks: dict[int, Callable[..., Any]] = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks: dict[int, Callable[..., Any]] = OrderedDict()
        self._optimizer_load_state_dict_post_hooks: dict[int, Callable[..., Any]] = OrderedDict()
        self._patch_step_function()

    # ------------------------------------------------------------------ shared state
    @property  # type: ignore[override]
    def param_groups(self) -> list[dict[str, Any]]:
        """The wrapped optimizer's ``param_groups`` (the same list object)."""
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self.optimizer.param_groups = value

    @property  # type: ignore[override]
    def state(self) -> Any:
        """The wrapped optimizer's ``state`` (the same dict object)."""
        return self.optimizer.state

    @state.setter
    def state(self, value: Any) -> None:
        self.optimizer.state = value

    @property  # type: ignore[override]
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
        w = self.weights if isinstance(self.weights, str) else list(self.weights)
        return (
            f"{type(self).__name__}(weights={w!r}, power={self.power}, mu={self.mu}, "
            f"nonfinite={self.nonfinite!r},\n  optimizer={self.optimizer!r})"
        )

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a parameter group to the wrapped optimizer (its parameters are not shared)."""
        self.optimizer.add_param_group(param_group)
        known = {id(p) for p in self._params}
        self._params.extend(p for p in param_group["params"] if id(p) not in known)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset the gradients of all parameters (delegates to the wrapped optimizer)."""
        self.optimizer.zero_grad(set_to_none=set_to_none)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The wrapped optimizer's state dict plus the wrapper's own state under ``"mograd"``.

        State-dict hooks registered on the wrapper run as they would on any optimizer.
        """
        for pre_hook in self._optimizer_state_dict_pre_hooks.values():
            pre_hook(self)
        sd = self.optimizer.state_dict()
        sd["mograd"] = dict(self._wrapper_state)
        for post_hook in self._optimizer_state_dict_post_hooks.values():
            hook_result = post_hook(self, sd)
            if hook_result is not None:
                sd = hook_result
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict produced by :meth:`state_dict` (or by the bare wrapped optimizer)."""
        sd = dict(state_dict)
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            hook_result = pre_hook(self, sd)
            if hook_result is not None:
                sd = dict(hook_result)
        own = sd.pop("mograd", None)
        self.optimizer.load_state_dict(sd)
        if own is not None:
            self._wrapper_state = {"steps": int(own["steps"]), "skipped": int(own["skipped"])}
        self._skip_pending = False
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    @property
    def steps(self) -> int:
        """Multi-objective backward passes applied so far (checkpointed)."""
        return self._wrapper_state["steps"]

    # ------------------------------------------------------------------ validation
    @staticmethod
    def _check_weights(weights: str | Sequence[float]) -> str | tuple[float, ...]:
        if isinstance(weights, str):
            if weights not in ("min_norm", "equal"):
                raise ValueError(
                    f"weights must be 'min_norm', 'equal' or a sequence of numbers, got {weights!r}"
                )
            return weights
        if isinstance(weights, torch.Tensor):
            weights = weights.detach().cpu().tolist()
        try:
            values = tuple(float(w) for w in weights)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"weights must be 'min_norm', 'equal' or a sequence of numbers, got {weights!r}"
            ) from exc
        if not values:
            raise ValueError("weights is an empty sequence")
        for i, w in enumerate(values):
            if not math.isfinite(w) or w < 0:
                raise ValueError(f"weights[{i}] must be finite and >= 0, got {w!r}")
        if sum(values) <= 0:
            raise ValueError(f"weights must not all be zero, got {values!r}")
        return values

    @staticmethod
    def _check_losses(losses: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if isinstance(losses, torch.Tensor):
            raise TypeError(
                "losses must be a list of scalar tensors, got a single tensor; "
                "wrap it as [loss] or split a vector with list(losses.unbind())"
            )
        losses = list(losses)
        if not losses:
            raise ValueError("losses is empty: pass at least one scalar loss")
        device = None
        for i, loss in enumerate(losses):
            if not isinstance(loss, torch.Tensor):
                raise TypeError(f"losses[{i}] is a {type(loss).__name__}, not a tensor")
            if loss.numel() != 1 or loss.dim() > 1:
                raise ValueError(
                    f"losses[{i}] must be a scalar, got shape {tuple(loss.shape)}; "
                    "reduce it first (e.g. .mean())"
                )
            if not loss.requires_grad:
                raise ValueError(
                    f"losses[{i}] does not require grad: it is not connected to any parameter"
                )
            if device is None:
                device = loss.device
            elif loss.device != device:
                raise ValueError(
                    f"losses are on different devices: losses[0] on {device}, "
                    f"losses[{i}] on {loss.device}"
                )
        return [loss if loss.dim() == 0 else loss.reshape(()) for loss in losses]

    def _fixed_weights(self, k: int, ref: torch.Tensor) -> torch.Tensor:
        if self.weights == "equal":
            return torch.full((k,), 1.0 / k, dtype=ref.dtype, device=ref.device)
        assert isinstance(self.weights, tuple)
        if len(self.weights) != k:
            raise ValueError(f"weights has {len(self.weights)} entries but {k} losses were given")
        return torch.tensor(self.weights, dtype=ref.dtype, device=ref.device)

    # ------------------------------------------------------------------ the step
    def _distributed(self) -> bool:
        return dist.is_available() and dist.is_initialized()

    def _all_reduce_mean(self, tensor: torch.Tensor) -> None:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=self.process_group)
        tensor.div_(dist.get_world_size(group=self.process_group))

    def _per_loss_jacobian(
        self,
        losses: list[torch.Tensor],
        inputs: list[torch.Tensor],
        retain_last: bool,
        what: str = "any parameter held by the optimizer",
    ) -> tuple[torch.Tensor, list[bool]]:
        """Rows of J, one backward pass per loss, written into one (k, P) buffer."""
        numels = [p.numel() for p in inputs]
        total = sum(numels)
        ref = inputs[0]
        dtype = ref.dtype if ref.dtype in (torch.float32, torch.float64) else torch.float32
        jac = torch.empty((len(losses), total), dtype=dtype, device=ref.device)
        reached = [False] * len(inputs)
        for i, loss in enumerate(losses):
            retain = retain_last or i < len(losses) - 1
            grads = torch.autograd.grad(loss, inputs, retain_graph=retain, allow_unused=True)
            row = jac[i]
            if all(g is None for g in grads):
                raise ValueError(f"losses[{i}] does not depend on {what}")
            offset = 0
            for j, (g, n) in enumerate(zip(grads, numels)):
                seg = row[offset : offset + n]
                if g is None:
                    seg.zero_()
                else:
                    seg.copy_(g.reshape(-1))
                    reached[j] = True
                offset += n
            del grads
        return jac, reached

    @staticmethod
    def _diagnostics(gram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        norms = gram.diagonal().clamp_min(0).sqrt()
        denom = (norms[:, None] * norms[None, :]).clamp_min(torch.finfo(gram.dtype).tiny)
        return norms, gram / denom

    def _weights_and_coefficients(
        self, gram: torch.Tensor, loss_values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        k = gram.shape[0]
        if self.weights == "min_norm":
            if k > 2 and not bool(torch.isfinite(gram).all()):
                w, iters = torch.full((k,), float("nan"), dtype=gram.dtype, device=gram.device), 0
            else:
                res = min_norm_solve(gram, max_iter=self.max_iter, tol=self.tol, validate=False)
                w, iters = res.weights, res.iterations
        else:
            w, iters = self._fixed_weights(k, gram), 0
        w_tilde = reweight(w, self.power)
        coeffs = smooth_coefficients(w_tilde, loss_values, self.mu)
        return w, w_tilde, coeffs, iters

    def _describe_nonfinite(self, loss_values: torch.Tensor, jac: torch.Tensor | None) -> str:
        bad = [i for i, v in enumerate(loss_values.tolist()) if not math.isfinite(v)]
        if bad:
            vals = ", ".join(f"losses[{i}] = {loss_values[i].item()}" for i in bad)
            return f"non-finite loss value: {vals}"
        if jac is not None:
            rows = torch.isfinite(jac).all(dim=1).tolist()
            bad = [i for i, ok in enumerate(rows) if not ok]
            if bad:
                return f"non-finite gradient of losses{bad}"
        return "non-finite combined gradient (check the loss scale and the model)"

    def _handle_nonfinite(
        self,
        policy: str,
        finite: torch.Tensor,
        loss_values: torch.Tensor,
        jac: torch.Tensor | None,
    ) -> bool:
        """Returns True when the step must be skipped (one host read, unless "ignore")."""
        if policy == "ignore" or bool(finite):
            return False
        if policy == "raise":
            raise NonFiniteError(
                self._describe_nonfinite(loss_values, jac)
                + "; parameters, gradients and optimizer state were left untouched "
                "(use nonfinite='skip' to skip such steps)"
            )
        return True

    def _write_grads(self, params: list[torch.Tensor], flat: torch.Tensor, reached: list[bool]):
        offset = 0
        for p, hit in zip(params, reached):
            n = p.numel()
            if hit:
                g = flat[offset : offset + n].view_as(p)
                if g.dtype != p.dtype:
                    g = g.to(p.dtype)
                if p.grad is None:
                    p.grad = g
                else:
                    p.grad.add_(g)
            offset += n

    def backward(
        self,
        losses: Sequence[torch.Tensor],
        *,
        features: torch.Tensor | Sequence[torch.Tensor] | None = None,
        grad_scaler: torch.amp.GradScaler | None = None,
        retain_graph: bool = False,
    ) -> StepInfo:
        """Write ``sum_i c_i grad L_i`` into ``.grad`` and return the step's diagnostics.

        Args:
            losses: k >= 1 scalar losses from one forward pass. With k = 1 this is exactly
                ``losses[0].backward()``.
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
            A :class:`StepInfo`.

        Raises:
            TypeError, ValueError: For malformed losses; nothing is modified.
            NonFiniteError: With ``nonfinite="raise"`` when a loss or gradient is NaN or
                infinite; nothing is modified.
        """
        losses = self._check_losses(losses)
        k = len(losses)
        self._skip_pending = False
        ref = losses[0]
        loss_values = torch.stack([loss.detach() for loss in losses]).to(
            ref.dtype if ref.is_floating_point() else torch.float32
        )
        scale = None
        if grad_scaler is not None:
            scale = grad_scaler.scale(torch.ones((), device=ref.device, dtype=torch.float32))
            losses = [grad_scaler.scale(loss) for loss in losses]
        nonfinite = "ignore" if grad_scaler is not None else self.nonfinite

        if k == 1 and features is None:
            return self._single_loss(losses[0], loss_values, retain_graph, nonfinite)
        if features is not None:
            return self._representation_step(
                losses, loss_values, features, scale, retain_graph, nonfinite
            )

        params = [p for p in self._params if p.requires_grad]
        if not params:
            raise ValueError("the wrapped optimizer holds no parameter that requires grad")
        devices = {p.device for p in params}
        if len(devices) > 1:
            raise ValueError(
                f"parameters are on several devices ({sorted(map(str, devices))}); "
                "mograd needs them on one device"
            )
        jac, reached = self._per_loss_jacobian(losses, params, retain_graph)
        if self._distributed():
            # One collective for J (k times the usual gradient traffic), one small one for
            # the loss values and which parameters some rank reached.
            self._all_reduce_mean(jac)
            small = torch.cat(
                [
                    loss_values.to(jac.dtype),
                    torch.tensor(reached, dtype=jac.dtype, device=jac.device),
                ]
            )
            dist.all_reduce(small, op=dist.ReduceOp.SUM, group=self.process_group)
            world = dist.get_world_size(group=self.process_group)
            loss_values = (small[:k] / world).to(loss_values.dtype)
            reached = [bool(r > 0) for r in small[k:].tolist()]
        n_shared = sum(p.numel() for p in params[: self._n_shared_in(params)])
        shared = jac[:, :n_shared]
        gram = shared @ shared.T
        w, w_tilde, coeffs, iters = self._weights_and_coefficients(gram, loss_values)
        combined = coeffs.to(jac.dtype) @ jac
        finite = _all_finite(loss_values, gram)  # NaN/inf in a shared gradient reach G
        if n_shared < jac.shape[1]:
            finite = finite & torch.isfinite(jac[:, n_shared:].sum())
        norms, cosines = self._diagnostics(gram)
        if scale is not None:
            norms = norms / scale.to(norms.dtype)
        info = StepInfo(w, w_tilde, coeffs, loss_values, norms, cosines, iters)
        if self._handle_nonfinite(nonfinite, finite, loss_values, jac):
            return self._skip(info)
        del jac, shared
        self._write_grads(params, combined, reached)
        self._wrapper_state["steps"] += 1
        self.last_info = info
        return info

    def _n_shared_in(self, params: list[torch.Tensor]) -> int:
        return sum(1 for p in params if id(p) in self._shared_ids)

    def _skip(self, info: StepInfo) -> StepInfo:
        info.skipped = True
        self._skip_pending = True
        self._wrapper_state["skipped"] += 1
        self.last_info = info
        return info

    def _single_loss(
        self, loss: torch.Tensor, loss_values: torch.Tensor, retain_graph: bool, nonfinite: str
    ) -> StepInfo:
        params = [p for p in self._params if p.requires_grad]
        grads = torch.autograd.grad(loss, params, retain_graph=retain_graph, allow_unused=True)
        if all(g is None for g in grads):
            raise ValueError("losses[0] does not depend on any parameter held by the optimizer")
        present = [g for g in grads if g is not None]
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(present)))
        one = torch.ones(1, dtype=loss_values.dtype, device=loss_values.device)
        info = StepInfo(one, one, one, loss_values, norm.reshape(1).to(one.dtype), one[:, None], 0)
        finite = _all_finite(loss_values, norm)  # the norm is reported anyway
        if self._handle_nonfinite(nonfinite, finite, loss_values, None):
            return self._skip(info)
        self._accumulate(params, grads)
        self._wrapper_state["steps"] += 1
        self.last_info = info
        return info

    @staticmethod
    def _accumulate(params: list[torch.Tensor], grads: Sequence[torch.Tensor | None]) -> None:
        for p, g in zip(params, grads):
            if g is None:
                continue
            if p.grad is None:
                p.grad = g
            else:
                p.grad.add_(g)

    def _representation_step(
        self,
        losses: list[torch.Tensor],
        loss_values: torch.Tensor,
        features: torch.Tensor | Sequence[torch.Tensor],
        scale: torch.Tensor | None,
        retain_graph: bool,
        nonfinite: str,
    ) -> StepInfo:
        feats = [features] if isinstance(features, torch.Tensor) else list(features)
        for i, f in enumerate(feats):
            if not isinstance(f, torch.Tensor) or not f.requires_grad:
                raise ValueError(
                    f"features[{i}] must be a tensor that requires grad (the shared "
                    "representation the losses are computed from)"
                )
        k = len(losses)
        jac_z, _ = self._per_loss_jacobian(losses, feats, True, "the features")
        gram = jac_z @ jac_z.T
        if self._distributed():
            # Features of different ranks are different samples: the full-batch Gram is the
            # sum of the per-rank Gram matrices (up to a scale that the weights ignore).
            packed = torch.cat([gram.reshape(-1), loss_values.to(gram.dtype)])
            dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=self.process_group)
            world = dist.get_world_size(group=self.process_group)
            gram = packed[: k * k].view(k, k) / world**2
            loss_values = (packed[k * k :] / world).to(loss_values.dtype)
        w, w_tilde, coeffs, iters = self._weights_and_coefficients(gram, loss_values)
        norms, cosines = self._diagnostics(gram)
        if scale is not None:
            norms = norms / scale.to(norms.dtype)
        info = StepInfo(w, w_tilde, coeffs, loss_values, norms, cosines, iters)
        total = (coeffs.detach().to(losses[0].dtype) * torch.stack(losses)).sum()
        params = [p for p in self._params if p.requires_grad]
        grads = torch.autograd.grad(total, params, retain_graph=retain_graph, allow_unused=True)
        reached = [g is not None for g in grads]
        present = [g for g in grads if g is not None]
        if self._distributed():
            flat = torch.cat([g.reshape(-1) for g in present])
            self._all_reduce_mean(flat)
            present = list(torch.split(flat, [g.numel() for g in present]))
            present = [f.view_as(g) for f, g in zip(present, [g for g in grads if g is not None])]
        if nonfinite != "ignore":
            # A sum per tensor is the cheapest read that NaN and inf survive.
            total_sum = torch.stack([g.sum() for g in present]).sum()
            finite = _all_finite(loss_values, total_sum, gram)
            if self._handle_nonfinite(nonfinite, finite, loss_values, jac_z):
                return self._skip(info)
        it = iter(present)
        self._accumulate(params, [next(it) if hit else None for hit in reached])
        self._wrapper_state["steps"] += 1
        self.last_info = info
        return info

    @torch.no_grad()
    def _inner_step(self) -> None:
        if self._skip_pending:
            self._skip_pending = False
            return
        self.optimizer.step()

    def step(  # type: ignore[override]
        self,
        losses: Sequence[torch.Tensor] | None = None,
        closure: Callable[[], Sequence[torch.Tensor]] | None = None,
        *,
        features: torch.Tensor | Sequence[torch.Tensor] | None = None,
    ) -> StepInfo | None:
        """:meth:`backward` on ``losses`` (or on what ``closure`` returns), then the inner step.

        A plain ``step()`` after :meth:`backward` only runs the wrapped optimizer's step
        (skipped when that backward was skipped for a non-finite value): gradient clipping
        or ``GradScaler.step`` fit in between.

        Args:
            losses: The k scalar losses, or ``None``.
            closure: Alternatively, a callable that re-evaluates the model and returns the
                losses (it is called with gradients enabled).
            features: Representation mode, see :meth:`backward`.

        Returns:
            The :class:`StepInfo` of this step, or ``None`` for a plain ``step()``.
        """
        if losses is not None and closure is not None:
            raise ValueError("pass either losses or closure, not both")
        info: StepInfo | None = None
        if closure is not None:
            with torch.enable_grad():
                losses = closure()
        if losses is not None:
            info = self.backward(losses, features=features)
        elif features is not None:
            raise ValueError("features= needs losses")
        self._inner_step()
        return info


MOWrapper = MultiObjectiveOptimizer
"""Alias of :class:`MultiObjectiveOptimizer`."""

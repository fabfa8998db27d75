"""The Hugging Face ``Trainer`` on several losses: :class:`MOTrainer`.

:class:`MOTrainer` is a small ``transformers.Trainer`` subclass. Its ``compute_loss``
returns a list of k losses instead of one; the optimizer the Trainer builds (AdamW by
default, or the one passed with ``optimizers=``) is wrapped in :class:`mograd.MOWrapper`;
and its ``training_step`` hands each micro-batch to ``MOWrapper.accumulate``. On the last
micro-batch of an accumulation window it solves once, on the summed per-loss gradients,
and writes ``.grad``; the Trainer then clips (``max_grad_norm``), steps and schedules as
usual. So ``gradient_accumulation_steps=n`` with micro-batches of b takes the steps of one
batch of n b (the accumulation contract of ``docs/api.md``). The losses, weights and
coefficients of the latest step are added to the Trainer's logs (``mograd/loss_0``,
``mograd/w_0``, ``mograd/c_0``, ...).

``fp16=True`` (a ``GradScaler``) works through ``accumulate(..., grad_scaler=...)``; under
``torch.distributed`` (``accelerate launch``/``torchrun``) mograd all-reduces the per-loss
gradients itself when it solves. DeepSpeed and FSDP, which own the backward pass, are not
supported.

Example:
    >>> import tempfile
    >>> import torch
    >>> from transformers import PrinterCallback, TrainingArguments
    >>> from mograd.integrations.transformers import MOTrainer
    >>> class TwoTargets(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.net = torch.nn.Linear(4, 2)
    ...     def forward(self, x):
    ...         out = self.net(x)
    ...         return {"losses": [out[:, 0].pow(2).mean(), (out[:, 1] - 1).pow(2).mean()]}
    >>> data = [{"x": torch.randn(4)} for _ in range(16)]
    >>> args = TrainingArguments(output_dir=tempfile.mkdtemp(), max_steps=2,
    ...                          per_device_train_batch_size=4, gradient_accumulation_steps=2,
    ...                          logging_steps=1, save_strategy="no", report_to=[],
    ...                          use_cpu=True, disable_tqdm=True)
    >>> trainer = MOTrainer(model=TwoTargets(), args=args, train_dataset=data)
    >>> trainer.remove_callback(PrinterCallback)  # keep the logs out of stdout
    >>> _ = trainer.train()
    >>> trainer.state.global_step
    2
    >>> sorted(k for k in trainer.state.log_history[0] if k.startswith("mograd/w_"))
    ['mograd/w_0', 'mograd/w_1']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..optimizer import MultiObjectiveOptimizer, StepInfo
from . import missing_framework

try:
    import transformers
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise missing_framework(__name__, "Hugging Face transformers", exc) from exc

__all__ = ["MOTrainer", "unwrap_optimizer"]


def unwrap_optimizer(optimizer: Any) -> MultiObjectiveOptimizer:
    """The ``MOWrapper`` inside a Trainer's optimizer (accelerate wraps it once more).

    Args:
        optimizer: ``trainer.optimizer``.

    Returns:
        The :class:`mograd.MultiObjectiveOptimizer` it holds.

    Raises:
        TypeError: If there is none.

    Example:
        >>> import torch, mograd
        >>> opt = mograd.MOWrapper(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1))
        >>> unwrap_optimizer(opt) is opt
        True
    """
    opt = optimizer
    while opt is not None and not isinstance(opt, MultiObjectiveOptimizer):
        opt = getattr(opt, "optimizer", None)
    if opt is None:
        raise TypeError(
            f"the Trainer's optimizer ({type(optimizer).__name__}) is not a mograd.MOWrapper"
        )
    return opt


def _losses_of(outputs: Any) -> list[torch.Tensor]:
    losses = outputs.get("losses") if isinstance(outputs, Mapping) else None
    if losses is None:
        losses = getattr(outputs, "losses", None)
    if losses is None or isinstance(losses, torch.Tensor):
        raise TypeError(
            "MOTrainer: the model's outputs have no 'losses' list; return the k losses "
            "from the model (outputs['losses']) or override compute_loss"
        )
    return list(losses)


class MOTrainer(transformers.Trainer):
    """A ``Trainer`` whose ``compute_loss`` returns k losses, combined by mograd each step.

    Override :meth:`compute_loss` to return the k losses of a micro-batch, or let the model
    return them as ``outputs["losses"]`` (the default ``compute_loss`` reads them there).

    Args:
        *args: As for ``transformers.Trainer``.
        mograd_options: Keyword arguments for :class:`mograd.MOWrapper` (``weights=``,
            ``power=``, ``mu=``, ``normalize=``, ...).
        loss_names: One name per loss for the logged keys (``mograd/w_<name>``, ...), or
            ``None`` for the indices.
        **kwargs: As for ``transformers.Trainer``.

    Attributes:
        last_info: The :class:`mograd.StepInfo` of the latest optimizer step, or ``None``.
    """

    def __init__(
        self,
        *args: Any,
        mograd_options: Mapping[str, Any] | None = None,
        loss_names: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.mograd_options = dict(mograd_options or {})
        self.loss_names = None if loss_names is None else [str(n) for n in loss_names]
        self.last_info: StepInfo | None = None

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """Build the Trainer's optimizer as usual and wrap it in ``mograd.MOWrapper``."""
        opt = super().create_optimizer(model)
        if not isinstance(opt, MultiObjectiveOptimizer):
            opt = MultiObjectiveOptimizer(opt, **self.mograd_options)
            self.optimizer = opt
        return opt

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        """Return the k losses of one micro-batch (each a mean over its samples).

        The default reads them from the model's outputs (``outputs["losses"]``). The
        Trainer's evaluation calls it with ``return_outputs=True`` and expects
        ``(scalar loss, outputs)`` there; the default returns the plain sum of the losses.

        Args:
            model: The model.
            inputs: The micro-batch.
            return_outputs: Evaluation: return ``(scalar loss, outputs)``.
            num_items_in_batch: Unused (each loss is a mean over its micro-batch).

        Returns:
            The list of k scalar losses, or ``(sum, outputs)`` with ``return_outputs``.
        """
        outputs = model(**inputs)
        losses = _losses_of(outputs)
        if return_outputs:
            return torch.stack([loss.float() for loss in losses]).sum(), outputs
        return losses

    def training_step(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        num_items_in_batch: Any = None,
    ) -> torch.Tensor:
        """Gather one micro-batch's per-loss gradients; solve once on the last one.

        Returns:
            What the Trainer reports as ``loss``: the plain sum of the k losses, divided
            by the number of micro-batches in the window.
        """
        model.train()
        inputs = self._prepare_inputs(inputs)
        with self.compute_loss_context_manager():
            out = self.compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)
        losses: list[torch.Tensor] = [out] if isinstance(out, torch.Tensor) else list(out)
        if self.loss_names is not None and len(self.loss_names) != len(losses):
            raise ValueError(
                f"loss_names has {len(self.loss_names)} names, compute_loss returned "
                f"{len(losses)} losses"
            )
        n = int(self.current_gradient_accumulation_steps)
        wrapper = unwrap_optimizer(self.optimizer)
        scaler = getattr(self.accelerator, "scaler", None)
        with torch.autocast(self.args.device.type, enabled=False):
            wrapper.accumulate([loss / n for loss in losses], grad_scaler=scaler)
            if self.accelerator.sync_gradients:  # last micro-batch: solve once, write .grad
                self.last_info = wrapper.backward()
        return torch.stack([loss.detach().float() for loss in losses]).sum() / n

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the latest step's losses, weights and coefficients to the training logs."""
        info = self.last_info
        if info is not None and "loss" in logs:
            k = len(info.losses)
            names = self.loss_names if self.loss_names is not None else range(k)
            values = zip(
                names, info.losses.tolist(), info.weights.tolist(), info.coefficients.tolist()
            )
            for name, loss, w, c in values:
                logs[f"mograd/loss_{name}"] = loss
                logs[f"mograd/w_{name}"] = w
                logs[f"mograd/c_{name}"] = c
        super().log(logs, start_time)

"""PyTorch Lightning: step ``MOWrapper`` on several losses from a ``LightningModule``.

The recipe is **manual optimization**. Lightning's automatic loop calls ``loss.backward()``
on the one loss that ``training_step`` returns, which is exactly what a multi-objective
step must not do: mograd needs all k losses, runs the k backward passes itself and writes
the combined gradient. So either

* subclass :class:`MOLightningModule`, return the losses from ``compute_losses`` and an
  ``MOWrapper`` from ``configure_optimizers``; or, in any ``LightningModule``,
* set ``self.automatic_optimization = False`` in ``__init__`` and call
  ``mograd_step(self, losses)`` in ``training_step``.

:func:`mograd_step` steps through ``self.optimizers()`` (Lightning's optimizer wrapper), so
the trainer counts the step (``max_steps``, ``global_step``, logging intervals) and the
precision plugin and the strategy see it:

* plain and ``bf16-mixed`` precision: ``opt.step(closure=...)``; the precision plugin hands
  the closure to ``MOWrapper.step``, which runs the multi-objective backward on the losses
  the closure returns;
* ``16-mixed`` (a ``GradScaler``, GPU only): ``MOWrapper.backward(losses,
  grad_scaler=...)`` first, then ``opt.step()``, which unscales and lets the scaler step
  (or skip) as usual;
* the optimizer step runs with autocast disabled, so the Gram matrix and the weights are
  computed in the parameters' precision, not in bfloat16;
* ``strategy="ddp"``: nothing to add. The per-loss gradients come from
  ``torch.autograd.grad``, which DDP's hooks do not see; mograd averages them over the
  process group itself, so every rank takes the step of one process on the whole batch.

Caveats: in manual optimization Lightning does not step LR schedulers; call
``self.lr_schedulers().step()`` yourself. With a closure, ``on_before_optimizer_step``
hooks run before mograd writes ``.grad`` (gradient-norm callbacks see no gradient): log
from the :class:`mograd.StepInfo` instead (:func:`log_step_info`).

Example:
    >>> import lightning as L
    >>> import torch
    >>> import mograd
    >>> from mograd.integrations.lightning import MOLightningModule
    >>> class TwoTargets(MOLightningModule):
    ...     loss_names = ("a", "b")
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.net = torch.nn.Linear(4, 2)
    ...     def configure_optimizers(self):
    ...         return mograd.MOWrapper(torch.optim.SGD(self.net.parameters(), lr=0.1))
    ...     def compute_losses(self, batch, batch_idx):
    ...         out = self.net(batch[0])
    ...         return [out[:, 0].pow(2).mean(), (out[:, 1] - 1).pow(2).mean()]
    >>> data = torch.utils.data.TensorDataset(torch.randn(16, 4))
    >>> trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False,
    ...                     enable_checkpointing=False, enable_progress_bar=False,
    ...                     enable_model_summary=False)
    >>> trainer.fit(TwoTargets(), torch.utils.data.DataLoader(data, batch_size=8))
    >>> trainer.global_step
    2
    >>> sorted(k for k in trainer.callback_metrics if k.startswith("mograd/w_"))
    ['mograd/w_a', 'mograd/w_b']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..optimizer import MultiObjectiveOptimizer, StepInfo
from . import missing_framework

try:
    import lightning.pytorch as pl
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise missing_framework(__name__, "PyTorch Lightning (the lightning package)", exc) from exc

__all__ = ["MOLightningModule", "log_step_info", "mograd_step"]


def _wrapper_of(module: pl.LightningModule) -> tuple[Any, MultiObjectiveOptimizer]:
    """Lightning's optimizer wrapper of ``module`` and the ``MOWrapper`` inside it."""
    opt = module.optimizers()
    if isinstance(opt, list):
        raise ValueError(
            f"mograd_step expects one optimizer, configure_optimizers returned {len(opt)}"
        )
    inner = getattr(opt, "optimizer", opt)
    if not isinstance(inner, MultiObjectiveOptimizer):
        raise TypeError(
            f"configure_optimizers must return a mograd.MOWrapper, got {type(inner).__name__}"
        )
    return opt, inner


def mograd_step(module: pl.LightningModule, losses: Sequence[torch.Tensor]) -> StepInfo:
    """One multi-objective optimizer step from ``training_step`` (manual optimization).

    Zeroes the gradients, lets ``MOWrapper`` combine the per-loss gradients and steps
    through Lightning's optimizer wrapper, so that the trainer, its precision plugin and
    its strategy see the step.

    Args:
        module: The ``LightningModule`` (with ``automatic_optimization = False``) whose
            ``configure_optimizers`` returned one ``mograd.MOWrapper``.
        losses: The k scalar losses of this batch.

    Returns:
        The step's :class:`mograd.StepInfo` (``skipped`` if a non-finite value made
        ``nonfinite="skip"`` skip it).

    Raises:
        RuntimeError: If the module uses automatic optimization.
        TypeError: If its optimizer is not a ``mograd.MOWrapper``.
        ValueError: If it has several optimizers.

    Example:
        See the module's example; in a ``training_step``::

            info = mograd_step(self, [l_pred, l_info])
    """
    if module.automatic_optimization:
        raise RuntimeError(
            "mograd_step needs manual optimization: set self.automatic_optimization = False "
            "in the LightningModule's __init__ (or subclass MOLightningModule)"
        )
    opt, wrapper = _wrapper_of(module)
    scaler = getattr(module.trainer.precision_plugin, "scaler", None)
    losses = list(losses)
    with torch.autocast(module.device.type, enabled=False):
        opt.zero_grad()
        if scaler is None:
            opt.step(closure=lambda: losses)
        else:  # 16-mixed: scaled backward; the plugin unscales, then the scaler steps
            wrapper.backward(losses, grad_scaler=scaler)
            opt.step()
    info = wrapper.last_info
    if info is None:  # pragma: no cover - MOWrapper always records a step
        raise RuntimeError("the optimizer step recorded no StepInfo")
    return info


def log_step_info(
    module: pl.LightningModule,
    info: StepInfo,
    names: Sequence[str] | None = None,
    *,
    prefix: str = "mograd/",
    prog_bar: bool = False,
) -> None:
    """Log a step's losses, weights and coefficients with ``module.log_dict``, per step.

    Keys are ``{prefix}loss_{name}``, ``{prefix}w_{name}`` and ``{prefix}c_{name}``,
    one per loss (``name`` defaults to the loss's index).

    Args:
        module: The ``LightningModule`` logging them (inside ``training_step``).
        info: The step's :class:`mograd.StepInfo` (from :func:`mograd_step`).
        names: One name per loss, or ``None`` for ``"0"``, ``"1"``, ...
        prefix: Prepended to every key.
        prog_bar: Also show them in the progress bar.

    Raises:
        ValueError: If ``names`` does not name every loss once.
    """
    k = len(info.losses)
    keys = [str(i) for i in range(k)] if names is None else [str(n) for n in names]
    if len(keys) != k or len(set(keys)) != k:
        raise ValueError(f"names must give {k} distinct names, one per loss, got {names!r}")
    metrics: dict[str, torch.Tensor] = {}
    for i, name in enumerate(keys):
        metrics[f"{prefix}loss_{name}"] = info.losses[i]
        metrics[f"{prefix}w_{name}"] = info.weights[i]
        metrics[f"{prefix}c_{name}"] = info.coefficients[i]
    module.log_dict(metrics, on_step=True, on_epoch=False, prog_bar=prog_bar)


class MOLightningModule(pl.LightningModule):
    """A ``LightningModule`` trained on several losses by its ``MOWrapper``.

    Subclasses implement :meth:`compute_losses` (instead of ``training_step``) and
    ``configure_optimizers`` (returning one ``mograd.MOWrapper``). Each training step
    computes the losses, takes one :func:`mograd_step` and logs the step's losses, weights
    and coefficients with :func:`log_step_info` (names from :attr:`loss_names`).

    Attributes:
        loss_names: One name per loss for the logged keys (``mograd/w_<name>``, ...), or
            ``None`` for the indices.
        last_info: The :class:`mograd.StepInfo` of the latest step, or ``None``.
    """

    loss_names: Sequence[str] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.automatic_optimization = False  # mograd runs the backward: see mograd_step
        self.last_info: StepInfo | None = None

    def compute_losses(self, batch: Any, batch_idx: int) -> Sequence[torch.Tensor]:
        """Return the k scalar losses of one training batch.

        Args:
            batch: The batch, as ``training_step`` receives it.
            batch_idx: Its index in the epoch.

        Returns:
            The k scalar losses (k fixed across steps).
        """
        raise NotImplementedError(f"{type(self).__name__} must implement compute_losses")

    def training_step(self, batch: Any, batch_idx: int) -> None:
        """Compute the losses, take one multi-objective step and log its diagnostics."""
        losses = self.compute_losses(batch, batch_idx)
        info = mograd_step(self, losses)
        self.last_info = info
        log_step_info(self, info, self.loss_names)

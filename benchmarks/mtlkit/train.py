"""One (method, seed) run on Multi-Fashion: train with ``MOWrapper``, time, evaluate.

Every run of a benchmark invocation sees the same training and test pairs (fixed subsets),
starts from ``torch.manual_seed(seed)`` (model initialization) and shuffles with its own
generator seeded by ``seed``, so the methods differ only in how they combine the gradients.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .methods import Method, build_optimizer
from .model import MultiLeNet

__all__ = ["RunConfig", "Tensors", "evaluate", "run"]


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run besides (method, seed).

    Attributes:
        epochs: Training epochs.
        batch_size: Mini-batch size (256, as Lin et al. 2019).
        optimizer: Inner optimizer: ``"adam"`` or ``"sgd"`` (momentum 0.9).
        lr: Learning rate of the inner optimizer.
        milestones: Epochs at which the learning rate halves (``MultiStepLR``, gamma 0.5).
        train_limit: Train on a fixed random subset of this many pairs (None: all 120 000).
        test_limit: Evaluate on a fixed random subset of this many pairs (None: all 20 000).
        loss_limit: Training pairs on which the final training losses are measured.
        device: ``"cpu"`` or ``"cuda"``.
    """

    epochs: int = 3
    batch_size: int = 256
    optimizer: str = "adam"
    lr: float = 1e-3
    milestones: tuple[int, ...] = ()
    train_limit: int | None = None
    test_limit: int | None = None
    loss_limit: int = 5000
    device: str = "cpu"

    def fingerprint(self) -> dict[str, Any]:
        """The settings that change results (a stored run is reused only if they match)."""
        d = asdict(self)
        d.pop("device")
        d["milestones"] = list(self.milestones)
        return d


@dataclass
class Tensors:
    """The run's data on its device: training and test images ``(N, 1, 28, 28)``, labels
    ``(N, 2)``."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


@torch.no_grad()
def evaluate(
    model: MultiLeNet, x: torch.Tensor, y: torch.Tensor, batch: int = 2000
) -> tuple[list[float], list[float]]:
    """Per-task accuracy and mean cross-entropy of ``model`` on ``(x, y)``."""
    model.eval()
    k = y.shape[1]
    correct = torch.zeros(k, dtype=torch.float64, device=x.device)
    loss = torch.zeros(k, dtype=torch.float64, device=x.device)
    for i in range(0, x.shape[0], batch):
        _, logits = model(x[i : i + batch])
        for t, out in enumerate(logits):
            yt = y[i : i + batch, t]
            correct[t] += (out.argmax(1) == yt).sum()
            loss[t] += F.cross_entropy(out, yt, reduction="sum").double()
    model.train()
    n = max(1, x.shape[0])
    return (correct / n).tolist(), (loss / n).tolist()


def _inner(model: torch.nn.Module, cfg: RunConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; expected 'adam' or 'sgd'")


def run(
    method: Method, seed: int, cfg: RunConfig, data: Tensors, progress: bool = True
) -> dict[str, Any]:
    """Train and evaluate one (method, seed).

    Returns:
        A JSON-ready record: test accuracies and losses per task, final training losses
        (on the first ``loss_limit`` training pairs), wall and process CPU time of every
        training epoch (evaluation excluded), the per-epoch mean of the weights the
        optimizer chose, and the wrapper's arguments.
    """
    torch.manual_seed(seed)
    device = torch.device(cfg.device)
    model = MultiLeNet(n_tasks=data.y_train.shape[1]).to(device)
    opt, spelling = build_optimizer(method, _inner(model, cfg), seed)
    sched = (
        torch.optim.lr_scheduler.MultiStepLR(opt, list(cfg.milestones), gamma=0.5)
        if cfg.milestones
        else None
    )
    gen = torch.Generator().manual_seed(seed)
    n = data.x_train.shape[0]
    steps_per_epoch = (n + cfg.batch_size - 1) // cfg.batch_size
    bar = tqdm(
        total=cfg.epochs * steps_per_epoch,
        desc=f"{method.label} s{seed}",
        disable=not progress,
        leave=False,
        dynamic_ncols=True,
    )
    epoch_s: list[float] = []
    epoch_cpu_s: list[float] = []
    weights: list[list[float]] = []
    train_loss: list[list[float]] = []
    t_run = time.perf_counter()
    for _ in range(cfg.epochs):
        order = torch.randperm(n, generator=gen).to(device)
        w_sum = torch.zeros(data.y_train.shape[1], device=device)
        l_sum = torch.zeros(data.y_train.shape[1], device=device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(0, n, cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            x, y = data.x_train[idx], data.y_train[idx]
            z, logits = model(x)
            losses = [F.cross_entropy(out, y[:, t]) for t, out in enumerate(logits)]
            opt.zero_grad(set_to_none=True)
            info = opt.step(losses, features=z) if method.representation else opt.step(losses)
            w_sum += info.weights.detach().to(w_sum.dtype)
            l_sum += info.losses.detach().to(l_sum.dtype)
            bar.update(1)
        if device.type == "cuda":
            torch.cuda.synchronize()
        epoch_s.append(time.perf_counter() - t0)
        epoch_cpu_s.append(time.process_time() - c0)
        weights.append((w_sum / steps_per_epoch).tolist())
        train_loss.append((l_sum / steps_per_epoch).tolist())
        if sched is not None:
            sched.step()
    bar.close()
    acc, test_loss = evaluate(model, data.x_test, data.y_test)
    m = min(cfg.loss_limit, n)
    _, final_train_loss = evaluate(model, data.x_train[:m], data.y_train[:m])
    return {
        "method": method.label,
        "group": method.group,
        "ray": None if method.ray is None else list(method.ray),
        "representation": method.representation,
        "seed": seed,
        "mograd_args": method.describe,
        "api": spelling,
        "config": cfg.fingerprint(),
        "acc": acc,
        "test_loss": test_loss,
        "train_loss": final_train_loss,
        "epoch_train_loss": train_loss,
        "epoch_s": epoch_s,
        "epoch_cpu_s": epoch_cpu_s,
        "weights": weights,
        "duration_s": time.perf_counter() - t_run,
    }

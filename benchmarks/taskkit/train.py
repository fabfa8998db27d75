"""One (method, seed) run: train the shared network, trace the cosines, time, evaluate.

Every run of an invocation sees the same training and test examples, starts from
``torch.manual_seed(seed)`` (initialization) and shuffles with its own generator seeded by
``seed``, so the methods differ only in how they combine the four gradients. A single-task
baseline trains the same network on one task's loss with the plain inner optimizer.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from .data import TaskData
from .methods import Method, build_optimizer
from .model import TaskNet
from .tasks import TASKS, metrics, task_losses

__all__ = ["RunConfig", "run"]


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run besides (method, seed).

    Attributes:
        epochs: Training epochs.
        batch_size: Mini-batch size.
        lr: Adam's learning rate.
        train_limit: Training images (a fixed random subset; None: all 60 000).
        test_limit: Test images (a fixed random subset; None: all 10 000).
        width: Size of the shared representation.
        trace_every: Steps between two points of the cosine and gradient-norm traces (each
            point is the mean over those steps).
        device: ``"cpu"`` or ``"cuda"``.
    """

    epochs: int = 5
    batch_size: int = 128
    lr: float = 2e-3
    train_limit: int | None = 6000
    test_limit: int | None = 2000
    width: int = 64
    trace_every: int = 10
    device: str = "cpu"

    def fingerprint(self) -> dict[str, Any]:
        """The settings that change results (a stored run is reused only if they match)."""
        d = asdict(self)
        d.pop("device")
        return d


def _short(values: torch.Tensor) -> list[float]:
    """Four significant digits (the traces are read as curves; keeps the records small)."""
    return [float(f"{v:.4g}") for v in values.tolist()]


class _Trace:
    """Running means of the pairwise cosines, of the fraction of steps where a cosine is
    negative and of the gradient norms (Gram-matrix steps only: a loss-level step has none),
    and of the coefficients."""

    def __init__(self, k: int, every: int, device: torch.device, cosines: bool) -> None:
        self.every, self.k, self.n, self.cosines = every, k, 0, cosines
        self.acc = torch.zeros(3, k, k, dtype=torch.float64, device=device)
        self.points: dict[str, list[Any]] = {
            "step": [],
            "cosines": [],
            "negative": [],
            "grad_norms": [],
        }
        self.coef = torch.zeros(k, dtype=torch.float64, device=device)

    def add(self, info: Any, step: int) -> None:
        self.coef += info.coefficients.detach().to(torch.float64)
        if not self.cosines:
            return
        cos = info.cosines.to(torch.float64)
        self.acc[0] += cos
        self.acc[1].diagonal().add_(info.grad_norms.to(torch.float64))
        self.acc[2] += cos < 0
        self.n += 1
        if self.n == self.every:
            iu = torch.triu_indices(self.k, self.k, 1)
            mean = (self.acc / self.n).cpu()
            self.points["step"].append(step)
            self.points["cosines"].append(_short(mean[0][iu[0], iu[1]]))
            self.points["negative"].append(_short(mean[2][iu[0], iu[1]]))
            self.points["grad_norms"].append(_short(mean[1].diagonal()))
            self.acc.zero_()
            self.n = 0

    def take_coefficients(self, steps: int) -> list[float]:
        out = (self.coef / max(1, steps)).tolist()
        self.coef.zero_()
        return out


def _epoch(
    model: TaskNet,
    opt: Any,
    method: Method,
    data: TaskData,
    order: torch.Tensor,
    cfg: RunConfig,
    trace: _Trace | None,
    step0: int,
    bar: Any,
) -> int:
    """One training epoch; returns the step count after it."""
    step = step0
    for i in range(0, len(data), cfg.batch_size):
        batch = data.take(order[i : i + cfg.batch_size])
        z, out = model(batch.x)
        losses = task_losses(out, batch)
        opt.zero_grad(set_to_none=True)
        if method.single is not None:
            losses[method.single].backward()  # type: ignore[no-untyped-call]
            opt.step()
        else:
            info = opt.step(losses, features=z) if method.representation else opt.step(losses)
            assert trace is not None
            trace.add(info, step)
        step += 1
        bar.update(1)
    return step


def run(
    method: Method,
    seed: int,
    cfg: RunConfig,
    train: TaskData,
    test: TaskData,
    progress: bool = True,
) -> dict[str, Any]:
    """Train and evaluate one (method, seed).

    Returns:
        A JSON-ready record: the test metrics of every task (:func:`taskkit.tasks.metrics`),
        the wall and process CPU time of every training epoch (evaluation excluded), the
        traces of the pairwise cosines, of the fraction of steps with a negative cosine
        and of the gradient norms on the shared trunk (pairs in ``triu`` order: 01, 02, 03,
        12, 13, 23), and the per-epoch mean coefficients.
    """
    torch.manual_seed(seed)
    device = torch.device(cfg.device)
    model = TaskNet(cfg.width).to(device)
    inner = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    single = method.single is not None
    opt: Any = inner if single else build_optimizer(method, inner, model.trunk.parameters(), seed)
    trace = None if single else _Trace(len(TASKS), cfg.trace_every, device, method.gram)
    gen = torch.Generator().manual_seed(seed)
    n = len(train)
    steps_per_epoch = (n + cfg.batch_size - 1) // cfg.batch_size
    bar = tqdm(
        total=cfg.epochs * steps_per_epoch,
        desc=f"{method.label} s{seed}",
        disable=not progress,
        leave=False,
        dynamic_ncols=True,
    )
    epoch_s, epoch_cpu_s, coefficients = [], [], []
    t_run, step = time.perf_counter(), 0
    for _ in range(cfg.epochs):
        order = torch.randperm(n, generator=gen).to(device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        step = _epoch(model, opt, method, train, order, cfg, trace, step, bar)
        if device.type == "cuda":
            torch.cuda.synchronize()
        epoch_s.append(time.perf_counter() - t0)
        epoch_cpu_s.append(time.process_time() - c0)
        if trace is not None:
            coefficients.append(trace.take_coefficients(steps_per_epoch))
    bar.close()
    return {
        "method": method.label,
        "base": method.base,
        "single": None if method.single is None else TASKS[method.single].name,
        "representation": method.representation,
        "seed": seed,
        "mograd_args": method.describe,
        "config": cfg.fingerprint(),
        "test": metrics(model, test),
        "epoch_s": epoch_s,
        "epoch_cpu_s": epoch_cpu_s,
        "coefficients": coefficients,
        "trace": None if trace is None or not method.gram else trace.points,
        "duration_s": time.perf_counter() - t_run,
    }

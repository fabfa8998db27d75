r"""Step overhead of mograd against plain Adam and TorchJD, in one run.

For each model and number of losses k, every method trains its own copy of the same model on
the same batch; steps are interleaved (one step of each method per round) so that machine
noise hits all of them alike. Reported: the median wall time of a full step (forward,
backward, optimizer step) and its ratio to plain Adam on the summed losses, and the peak
memory a step adds (CUDA: ``max_memory_allocated``; CPU: peak RSS growth of a fresh child
process running that method alone).

Methods:
    adam            plain Adam on the sum of the losses (the baseline, ratio 1.00)
    mograd          MOWrapper(Adam), exact per-loss gradients (the paper's method)
    mograd_repr     MOWrapper(Adam) in representation mode (features=z, MGDA-UB)
    mograd_repr_nocheck  the same with nonfinite="ignore" (no finiteness check, no host read)
    mograd_frugal   MOWrapper(Adam, jacobian="gramian", modules=model): exact, no k x P
                    buffer, the update from the forward records (no weighted backward pass)
    floor_exact     the exact step written by hand: k autograd.grad into one J buffer,
                    G = J J^T, min-norm weights, MIB coefficients, .grad = c J, Adam
    floor_repr      representation mode written by hand: k autograd.grad on the features,
                    G, closed form, MIB coefficients, one backward of sum_i c_i L_i, Adam
    floor_repr_checked  floor_repr plus the finiteness read that mograd's default
                    (nonfinite="raise") adds: one sum per parameter gradient and one host read
    floor_checked   plain Adam plus what the default guard must do on a loss-level step
                    whatever the weighting: the graph walk for leaves outside the optimizer
                    (mograd.gramian.reached_leaves) and one fused finiteness read of every
                    gradient with one host read (the floor of w:<loss-level name>)
    mograd_upgrad   MOWrapper(Adam, weights=UPGrad()) (exact per-loss gradients)
    mograd_cagrad   MOWrapper(Adam, weights=CAGrad()) (c = 0.5)
    torchjd_autogram  TorchJD autogram.Engine(model, batch_dim=None): the Gramian of the k
                    losses, the same MIB weights and coefficients as floor_exact, one backward
                    pass of sum_i c_i L_i, Adam
    torchjd_mgda    TorchJD autojac.backward + jac_to_grad(MGDA()) + Adam
    torchjd_upgrad  TorchJD autojac.backward + jac_to_grad(UPGrad()) + Adam
    torchjd_cagrad  TorchJD autojac.backward + jac_to_grad(CAGrad(c=0.5)) + Adam (needs cvxpy
                    and clarabel, the ``perf`` extra)

Models (batch 128): ``mlp`` (784-512-512-128 encoder, 10-class head; CE and a KL-like term on
the encoder output), ``cnn`` and ``resnet18`` (the IB models of ``benchmarks/ibkit``,
28x28 grey input; CE and the Gaussian KL). With k losses the batch is split into k / 2
groups (``torch.tensor_split``) and each group contributes its CE and its KL term: k = 2 is
the whole batch, k = 8 its quarters, k = 128 64 pairs of samples.

Besides the step times, a run measures per model the costs that the pass counts are made
of (``passes``: the forward pass F, the activation-gradient part B_a of a backward pass and
its weight-gradient part B_w, from a backward pass to the module outputs only and a full
one), and, with ``--solver-k``, the time of the weightings alone on the MLP's Gram matrix
at each k (``solvers``: MinNorm, UPGrad, DualProj, CAGrad, Nash-MTL).

A run writes ``results.json``, ``table.md`` and ``overhead.png`` to ``runs/step_overhead``
(ignored by git) unless ``--out`` says otherwise; the committed reference results live in
``benchmarks/results/step_overhead`` (regenerate them with ``--out`` pointing there).

Examples:
    python -m benchmarks.step_overhead                      # quick preset, this CPU
    python -m benchmarks.step_overhead --models mlp --methods mograd_upgrad torchjd_upgrad \
        mograd_cagrad torchjd_cagrad                        # the weighting rows only
    python -m benchmarks.step_overhead --models mlp --k 2   # the core issue's measurement
    python -m benchmarks.step_overhead --preset many        # k = 40 and 128, solvers
    python -m benchmarks.step_overhead --preset many --models mlp cnn --k 2 8 --steps 300 \
        --no-solvers                    # the records path against the floors, k = 2 and 8
    python -m benchmarks.step_overhead --models mlp --k 2 --methods adam --solver-k 8 40 128
    python -m benchmarks.step_overhead --preset paper --device cuda
"""

from __future__ import annotations

import argparse
import copy
import inspect
import itertools
import json
import os
import resource
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

import mograd
from benchmarks._common import command_line, default_out, doc_parser, run_child
from benchmarks._common import environment as common_environment
from benchmarks.step_parts import pass_costs, pass_floors, pass_table, solver_table, solver_times

ROOT = Path(__file__).resolve().parent

METHODS = (
    "adam",
    "mograd",
    "mograd_repr",
    "mograd_repr_nocheck",
    "mograd_frugal",
    "floor_exact",
    "floor_repr",
    "floor_repr_checked",
    "floor_checked",
    "mograd_upgrad",
    "mograd_cagrad",
    "torchjd_autogram",
    "torchjd_mgda",
    "torchjd_upgrad",
    "torchjd_cagrad",
)
MODELS = ("mlp", "cnn", "resnet18")
SOLVERS = ("min_norm", "upgrad", "dualproj", "cagrad", "nash_mtl")
MANY_METHODS = ["adam", "floor_exact", "mograd", "mograd_frugal", "mograd_repr", "torchjd_autogram"]
PRESETS: dict[str, dict[str, Any]] = {
    "quick": {
        "k": {"mlp": [2, 8], "cnn": [2, 8], "resnet18": [2, 8]},
        "methods": list(METHODS),
        "steps": 30,
        "warmup": 5,
        "resnet_steps": 4,
        "solver_k": [],
        "solver_rounds": 20,
        "pass_rounds": 20,
    },
    "many": {
        "k": {"mlp": [40, 128], "cnn": [40]},
        "methods": MANY_METHODS,
        "steps": 60,
        "warmup": 3,
        "resnet_steps": 4,
        "solver_k": [8, 16, 32, 40, 64, 128],
        "solver_rounds": 20,
        "pass_rounds": 30,
    },
    "paper": {
        "k": {"mlp": [2, 8, 40, 128], "cnn": [2, 8, 40], "resnet18": [2, 8]},
        "methods": list(METHODS),
        "steps": 100,
        "warmup": 10,
        "resnet_steps": 30,
        "solver_k": [8, 16, 32, 40, 64, 128],
        "solver_rounds": 50,
        "pass_rounds": 100,
    },
}
BATCH = 128
MAX_K = 2 * BATCH  # k / 2 groups of at least one sample


class MLPEncoder(nn.Module):
    """784-512-512-128 encoder with a 10-class head."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 128)
        )
        self.head = nn.Linear(128, 10)


@dataclass
class Task:
    """A model and a function mapping it to (losses, features) on a fixed batch."""

    model: nn.Module
    forward: Callable[[nn.Module], tuple[list[torch.Tensor], list[torch.Tensor]]]


def check_k(k: int) -> int:
    """``k`` if it is an even number of losses the batch can be split for."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 2 or k % 2 or k > MAX_K:
        raise ValueError(f"k must be an even int in [2, {MAX_K}], got {k!r}")
    return k


def _split_losses(
    ce: Callable[[slice], torch.Tensor], kl: Callable[[slice], torch.Tensor], k: int
) -> list[torch.Tensor]:
    """k / 2 groups of the batch, each with its CE and its KL term (CE terms first)."""
    check_k(k)
    if k == 2:
        return [ce(slice(None)), kl(slice(None))]
    bounds = [int(t[0]) for t in torch.tensor_split(torch.arange(BATCH), k // 2)] + [BATCH]
    parts = [slice(a, b) for a, b in itertools.pairwise(bounds)]
    return [ce(s) for s in parts] + [kl(s) for s in parts]


def build_task(name: str, k: int, device: torch.device) -> Task:
    """The model ``name`` with its batch and losses (seeded: every call builds the same)."""
    torch.manual_seed(0)
    y = torch.randint(0, 10, (BATCH,), device=device)
    if name == "mlp":
        model = MLPEncoder().to(device)
        x = torch.rand(BATCH, 784, device=device)

        def forward_mlp(m: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
            z = m.encoder(x)
            logits = m.head(z)
            losses = _split_losses(
                lambda s: F.cross_entropy(logits[s], y[s]),
                lambda s: 0.5 * z[s].pow(2).sum(-1).mean(),
                k,
            )
            return losses, [z]

        return Task(model, forward_mlp)
    if name in ("cnn", "resnet18"):
        from benchmarks.ibkit.models import build_model

        model = build_model(name, 1, kind="gaussian").to(device)
        x = torch.rand(BATCH, 1, 28, 28, device=device)

        def forward_ib(m: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
            stats = m.forward_stats(x)
            mu, sigma = stats.mu, stats.sigma

            def kl(s: slice) -> torch.Tensor:
                var = sigma[s].pow(2)
                return 0.5 * (mu[s].pow(2) + var - 1.0 - var.log()).sum(-1).mean()

            losses = _split_losses(lambda s: F.cross_entropy(stats.logits[s], y[s]), kl, k)
            return losses, [mu, sigma]

        return Task(model, forward_ib)
    raise ValueError(f"unknown model {name!r}; expected one of {MODELS}")


def mib_coefficients(gram: torch.Tensor, losses: list[torch.Tensor]) -> torch.Tensor:
    """MIB's coefficients from a Gram matrix, written by hand: min-norm weights (paper
    eq. 8), ``w^2``, Smooth-IB with ``mu = 0.2`` (eqs. 12-14): mograd's defaults."""
    from mograd.solver import min_norm_solve
    from mograd.weighting import reweight, smooth_coefficients

    w = min_norm_solve(gram, validate=False).weights
    values = torch.stack([loss.detach() for loss in losses]).to(w.dtype)
    return smooth_coefficients(reweight(w, 2.0), values, 0.2).to(losses[0].dtype)


Stepper = Callable[[], None]


def make_stepper(method: str, model: nn.Module, task: Task) -> Stepper:
    """One full training step of ``method`` on its own ``model``."""
    adam = torch.optim.Adam(model.parameters(), lr=1e-4)
    if method == "adam":

        def step() -> None:
            losses, _ = task.forward(model)
            adam.zero_grad()
            torch.stack(losses).sum().backward()
            adam.step()

        return step
    if method.startswith("w:"):
        return _named_stepper(method[2:], model, task, adam)
    if method.startswith("tjd:"):
        return _torchjd_named_stepper(method[4:], model, task, adam)
    if method == "floor_checked":
        return _guard_floor_stepper(model, task, adam)
    if method.startswith("floor_"):
        return _floor_stepper(method, model, task, adam)
    if method.startswith("mograd"):
        return _mograd_stepper(method, model, task, adam)
    if method.startswith("torchjd"):
        return _torchjd_stepper(method, model, task, adam)
    raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")


def _floor_stepper(method: str, model: nn.Module, task: Task, adam: torch.optim.Adam) -> Stepper:
    """The hand-written steps: k ``autograd.grad`` into one buffer, MIB's coefficients, then
    ``.grad = c J`` (exact) or one backward pass of ``sum_i c_i L_i`` (representation)."""
    params = [p for p in model.parameters() if p.requires_grad]
    repr_mode = method != "floor_exact"

    def step() -> None:
        losses, feats = task.forward(model)
        adam.zero_grad()
        inputs = feats if repr_mode else params
        numels = [t.numel() for t in inputs]
        jac = torch.empty(len(losses), sum(numels), device=inputs[0].device)
        for i, loss in enumerate(losses):
            keep = repr_mode or i < len(losses) - 1
            gs = torch.autograd.grad(loss, inputs, retain_graph=keep, allow_unused=True)
            offset = 0
            for g, n in zip(gs, numels):
                seg = jac[i, offset : offset + n]
                seg.zero_() if g is None else seg.copy_(g.reshape(-1))
                offset += n
        c = mib_coefficients(jac @ jac.T, losses)
        if repr_mode:
            (c * torch.stack(losses)).sum().backward()
            if method == "floor_repr_checked":
                sums = [p.grad.sum() for p in params if p.grad is not None]
                if not bool(torch.isfinite(torch.stack(sums)).all()):
                    raise FloatingPointError("non-finite gradient")
        else:
            flat = c @ jac
            offset = 0
            for p in params:
                p.grad = flat[offset : offset + p.numel()].view_as(p)
                offset += p.numel()
        adam.step()

    if method not in ("floor_exact", "floor_repr", "floor_repr_checked"):
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    return step


def _guard_floor_stepper(model: nn.Module, task: Task, adam: torch.optim.Adam) -> Stepper:
    """``floor_checked``: plain Adam on the summed losses plus the non-finite guard's own
    work on a loss-level step (the walk for leaves outside the optimizer, then one read of
    every gradient and one host read), with mograd's helpers for both."""
    from mograd.gramian import reached_leaves
    from mograd.sources.base import finite_sum, gradient_sums

    params = [p for p in model.parameters() if p.requires_grad]
    held = {id(p) for p in params}

    def step() -> None:
        losses, _ = task.forward(model)
        adam.zero_grad()
        extras = [v for v in reached_leaves(losses) if id(v) not in held]
        torch.stack(losses).sum().backward()
        if not bool(finite_sum(gradient_sums([p.grad for p in [*params, *extras]]))):
            raise FloatingPointError("non-finite gradient")
        adam.step()

    return step


def _mograd_stepper(method: str, model: nn.Module, task: Task, adam: torch.optim.Adam) -> Stepper:
    options: dict[str, dict[str, Any]] = {
        "mograd": {},
        "mograd_repr": {},
        "mograd_repr_nocheck": {"nonfinite": "ignore"},
        "mograd_frugal": {"jacobian": "gramian", "modules": model},
        "mograd_upgrad": {"weights": "upgrad"},
        "mograd_cagrad": {"weights": "cagrad"},
    }
    if method not in options:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    opt = mograd.MOWrapper(adam, **options[method])
    use_features = method in ("mograd_repr", "mograd_repr_nocheck")

    def step() -> None:
        losses, feats = task.forward(model)
        opt.zero_grad()
        opt.step(losses, features=feats if use_features else None)

    return step


def _named_stepper(name: str, model: nn.Module, task: Task, adam: torch.optim.Adam) -> Stepper:
    """``w:<name>``: ``MOWrapper(Adam, weights=name)`` on the exact (rows) path; a loss-level
    weighting takes its one-backward step. ``w:<name>:<policy>`` sets ``nonfinite``."""
    name, _, policy = name.partition(":")
    opt = mograd.MOWrapper(adam, weights=name, nonfinite=policy or "raise")

    def step() -> None:
        losses, _ = task.forward(model)
        opt.zero_grad()
        opt.step(losses)

    return step


def _torchjd_named_stepper(
    name: str, model: nn.Module, task: Task, adam: torch.optim.Adam
) -> Stepper:
    """``tjd:<Name>``: TorchJD 0.18's aggregator ``Name`` (``torchjd.aggregation``) with
    ``autojac.backward`` and ``jac_to_grad``, or its scalarizer ``Name``
    (``torchjd.scalarization``) with one backward pass of the scalarized loss."""
    import torchjd.aggregation as aggregation
    import torchjd.scalarization as scalarization

    k = len(task.forward(model)[0])
    if hasattr(aggregation, name):
        # the arguments TorchJD requires, set to mograd's defaults of the same method
        required = {
            "FairGrad": {"alpha": 1.0},
            "Krum": {"n_byzantine": 0},
            "NashMTL": {"n_tasks": k},
        }
        return _jacobian_stepper(
            model, task, adam, getattr(aggregation, name)(**required.get(name, {}))
        )
    cls = getattr(scalarization, name)
    takes_shape = "shape" in inspect.signature(cls).parameters  # FAMO, UW, IMTL-L
    scalarizer = cls(k) if takes_shape else cls()

    def scalar_step() -> None:
        losses, _ = task.forward(model)
        adam.zero_grad()
        scalarizer(torch.stack(losses)).backward()
        adam.step()

    return scalar_step


def _method(value: str) -> str:
    """A ``--methods`` entry: a name of METHODS, ``w:<weighting>[:<nonfinite policy>]`` or
    ``tjd:<TorchJD class>``."""
    if value in METHODS:
        return value
    name, _, policy = value[2:].lower().replace("-", "_").partition(":")
    policies = ("", "raise", "skip", "ignore")
    if value.startswith("w:") and name in mograd.weightings.WEIGHTINGS and policy in policies:
        return value
    if value.startswith("tjd:") and value[4:].isidentifier():
        return value
    raise argparse.ArgumentTypeError(
        f"{value!r}: expected one of {', '.join(METHODS)}, w:<a name of "
        "mograd.weightings.WEIGHTINGS>[:raise|skip|ignore] or tjd:<a TorchJD aggregator or "
        "scalarizer class>"
    )


def _torchjd_stepper(method: str, model: nn.Module, task: Task, adam: torch.optim.Adam) -> Stepper:
    if method == "torchjd_autogram":
        from torchjd.autogram import Engine

        engine = Engine(model, batch_dim=None)

        def gramian_step() -> None:
            losses, _ = task.forward(model)
            adam.zero_grad()
            vector = torch.stack(losses)
            gramian = engine.compute_gramian(vector)
            vector.backward(mib_coefficients(gramian, losses))
            adam.step()

        return gramian_step
    from torchjd.aggregation import MGDA, CAGrad, UPGrad

    aggregators: dict[str, Callable[[], Any]] = {
        "torchjd_mgda": MGDA,
        "torchjd_upgrad": UPGrad,
        "torchjd_cagrad": lambda: CAGrad(c=0.5),
    }
    if method not in aggregators:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    return _jacobian_stepper(model, task, adam, aggregators[method]())


def _jacobian_stepper(
    model: nn.Module, task: Task, adam: torch.optim.Adam, aggregator: Any
) -> Stepper:
    """TorchJD's Jacobian path: ``autojac.backward``, ``jac_to_grad(aggregator)``, Adam."""
    from torchjd.autojac import backward, jac_to_grad

    params = [p for p in model.parameters() if p.requires_grad]

    def step() -> None:
        losses, _ = task.forward(model)
        adam.zero_grad()
        backward(losses)
        jac_to_grad(params, aggregator)
        adam.step()

    return step


# (method, the step it is compared with): a hand-written floor (the same computation, no
# library), the rows path, or TorchJD's autogram engine with the same weights (the peer's
# Gramian path).
FLOORS = (
    ("mograd", "floor_exact"),
    ("mograd_frugal", "floor_exact"),
    ("mograd_frugal", "mograd"),
    ("mograd_frugal", "torchjd_autogram"),
    ("mograd_repr", "floor_repr"),
    ("mograd_repr", "floor_repr_checked"),
    ("mograd_repr_nocheck", "floor_repr"),
)


def paired_ratios(times: dict[str, list[float]]) -> dict[str, dict[str, Any]]:
    """For each (method, floor) pair in the run, keyed ``"method/floor"``: the median and
    quartiles over rounds of ``t_method / t_floor`` measured in the same round (machine
    drift cancels)."""
    out: dict[str, dict[str, Any]] = {}
    for method, floor in FLOORS:
        if method not in times or floor not in times:
            continue
        ratios = [a / b for a, b in zip(times[method], times[floor])]
        if len(ratios) < 2:
            q1 = q3 = ratios[0]
        else:
            q1, _, q3 = statistics.quantiles(ratios, n=4)
        out[f"{method}/{floor}"] = {"median": statistics.median(ratios), "q1": q1, "q3": q3}
    return out


def floor_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: each mograd method's paired step-time ratio to the step it is compared with
    (its hand-written floor, the rows path, TorchJD's autogram)."""
    keys = [f"{m}/{f}" for m, f in FLOORS if any(f"{m}/{f}" in r.get("vs_floor", {}) for r in rows)]
    if not keys:
        return ""
    lines = [
        "Paired ratios (to the hand-written floor, the rows path or TorchJD's autogram): "
        "median over rounds of t(method) / t(other) in the same round, with the "
        "interquartile range.",
        "",
        "| model | k | " + " | ".join(k.replace("/", " / ") for k in keys) + " |",
        "|---|---|" + "---|" * len(keys),
    ]
    for row in rows:
        vs = row.get("vs_floor", {})
        cells = []
        for key in keys:
            v = vs.get(key)
            cells.append("--" if v is None else f"{v['median']:.3f} ({v['q1']:.2f}-{v['q3']:.2f})")
        lines.append(f"| {row['model']} | {row['k']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_methods(
    model_name: str,
    k: int,
    methods: list[str],
    steps: int,
    warmup: int,
    device: torch.device,
    progress: Callable[[], None] | None = None,
) -> dict[str, list[float]]:
    """Interleaved step times (seconds) of every method on identical copies of one task."""
    task = build_task(model_name, k, device)
    steppers = {m: make_stepper(m, copy.deepcopy(task.model), task) for m in methods}
    times: dict[str, list[float]] = {m: [] for m in methods}
    for r in range(warmup + steps):
        order = methods if r % 2 == 0 else list(reversed(methods))
        for m in order:
            _sync(device)
            t0 = time.perf_counter()
            steppers[m]()
            _sync(device)
            if r >= warmup:
                times[m].append(time.perf_counter() - t0)
        if progress is not None:
            progress()
    return times


def peak_memory_mb(model_name: str, k: int, method: str, device: torch.device) -> float:
    """Peak memory (MiB) that three steps of ``method`` add on top of the model."""
    if device.type == "cuda":
        task = build_task(model_name, k, device)
        step = make_stepper(method, task.model, task)
        step()
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        for _ in range(3):
            step()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    args = ["--child", model_name, str(k), method]
    out = run_child("step_overhead", args, {**os.environ, "OMP_NUM_THREADS": "1"})
    out.check_returncode()
    return float(json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"])


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _child(model_name: str, k: int, method: str) -> None:
    torch.set_num_threads(1)
    task = build_task(model_name, k, torch.device("cpu"))
    step = make_stepper(method, task.model, task)
    linux = os.path.exists("/proc/self/clear_refs")
    if linux:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
        before = _proc_status_kib("VmRSS")
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(3):
        step()
    after = (
        _proc_status_kib("VmHWM") if linux else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    )
    print(json.dumps({"peak_mb": (after - before) / 1024.0}))


def _load() -> str:
    """The 1, 5 and 15 minute load averages (other processes share the CPU)."""
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def environment(device: torch.device) -> dict[str, object]:
    """The shared environment record (``benchmarks/_common.py``) plus the device."""
    env: dict[str, object] = dict(common_environment("torchjd", "cvxpy", "clarabel"))
    env["torch_threads"] = torch.get_num_threads()
    env["device"] = str(device)
    env["load_average"] = _load()
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def markdown_table(rows: list[dict[str, object]], methods: list[str], memory: bool) -> str:
    head = "| model | k | " + " | ".join(methods) + " |"
    sep = "|---|---|" + "---|" * len(methods)
    lines = [
        "Median step time in ms (ratio to plain Adam on the summed losses)"
        + (", then the peak memory a step adds in MiB." if memory else "."),
        "",
        head,
        sep,
    ]
    for row in rows:
        cells = []
        for m in methods:
            ms = row["median_ms"][m]  # type: ignore[index]
            ratio = row["ratio"][m]  # type: ignore[index]
            cell = f"{ms:.1f} ({ratio:.2f}x)"
            if memory and row.get("peak_mb"):
                cell += f", {row['peak_mb'][m]:.0f} MiB"  # type: ignore[index]
            cells.append(cell)
        lines.append(f"| {row['model']} | {row['k']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_ratios(rows: list[dict[str, object]], methods: list[str], path: Path) -> None:
    """Grouped bars: step-time ratio to plain Adam per (model, k) and method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['model']}\nk={r['k']}" for r in rows]
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(1.6 + 1.5 * len(rows), 4))
    for j, m in enumerate(methods):
        xs = [i + (j - (len(methods) - 1) / 2) * width for i in range(len(rows))]
        ax.bar(xs, [r["ratio"][m] for r in rows], width, label=m)  # type: ignore[index]
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_xticks(range(len(rows)), labels)
    ax.set_ylabel("median step time / plain Adam")
    ax.set_title("Step overhead (lower is better)")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def solver_grams(
    ks: Sequence[int], device: torch.device
) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """k -> (``G`` in float64, the loss values) of the benchmark MLP's k per-loss gradients."""
    from mograd.gramian import gram, jacobian_rows

    out = {}
    for k in ks:
        task = build_task("mlp", k, device)
        params = list(task.model.parameters())
        losses, _ = task.forward(task.model)
        jac, _, _ = jacobian_rows(losses, params, [], False)
        g = gram(jac).to(torch.float64)
        out[k] = (g, torch.stack([loss.detach() for loss in losses]).to(torch.float64))
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = doc_parser(__doc__)
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="quick",
        help="quick: this 2-core CPU, k = 2 and 8; many: k = 40 and 128 (MLP) and 40 (CNN), "
        "the exact paths against TorchJD's autogram, and the solver timings; paper: all "
        "of them with more steps, for a GPU (default quick)",
    )
    p.add_argument("--models", nargs="+", choices=MODELS, help="models (default: the preset's)")
    p.add_argument(
        "--k",
        nargs="+",
        type=int,
        help=f"numbers of losses, even, 2 to {MAX_K}, for every model (default: the "
        "preset's per model)",
    )
    p.add_argument(
        "--methods",
        nargs="+",
        type=_method,
        metavar="METHOD",
        help=(
            f"methods: {', '.join(METHODS)}; w:<weighting>[:<nonfinite>] (MOWrapper(Adam, "
            "weights=<name>, nonfinite=<policy>), e.g. w:famo or w:famo:ignore) or tjd:<Class> "
            "(TorchJD's aggregator or scalarizer, e.g. tjd:FAMO) "
            "(default: the preset's, all but for many; adam is always included)"
        ),
    )
    p.add_argument("--steps", type=int, help="timed steps per method (default: the preset's)")
    p.add_argument("--warmup", type=int, help="untimed steps per method first")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads (default: all cores on CPU)",
    )
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--pass-rounds", type=int, help="rounds of the pass costs (default: preset's)")
    p.add_argument("--no-passes", action="store_true", help="skip the pass costs")
    p.add_argument(
        "--solver-k",
        nargs="+",
        type=int,
        help="k of the solver timings on the MLP's Gram matrix (default: the preset's; "
        "many and paper: 8 16 32 40 64 128)",
    )
    p.add_argument("--solver-rounds", type=int, help="rounds of the solver timings")
    p.add_argument("--no-solvers", action="store_true", help="skip the solver timings")
    p.add_argument(
        "--out",
        type=Path,
        default=default_out("step_overhead"),
        help="output directory for results.json, table.md and overhead.png "
        "(default runs/step_overhead, ignored by git)",
    )
    p.add_argument("--child", nargs=3, metavar=("MODEL", "K", "METHOD"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for name in ("steps", "warmup", "threads", "pass_rounds", "solver_rounds"):
        v = getattr(args, name)
        if v is not None and v < (0 if name == "warmup" else 1):
            p.error(f"--{name.replace('_', '-')} must be positive, got {v}")
    for name in ("k", "solver_k"):
        for k in getattr(args, name) or []:
            try:
                check_k(k)
            except ValueError as exc:
                p.error(f"--{name.replace('_', '-')}: {exc}")
    if args.device not in ("cpu", "cuda") and not args.device.startswith("cuda:"):
        p.error(f"--device must be cpu or cuda, got {args.device!r}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda requested but CUDA is not available")
    return args


def _plan(args: argparse.Namespace, preset: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(model, k, timed steps) of the run."""
    models = args.models or list(preset["k"])
    plan = []
    for model_name in models:
        if not args.k and model_name not in preset["k"]:
            continue
        steps = args.steps or (
            preset["resnet_steps"] if model_name == "resnet18" else preset["steps"]
        )
        for k in args.k or preset["k"][model_name]:
            plan.append((model_name, k, steps))
    return plan


def _exact_ms(rows: list[dict[str, Any]]) -> dict[int, float]:
    """k -> the MLP's exact step (mograd_frugal, else mograd) median ms in this run."""
    out = {}
    for row in rows:
        med = row["median_ms"]
        for m in ("mograd_frugal", "mograd"):
            if row["model"] == "mlp" and m in med:
                out[int(row["k"])] = float(med[m])
                break
    return out


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    args = parse_args(argv)
    if args.child:
        _child(args.child[0], int(args.child[1]), args.child[2])
        return []
    from tqdm import tqdm

    preset = PRESETS[args.preset]
    device = torch.device(args.device)
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    methods = ["adam"] + [m for m in args.methods or preset["methods"] if m != "adam"]
    warmup = preset["warmup"] if args.warmup is None else args.warmup
    plan = _plan(args, preset)
    solver_k = [] if args.no_solvers else (args.solver_k or preset["solver_k"])
    solver_rounds = args.solver_rounds or preset["solver_rounds"]
    pass_rounds = args.pass_rounds or preset["pass_rounds"]
    total = sum(warmup + s for _, _, s in plan) + len(solver_k) * solver_rounds
    load_start = _load()
    rows: list[dict[str, Any]] = []
    started = time.time()
    with tqdm(total=total, desc="rounds", unit="round") as bar:
        for model_name, k, steps in plan:
            bar.set_postfix_str(f"{model_name} k={k}")
            rows.append(
                _measure(
                    model_name, k, methods, steps, warmup, device, args, pass_rounds, bar.update
                )
            )
        solvers = {}
        if solver_k:
            bar.set_postfix_str("solvers")
            solvers = solver_times(
                solver_grams(solver_k, device), solver_rounds, SOLVERS, bar.update
            )
    table = markdown_table(rows, methods, not args.no_memory)
    floors = floor_table(rows)
    if floors:
        table += "\n" + floors
    if not args.no_passes:
        table += "\n" + pass_table(rows)
    if solvers:
        table += "\n" + solver_table(solvers, _exact_ms(rows))
    command = command_line("step_overhead", argv)
    env = environment(device)
    env["load_average_start"] = load_start
    args.out.mkdir(parents=True, exist_ok=True)
    result = {
        "command": command,
        "environment": env,
        "preset": args.preset,
        "batch": BATCH,
        "duration_s": time.time() - started,
        "rows": rows,
        "solvers_ms": {n: {str(k): v for k, v in per.items()} for n, per in solvers.items()},
    }
    (args.out / "results.json").write_text(json.dumps(result, indent=2))
    header = (
        f"Command: `{command}`\n\nMachine: {env['processor']}, "
        f"torch {env['torch']} ({env['torch_threads']} threads), device {env['device']}"
        + (f" ({env['gpu']})" if "gpu" in env else "")
        + f", load average {env['load_average_start']} at the start of the run and "
        + f"{env['load_average']} at its end"
        + "\n\n"
    )
    (args.out / "table.md").write_text(header + table)
    plot_ratios(rows, methods, args.out / "overhead.png")
    print(header + table)
    return rows


def _measure(
    model_name: str,
    k: int,
    methods: list[str],
    steps: int,
    warmup: int,
    device: torch.device,
    args: argparse.Namespace,
    pass_rounds: int,
    progress: Callable[[], None],
) -> dict[str, Any]:
    """One row of the results: step times, paired ratios, pass costs, peak memory."""
    times = time_methods(model_name, k, methods, steps, warmup, device, progress)
    med = {m: statistics.median(t) * 1e3 for m, t in times.items()}
    row: dict[str, Any] = {
        "model": model_name,
        "k": k,
        "steps": steps,
        "median_ms": med,
        "ratio": {m: med[m] / med["adam"] for m in methods},
        "vs_floor": paired_ratios(times),
        "times_ms": {m: [v * 1e3 for v in t] for m, t in times.items()},
    }
    if not args.no_passes:
        task = build_task(model_name, k, device)
        row["passes"] = pass_costs(task.model, task.forward, pass_rounds, lambda: _sync(device))
        row["pass_floors"] = pass_floors(row["passes"], k)
    if not args.no_memory:
        row["peak_mb"] = {m: peak_memory_mb(model_name, k, m, device) for m in methods}
    return row


if __name__ == "__main__":
    main()

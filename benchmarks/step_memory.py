"""Peak memory of one step: plain Adam, the exact step (rows, frugal), representation mode.

Every (method, k) runs alone in a fresh child process on a ~20M-parameter MLP
(1024 -> 5 x 2048 -> 256 features -> 10 classes, batch 128). The losses: the batch is split
into k/2 parts, each contributing its cross-entropy and a KL-like term ``0.5 |z|^2`` on the
features. Reported, in MiB:

* ``steady``: the step's extra peak once Adam's state exists: the peak over the later steps
  above the memory held after step 1 (parameters, Adam state, batch; every step ends with
  ``zero_grad()``, so the gradients count as part of the step). This is the number the
  frugal path is about.
* ``first``: the extra peak of all steps above the memory held after the model
  and the batch were built (Adam's state allocation included, as in
  ``benchmarks/step_overhead.py``).

CPU: the peak resident set size (VmHWM after resetting it through /proc/self/clear_refs),
with glibc told to map every allocation above 64 KiB on its own (MALLOC_MMAP_THRESHOLD_),
so that freed memory leaves the resident set and does not hide the next step's peak.
CUDA: ``torch.cuda.max_memory_allocated`` against ``memory_allocated``.

Methods:
    adam      plain Adam on the sum of the losses (the reference, ratio 1.00)
    rows      MOWrapper(Adam), the default exact step: the k x P per-loss gradients
    frugal    the exact step without the k x P buffer: mograd.frugal.GramianEngine (k
              backward passes to the layer outputs, the Gram matrix layer by layer), the
              same weights (MOWrapper's min-norm + MIB combination), then one backward
              pass of sum_i c_i L_i
    repr      MOWrapper(Adam) in representation mode (features=z, MGDA-UB)

Examples:
    python -m benchmarks.step_memory                           # quick preset, this CPU
    python -m benchmarks.step_memory --k 8 --methods adam frugal
    python -m benchmarks.step_memory --device cuda --out benchmarks/results/gpu/step_memory
    python -m benchmarks.step_memory --out benchmarks/results/step_memory   # the reference
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

import mograd
from benchmarks._common import command_line, default_out, doc_parser, environment
from benchmarks._common import run_child as run_module

ROOT = Path(__file__).resolve().parent

METHODS = ("adam", "rows", "frugal", "repr")
PRESETS = {
    "quick": {"k": [2, 4, 8], "repeats": 1, "steps": 3},
    "paper": {"k": [2, 4, 8], "repeats": 3, "steps": 5},
}
BATCH = 128
WIDTH = 2048
DEPTH = 5
IN_FEATURES = 1024
FEATURES = 256
CLASSES = 10
MIB = 2**20


class Net(nn.Module):
    """The ~20M-parameter MLP: an encoder to 256 features and a 10-class head."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width_in = IN_FEATURES
        for _ in range(DEPTH):
            layers += [nn.Linear(width_in, WIDTH), nn.ReLU()]
            width_in = WIDTH
        layers.append(nn.Linear(width_in, FEATURES))
        self.encoder = nn.Sequential(*layers)
        self.head = nn.Linear(FEATURES, CLASSES)


def make_losses(model: Net, x: torch.Tensor, y: torch.Tensor, k: int):
    """k losses (k/2 batch parts, each with its CE and its KL-like term) and the features."""
    if k < 2 or k % 2:
        raise ValueError(f"k must be even and >= 2, got {k}")
    z = model.encoder(x)
    logits = model.head(z)
    parts = torch.arange(x.shape[0], device=x.device).chunk(k // 2)
    ce = [F.cross_entropy(logits[p], y[p]) for p in parts]
    kl = [0.5 * z[p].pow(2).sum(-1).mean() for p in parts]
    return ce + kl, z


def make_stepper(method: str, model: Net, x: torch.Tensor, y: torch.Tensor, k: int):
    """One full step of ``method``: forward, backward, Adam, then ``zero_grad`` (so that the
    memory held between steps is the parameters, Adam's state and the batch)."""
    adam = torch.optim.Adam(model.parameters(), lr=1e-4)
    if method == "adam":

        def step() -> None:
            losses, _ = make_losses(model, x, y, k)
            torch.stack(losses).sum().backward()
            adam.step()
            adam.zero_grad()

        return step
    opt = mograd.MOWrapper(adam)
    if method in ("rows", "repr"):

        def step() -> None:
            losses, z = make_losses(model, x, y, k)
            opt.step(losses, features=z if method == "repr" else None)
            opt.zero_grad()

        return step
    if method == "frugal":
        opt = mograd.MOWrapper(adam, jacobian="gramian", modules=model)

        def step() -> None:
            losses, _ = make_losses(model, x, y, k)
            opt.step(losses)
            opt.zero_grad()

        return step
    raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")


def _kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def measure(method: str, k: int, device: torch.device, steps: int) -> dict[str, float]:
    """Run ``steps`` steps of ``method`` here; the extra peaks in MiB (see the docstring)."""
    torch.manual_seed(0)
    model = Net().to(device)
    x = torch.rand(BATCH, IN_FEATURES, device=device)
    y = torch.randint(0, CLASSES, (BATCH,), device=device)
    step = make_stepper(method, model, x, y, k)
    params = sum(p.numel() for p in model.parameters())
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        held = torch.cuda.memory_allocated(device)
        first_peak = torch.cuda.max_memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        for _ in range(steps - 1):
            step()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        first = (max(first_peak, peak) - base) / MIB
        steady = (peak - held) / MIB
    else:
        _reset_peak()
        base = _kib("VmRSS")
        step()
        first_peak = _kib("VmHWM")
        _reset_peak()
        held = _kib("VmRSS")
        for _ in range(steps - 1):
            step()
        peak = _kib("VmHWM")
        first = (max(first_peak, peak) - base) / 1024
        steady = (peak - held) / 1024
    return {"first_mib": first, "steady_mib": steady, "params": params}


def run_child(method: str, k: int, device: str, steps: int, threads: int) -> dict[str, float]:
    """``measure`` in a fresh process (its own peak, no allocator history)."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "MALLOC_MMAP_THRESHOLD_": "65536",
        "MALLOC_TRIM_THRESHOLD_": "131072",
    }
    args = ["--child", method, str(k), device, str(steps), str(threads)]
    out = run_module("step_memory", args, env)
    if out.returncode != 0:
        raise RuntimeError(f"child {method} k={k} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def markdown_table(rows: list[dict], methods: list[str]) -> str:
    lines = [
        "Extra peak memory of a step in MiB, steady state (Adam's state already allocated), "
        "and its ratio to plain Adam; in brackets all the steps from scratch "
        "(Adam's state allocation included).",
        "",
        "| k | " + " | ".join(methods) + " |",
        "|---|" + "---|" * len(methods),
    ]
    for row in rows:
        cells = []
        for m in methods:
            r = row["methods"][m]
            cells.append(
                f"{r['steady_mib']:.0f} ({r['steady_ratio']:.2f}x) [{r['first_mib']:.0f}]"
            )
        lines.append(f"| {row['k']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], methods: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(2.0 + 1.8 * len(rows), 4))
    for j, m in enumerate(methods):
        xs = [i + (j - (len(methods) - 1) / 2) * width for i in range(len(rows))]
        ax.bar(xs, [r["methods"][m]["steady_mib"] for r in rows], width, label=m)
    ax.set_xticks(range(len(rows)), [f"k={r['k']}" for r in rows])
    ax.set_ylabel("extra peak memory of a step (MiB)")
    ax.set_title(f"Step memory, {rows[0]['params'] / 1e6:.1f}M parameters (lower is better)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = doc_parser(__doc__)
    p.add_argument("--preset", choices=sorted(PRESETS), default="quick",
                   help="quick: one measurement per configuration; paper: the median of 3 "
                   "(default quick)")
    p.add_argument("--k", nargs="+", type=int, help="numbers of losses, even (default 2 4 8)")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                   help="methods (default: all; adam is always included)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per child (default 1)")
    p.add_argument("--out", type=Path, default=default_out("step_memory"),
                   help="output directory (default runs/step_memory; the committed reference "
                   "is benchmarks/results/step_memory)")
    p.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return args
    if args.device not in ("cpu", "cuda") and not args.device.startswith("cuda:"):
        p.error(f"--device must be cpu or cuda, got {args.device!r}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda requested but CUDA is not available")
    if args.device == "cpu" and not os.path.exists("/proc/self/clear_refs"):
        p.error("the CPU measurement needs Linux (/proc/self/clear_refs)")
    if args.k and any(k < 2 or k % 2 for k in args.k):
        p.error(f"--k values must be even and >= 2, got {args.k}")
    if args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    if args.child:
        method, k, device, steps, threads = args.child
        torch.set_num_threads(int(threads))
        print(json.dumps(measure(method, int(k), torch.device(device), int(steps))))
        return []
    from tqdm import tqdm

    preset = PRESETS[args.preset]
    ks = args.k or preset["k"]
    methods = ["adam"] + [m for m in args.methods if m != "adam"]
    plan = [(k, m, r) for k in ks for m in methods for r in range(preset["repeats"])]
    started = time.time()
    results: dict[tuple[int, str], list[dict[str, float]]] = {}
    with tqdm(total=len(plan), desc="children", unit="run") as bar:
        for k, m, _ in plan:
            bar.set_postfix_str(f"k={k} {m}")
            results.setdefault((k, m), []).append(
                run_child(m, k, args.device, preset["steps"], args.threads)
            )
            bar.update()
    rows = []
    for k in ks:
        per = {}
        for m in methods:
            runs = results[(k, m)]
            per[m] = {
                "steady_mib": statistics.median(r["steady_mib"] for r in runs),
                "first_mib": statistics.median(r["first_mib"] for r in runs),
                "runs": runs,
            }
        for m in methods:
            per[m]["steady_ratio"] = per[m]["steady_mib"] / per["adam"]["steady_mib"]
            per[m]["first_ratio"] = per[m]["first_mib"] / per["adam"]["first_mib"]
        rows.append({"k": k, "params": results[(k, "adam")][0]["params"], "methods": per})
    command = command_line("step_memory", argv)
    env = environment("tqdm")
    env["device"] = args.device
    env["child_threads"] = str(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    result = {
        "command": command,
        "environment": env,
        "preset": args.preset,
        "model": f"MLP {IN_FEATURES}-{DEPTH}x{WIDTH}-{FEATURES}-{CLASSES}, batch {BATCH}",
        "params": rows[0]["params"],
        "steps": preset["steps"],
        "duration_s": time.time() - started,
        "rows": rows,
    }
    (args.out / "results.json").write_text(json.dumps(result, indent=2))
    header = (
        f"Command: `{command}`\n\nModel: {result['model']} ({rows[0]['params'] / 1e6:.1f}M "
        f"parameters, P x 4 bytes = {rows[0]['params'] * 4 / MIB:.0f} MiB). Machine: "
        f"{env['processor']}, torch {env['torch']}, device {args.device}"
        + (f" ({env['gpu']})" if "gpu" in env and args.device != "cpu" else "")
        + f". {result['duration_s']:.0f} s.\n\n"
    )
    table = markdown_table(rows, methods)
    (args.out / "table.md").write_text(header + table)
    plot(rows, methods, args.out / "step_memory.png")
    print(header + table)
    return rows


if __name__ == "__main__":
    main()

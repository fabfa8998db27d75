"""Step time, peak memory and traffic per rank of the distributed steps: data parallel
(DDP-style) and FSDP2, plain and multi-objective, on two processes.

Every (method, k) runs in a fresh pair of gloo processes (``--world`` ranks) on an MLP
(256 -> 4 x 1024 -> 128 features -> 10 classes, 3.5M parameters; each rank a batch of 64).
The k losses: the batch split into k/2 parts, each with its cross-entropy and a KL-like
term ``0.5 |z|^2`` on the features (as ``benchmarks/step_memory.py``). Per rank:

* step time: the median over the measured steps (after the warm-up steps), the slowest rank;
* peak memory: the step's extra peak resident set size above what is held between steps
  (VmHWM after a reset through /proc/self/clear_refs; glibc maps every allocation above
  64 KiB on its own, so freed memory leaves the resident set), the largest rank;
* traffic: the elements this rank sends in one step, counted by
  ``mograd._distributed.count_traffic`` (every ``torch.distributed`` collective issued from
  Python, FSDP2's included) by the ring cost model (an all-reduce of N elements sends
  ``2 N (w - 1) / w``, a reduce-scatter or all-gather ``N (w - 1) / w``), in units of P.

Methods:
    dp_plain        plain data parallel: backward of the summed losses, one all-reduce of
                    the gradient (what DDP does), Adam
    dp_allreduce    MOWrapper, the exact step with one all-reduce of the k x P rows
                    (mograd <= 0.1's collectives; forced with SCATTER_MIN_COLUMNS)
    dp_scatter      MOWrapper, the exact step with reduce-scatter + all-gather (the default
                    from 2^16 columns on NCCL; forced here on gloo, whose reduce-scatter
                    is an all-reduce of the whole input: it shows what that costs)
    dp_repr         MOWrapper in representation mode (features=z)
    fsdp_plain      FSDP2 (fully_shard on every Linear and the root), backward of the sum
    fsdp            FSDP2 + MOWrapper, the sharded exact step
    fsdp_unsharded  the same with modules=model (parameters unsharded across the k passes)
    fsdp_repr       FSDP2 + MOWrapper in representation mode

Examples:
    python -m benchmarks.distributed_steps                      # quick preset, this CPU
    python -m benchmarks.distributed_steps --k 8 --methods dp_scatter fsdp
    python -m benchmarks.distributed_steps --out benchmarks/results/distributed_steps
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

import mograd
from benchmarks._common import (
    ROOT,
    command_line,
    default_out,
    doc_parser,
    environment,
    positive_int,
)
from mograd import _distributed as distributed
from mograd.sources import rows

METHODS = (
    "dp_plain", "dp_allreduce", "dp_scatter", "dp_repr",
    "fsdp_plain", "fsdp", "fsdp_unsharded", "fsdp_repr",
)  # fmt: skip
PRESETS = {
    "quick": {"k": [2, 8], "steps": 6, "warmup": 1},
    "paper": {"k": [2, 4, 8], "steps": 10, "warmup": 2},
}
IN, WIDTH, DEPTH, FEATURES, CLASSES, BATCH = 256, 1024, 4, 128, 10, 64
MIB = 2**20


class Net(nn.Module):
    """The MLP: ``depth`` hidden Linear+ReLU blocks and a feature layer, then a head."""

    def __init__(self, width: int, depth: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        d = IN
        for _ in range(depth):
            layers += [nn.Linear(d, width), nn.ReLU()]
            d = width
        self.encoder = nn.Sequential(*layers, nn.Linear(d, FEATURES))
        self.head = nn.Linear(FEATURES, CLASSES)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encoder(x)
        return z, self.head(z)


def build(width: int, depth: int) -> Net:
    torch.manual_seed(0)
    return Net(width, depth)


def make_losses(model: Net, x: torch.Tensor, y: torch.Tensor, k: int):
    """k losses (k/2 batch parts: a cross-entropy and a KL-like term each) and the features."""
    z, logits = model(x)
    parts = torch.arange(x.shape[0]).chunk(k // 2)
    ce = [F.cross_entropy(logits[p], y[p]) for p in parts]
    kl = [0.5 * z[p].pow(2).sum(-1).mean() for p in parts]
    return ce + kl, z


def make_step(method: str, model: Net, k: int):
    """One step of ``method`` on a batch, ending with ``zero_grad``."""
    from torch.distributed.fsdp import fully_shard

    if method.startswith("fsdp"):
        for m in [m for m in model.modules() if isinstance(m, nn.Linear)]:
            fully_shard(m)
        fully_shard(model)  # the root: the model is called as model(x)
    adam = torch.optim.Adam(model.parameters(), lr=1e-4)
    params = list(model.parameters())
    if method.endswith("plain"):

        def plain(x: torch.Tensor, y: torch.Tensor) -> None:
            torch.stack(make_losses(model, x, y, k)[0]).sum().backward()
            if method == "dp_plain":  # what DDP does: one all-reduce of the gradient
                grads = [q.grad for q in params]
                dtype = params[0].dtype
                for q, g in zip(params, distributed.mean_gradients(params, grads, dtype)):
                    q.grad = g
            adam.step()
            adam.zero_grad()

        return plain
    if method == "dp_scatter":  # forced, also on gloo (whose reduce-scatter is an all-reduce)
        rows.SCATTER_MIN_COLUMNS, rows.ALL_REDUCE_BACKENDS = 0, frozenset()
    if method == "dp_allreduce":
        rows.SCATTER_MIN_COLUMNS = 1 << 62
    opt = mograd.MOWrapper(adam, modules=model if method == "fsdp_unsharded" else None)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        losses, z = make_losses(model, x, y, k)
        opt.step(losses, features=z if method.endswith("repr") else None)
        opt.zero_grad()

    return step


def _kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")  # pragma: no cover


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def measure(method: str, k: int, cfg: dict[str, int]) -> dict[str, Any]:
    """This rank's measurements of ``method`` (inside the process group)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    model = build(cfg["width"], cfg["depth"])
    n_params = sum(p.numel() for p in model.parameters())
    step = make_step(method, model, k)
    gen = torch.Generator().manual_seed(1 + rank)
    batch = cfg["batch"]
    x, y = torch.randn(batch, IN, generator=gen), torch.randint(0, CLASSES, (batch,), generator=gen)
    for _ in range(cfg["warmup"]):
        step(x, y)
    _reset_peak()
    held = _kib("VmRSS")
    times = []
    for _ in range(cfg["steps"]):
        dist.barrier()
        start = time.perf_counter()
        step(x, y)
        times.append(time.perf_counter() - start)
    peak = _kib("VmHWM")
    with distributed.count_traffic() as traffic:  # one more step, counted (not timed)
        step(x, y)
    kinds = ("all_reduce", "reduce_scatter", "all_gather")
    return {
        "rank": rank,
        "world": world,
        "params": n_params,
        "times_ms": [t * 1e3 for t in times],
        "step_ms": statistics.median(times) * 1e3,
        "peak_mib": (peak - held) / 1024,
        "sent": traffic.sent,
        "sent_p": traffic.sent / n_params,
        "collectives": {c: traffic.count(c) for c in kinds},
    }


def child(method: str, k: int, cfg: dict[str, int], out: Path) -> None:
    """One rank: join the group (env://), measure, write ``out``."""
    torch.set_num_threads(cfg["threads"])
    dist.init_process_group("gloo")
    try:
        result = measure(method, k, cfg)
    finally:
        dist.destroy_process_group()
    out.write_text(json.dumps(result))


def run_pair(method: str, k: int, cfg: dict[str, int], work: Path) -> list[dict[str, Any]]:
    """``child`` on ``world`` fresh processes; their results, by rank."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "WORLD_SIZE": str(cfg["world"]),
        "OMP_NUM_THREADS": str(cfg["threads"]),
        "MALLOC_MMAP_THRESHOLD_": "65536",
        "MALLOC_TRIM_THRESHOLD_": "131072",
    }
    files = [work / f"{method}-k{k}-rank{r}.json" for r in range(cfg["world"])]
    procs = []
    for r, f in enumerate(files):
        cmd = [sys.executable, "-m", "benchmarks.distributed_steps", "--child",
               method, str(k), json.dumps(cfg), str(f)]  # fmt: skip
        env = {**base, "RANK": str(r), "LOCAL_RANK": str(r)}
        procs.append(subprocess.Popen(cmd, env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True))
    errors = [p.communicate(timeout=900)[1] for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError(f"{method} k={k} failed:\n" + "\n".join(e[-2000:] for e in errors))
    return [json.loads(f.read_text()) for f in files]


def summarize(k: int, methods: list[str], per: dict[str, list[dict[str, Any]]]) -> dict:
    """One row: per method the slowest rank's time, the largest rank's peak, the traffic."""
    out: dict[str, Any] = {"k": k, "params": per[methods[0]][0]["params"], "methods": {}}
    for m in methods:
        ranks = per[m]
        out["methods"][m] = {
            "step_ms": max(r["step_ms"] for r in ranks),
            "peak_mib": max(r["peak_mib"] for r in ranks),
            "sent_p": max(r["sent_p"] for r in ranks),
            "collectives": ranks[0]["collectives"],
            "ranks": ranks,
        }
    for m, r in out["methods"].items():
        base = "fsdp_plain" if m.startswith("fsdp") else "dp_plain"
        ref = out["methods"].get(base)
        r["time_ratio"] = r["step_ms"] / ref["step_ms"] if ref else None
    return out


def markdown_table(rows: list[dict], methods: list[str]) -> str:
    lines = [
        "Per rank and step: time (slowest rank, median; in brackets the ratio to the plain "
        "step of the same engine), extra peak memory (largest rank), and elements sent "
        "(ring cost model, in units of P).",
        "",
        "| method | "
        + " | ".join(f"k = {r['k']}: time ms | peak MiB | sent / P" for r in rows)
        + " |",
        "|---|" + "---:|---:|---:|" * len(rows),
    ]
    for m in methods:
        cells = []
        for row in rows:
            r = row["methods"][m]
            ratio = "" if r["time_ratio"] is None else f" ({r['time_ratio']:.2f}x)"
            cells += [f"{r['step_ms']:.0f}{ratio}", f"{r['peak_mib']:.0f}", f"{r['sent_p']:.2f}"]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], methods: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    keys = (("step_ms", "step time (ms)"), ("peak_mib", "extra peak (MiB)"), ("sent_p", "sent / P"))
    width = 0.8 / len(rows)
    for ax, (key, label) in zip(axes, keys):
        for j, row in enumerate(rows):
            xs = [i + (j - (len(rows) - 1) / 2) * width for i in range(len(methods))]
            ax.bar(xs, [row["methods"][m][key] for m in methods], width, label=f"k={row['k']}")
        ax.set_xticks(range(len(methods)), methods, rotation=45, ha="right", fontsize=8)
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    fig.suptitle(f"Distributed steps per rank, {rows[0]['params'] / 1e6:.1f}M parameters")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = doc_parser(__doc__)
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="quick",
        help="quick: k = 2, 8 and 6 measured steps (this CPU); paper: k = 2, 4, 8 "
        "and 10 steps (default quick)",
    )
    p.add_argument("--k", nargs="+", type=int, help="numbers of losses, even (default: preset)")
    p.add_argument(
        "--methods",
        nargs="+",
        choices=METHODS,
        default=list(METHODS),
        help="methods (default: all)",
    )
    p.add_argument("--steps", type=positive_int, help="measured steps (default: preset)")
    p.add_argument("--warmup", type=int, help="warm-up steps (default: preset)")
    p.add_argument("--width", type=positive_int, default=WIDTH, help=f"hidden width ({WIDTH})")
    p.add_argument("--depth", type=positive_int, default=DEPTH, help=f"hidden blocks ({DEPTH})")
    p.add_argument("--batch", type=positive_int, default=BATCH, help=f"per-rank batch ({BATCH})")
    p.add_argument("--world", type=positive_int, default=2, help="processes (default 2)")
    p.add_argument("--threads", type=positive_int, default=1, help="torch threads per rank (1)")
    p.add_argument(
        "--out",
        type=Path,
        default=default_out("distributed_steps"),
        help="output directory (default runs/distributed_steps; the committed "
        "reference is benchmarks/results/distributed_steps)",
    )
    p.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return args
    if not os.path.exists("/proc/self/clear_refs"):
        p.error("the memory measurement needs Linux (/proc/self/clear_refs)")
    if args.k and any(k < 2 or k % 2 for k in args.k):
        p.error(f"--k values must be even and >= 2, got {args.k}")
    if args.warmup is not None and args.warmup < 0:
        p.error(f"--warmup must be >= 0, got {args.warmup}")
    if args.world < 2:
        p.error(f"--world must be >= 2, got {args.world}")
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    if args.child:
        method, k, cfg, out = args.child
        child(method, int(k), json.loads(cfg), Path(out))
        return []
    from tqdm import tqdm

    preset = PRESETS[args.preset]
    ks = args.k or preset["k"]
    cfg = {
        "steps": args.steps or preset["steps"],
        "warmup": preset["warmup"] if args.warmup is None else args.warmup,
        "width": args.width, "depth": args.depth, "batch": args.batch,
        "world": args.world, "threads": args.threads,
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    started, load = time.time(), os.getloadavg()
    per: dict[int, dict[str, list[dict[str, Any]]]] = {k: {} for k in ks}
    bar = tqdm(total=len(ks) * len(args.methods), desc="process pairs", unit="run")
    with bar, tempfile.TemporaryDirectory() as work:  # the ranks' files, kept in results.json
        for k in ks:
            for m in args.methods:
                bar.set_postfix_str(f"k={k} {m}")
                per[k][m] = run_pair(m, k, cfg, Path(work))
                bar.update()
    rows = [summarize(k, args.methods, per[k]) for k in ks]
    write(args, argv, cfg, rows, started, load)
    return rows


def write(args: argparse.Namespace, argv: list[str] | None, cfg: dict, rows: list[dict],
          started: float, load: tuple[float, float, float]) -> None:  # fmt: skip
    command = command_line("distributed_steps", argv)
    env = environment("tqdm")
    env["load_average_at_start"] = " ".join(f"{v:.2f}" for v in load)
    env["load_average_at_end"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
    model = f"MLP {IN}-{cfg['depth']}x{cfg['width']}-{FEATURES}-{CLASSES}, batch {cfg['batch']}"
    result = {
        "command": command,
        "environment": env,
        "preset": args.preset,
        "config": cfg,
        "model": model + " per rank",
        "params": rows[0]["params"],
        "duration_s": time.time() - started,
        "rows": rows,
    }
    (args.out / "results.json").write_text(json.dumps(result, indent=2))
    header = (
        f"Command: `{command}`\n\nModel: {result['model']} ({rows[0]['params'] / 1e6:.2f}M "
        f"parameters), {cfg['world']} gloo processes with {cfg['threads']} thread(s) each. "
        f"Machine: {env['processor']}, torch {env['torch']}; load average "
        f"{env['load_average_at_start']} at the start, {env['load_average_at_end']} at the "
        f"end. {result['duration_s']:.0f} s.\n\n"
    )
    (args.out / "table.md").write_text(header + markdown_table(rows, args.methods))
    plot(rows, args.methods, args.out / "distributed_steps.png")
    print(header + markdown_table(rows, args.methods))


if __name__ == "__main__":
    main()

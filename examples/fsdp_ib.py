"""Sharded MIB training with FSDP2 (``fully_shard``): the exact multi-objective step when
the model, its gradients and the optimizer state are split over the ranks.

Launch on one machine with N processes (GPUs with NCCL, or CPU processes with gloo):

    torchrun --nproc_per_node=2 examples/fsdp_ib.py --steps 50

and across machines as any torchrun job (``--nnodes``, ``--node_rank``, ``--rdzv_endpoint``).

Recipe: apply ``fully_shard`` to each block and to the root, then build the optimizer on
the (now sharded) parameters and wrap it. mograd sees the sharded ``DTensor`` parameters
and takes the sharded step: one backward pass per loss through FSDP's own reduce-scatter
(each rank keeps its shard of each loss's data-averaged gradient), a partial Gram matrix
on the shards, ONE all-reduce of k x k numbers, the same weights on every rank, and the
combination written into the sharded ``.grad``. ``modules=model`` keeps the parameters
unsharded between the k passes (k - 1 fewer all-gathers per block). With ``--checkpoint
DIR`` the run ends with a ``torch.distributed.checkpoint`` save, and a second run with the
same ``--checkpoint`` resumes from it (``docs/distributed.md``).

Data here is synthetic (a VIB on Gaussian clusters) so that the example runs anywhere.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.fsdp import fully_shard
from torch.nn import functional as F

import mograd


class VIB(nn.Module):
    """Encoder N(mu, softplus(rho - 5)^2) with K = 16, linear decoder."""

    def __init__(self, d_in: int = 32, k: int = 16, n_classes: int = 8) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(d_in, 256), nn.ReLU(), nn.Linear(256, 2 * k))
        self.decoder = nn.Linear(k, n_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, rho = self.encoder(x).chunk(2, dim=-1)
        mu = mu.clone()  # FSDP2's root must not return a view (its backward hook would be lost)
        sigma = F.softplus(rho - 5.0)
        return self.decoder(mu + sigma * torch.randn_like(mu)), mu, sigma


def save(path: Path, model: nn.Module, opt: mograd.MOWrapper) -> None:
    """The sharded state by DCP; the wrapper's own (small, the same on every rank) by rank 0."""
    model_sd, optim_sd = get_state_dict(model, opt)
    writer = dcp.FileSystemWriter(str(path), overwrite=True)
    dcp.save({"model": model_sd, "optim": optim_sd}, storage_writer=writer)
    if dist.get_rank() == 0:
        torch.save(opt.state_dict()["mograd"], path / "mograd.pt")
    dist.barrier()


def load(path: Path, model: nn.Module, opt: mograd.MOWrapper) -> None:
    model_sd, optim_sd = get_state_dict(model, opt)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    own = torch.load(path / "mograd.pt", weights_only=True)
    opt.load_state_dict({**opt.optimizer.state_dict(), "mograd": own})


def main() -> None:
    parser = argparse.ArgumentParser(description="MIB with FSDP2 (fully_shard)")
    parser.add_argument("--steps", type=int, default=50, help="training steps (default 50)")
    parser.add_argument("--batch", type=int, default=64, help="per-rank batch size (default 64)")
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="resume from this DCP directory if it exists; save to it at the end",
    )
    args = parser.parse_args()

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    device = torch.device("cuda") if backend == "nccl" else torch.device("cpu")

    torch.manual_seed(0)  # same data and the same initial model on every rank
    centers = torch.randn(8, 32) * 2
    labels = torch.randint(0, 8, (4096,))
    inputs = centers[labels] + torch.randn(4096, 32)
    model = VIB().to(device)
    for block in (*model.encoder, model.decoder):
        if isinstance(block, nn.Linear):
            fully_shard(block)
    fully_shard(model)
    opt = mograd.MOWrapper(torch.optim.Adam(model.parameters(), lr=1e-3), modules=model)
    if args.checkpoint is not None and (args.checkpoint / "mograd.pt").exists():
        load(args.checkpoint, model, opt)
        if rank == 0:
            print(f"resumed from {args.checkpoint} after {opt.steps} steps")

    torch.manual_seed(1234 + rank)  # different sampling noise per rank
    first, last = opt.steps + 1, opt.steps + args.steps
    gen = torch.Generator().manual_seed(42 + first)  # same batch indices on all ranks
    for step in range(first, last + 1):
        idx = torch.randint(0, 4096, (args.batch * world,), generator=gen)
        idx = idx[rank * args.batch : (rank + 1) * args.batch]
        x, y = inputs[idx].to(device), labels[idx].to(device)
        logits, mu, sigma = model(x)
        l_pred = F.cross_entropy(logits, y)
        l_info = 0.5 * (mu**2 + sigma**2 - 1 - 2 * sigma.log()).sum(-1).mean()
        opt.zero_grad()
        info = opt.step([l_pred, l_info])
        if rank == 0 and (step % 10 == 0 or step == last):
            w = info.weights.tolist()
            print(
                f"step {step:3d}  CE {info.losses[0]:.3f}  KL {info.losses[1]:.2f}  "
                f"weights ({w[0]:.3f}, {w[1]:.3f})  ranks {world}"
            )

    # every rank computed the same weights (they come from one all-reduced Gram matrix)
    w = info.weights.to(device)
    gathered = [torch.empty_like(w) for _ in range(world)]
    dist.all_gather(gathered, w)
    local = sum(p.to_local().numel() for p in model.parameters())
    total = sum(p.numel() for p in model.parameters())
    if rank == 0:
        spread = max(float((g - w).abs().max()) for g in gathered)
        print(f"max weight difference across ranks: {spread:.3g}")
        print(f"parameters held by rank 0: {local} of {total}")
    if args.checkpoint is not None:
        save(args.checkpoint, model, opt)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

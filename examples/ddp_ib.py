"""Data-parallel MIB training with torch.distributed (one process per GPU or CPU slot).

Launch on one machine with N processes:

    torchrun --nproc_per_node=2 examples/ddp_ib.py --steps 50

and on several machines (run on each; node 0's address as the rendezvous endpoint):

    torchrun --nnodes=2 --node_rank=R --nproc_per_node=8 \\
        --rdzv_backend=c10d --rdzv_endpoint=HOST0:29500 examples/ddp_ib.py

Recipe: the model is wrapped in DistributedDataParallel so that its parameters start equal on
every rank and its buffers are broadcast; the forward pass runs inside ``ddp.no_sync()`` so
that DDP does not all-reduce during backward; MOWrapper then averages the k per-loss
gradients (and the loss values) over the process group itself before it forms the Gram
matrix, so every rank computes the same weights and takes the same step. On gloo that is one
all-reduce of k x P values per step (k times plain DDP's traffic); on backends with a real
reduce-scatter, about (k + 1) / 2 times (docs/distributed.md). For models sharded with FSDP2
see examples/fsdp_ib.py.

Data here is synthetic (a VIB on Gaussian clusters) so that the example runs anywhere.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel

import mograd


class VIB(nn.Module):
    """Encoder N(mu, softplus(rho - 5)^2) with K = 16, linear decoder."""

    def __init__(self, d_in: int = 32, k: int = 16, n_classes: int = 8) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(d_in, 128), nn.ReLU(), nn.Linear(128, 2 * k))
        self.decoder = nn.Linear(k, n_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, rho = self.encoder(x).chunk(2, dim=-1)
        sigma = F.softplus(rho - 5.0)
        return self.decoder(mu + sigma * torch.randn_like(mu)), mu, sigma


def main() -> None:
    parser = argparse.ArgumentParser(description="MIB with DistributedDataParallel")
    parser.add_argument("--steps", type=int, default=50, help="training steps (default 50)")
    parser.add_argument("--batch", type=int, default=64, help="per-rank batch size (default 64)")
    args = parser.parse_args()

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    local = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device(f"cuda:{local}") if backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)

    torch.manual_seed(0)  # same data on every rank; each rank takes its own slice
    centers = torch.randn(8, 32) * 2
    labels = torch.randint(0, 8, (4096,))
    inputs = centers[labels] + torch.randn(4096, 32)

    torch.manual_seed(1234 + rank)  # different sampling noise per rank
    model = VIB().to(device)
    ddp = DistributedDataParallel(model, device_ids=[local] if device.type == "cuda" else None)
    opt = mograd.MOWrapper(torch.optim.Adam(model.parameters(), lr=1e-3))

    gen = torch.Generator().manual_seed(42)  # same batch indices on all ranks
    for step in range(1, args.steps + 1):
        idx = torch.randint(0, 4096, (args.batch * world,), generator=gen)
        idx = idx[rank * args.batch : (rank + 1) * args.batch]
        x, y = inputs[idx].to(device), labels[idx].to(device)
        with ddp.no_sync():
            logits, mu, sigma = ddp(x)
            l_pred = F.cross_entropy(logits, y)
            l_info = 0.5 * (mu**2 + sigma**2 - 1 - 2 * sigma.log()).sum(-1).mean()
            opt.zero_grad()
            info = opt.step([l_pred, l_info])
        if rank == 0 and (step % 10 == 0 or step == args.steps):
            w = info.weights.tolist()
            print(
                f"step {step:3d}  CE {info.losses[0]:.3f}  KL {info.losses[1]:.2f}  "
                f"weights ({w[0]:.3f}, {w[1]:.3f})  ranks {world}"
            )

    # every rank holds the same parameters
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    if rank == 0:
        spread = max(float((g - flat).abs().max()) for g in gathered)
        print(f"max parameter difference across ranks: {spread:.3g}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

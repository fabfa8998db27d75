"""Run by ``test_fsdp.py`` under ``torchrun --nproc_per_node=2``: the Lightning recipe of
``mograd.integrations.lightning`` with ``ModelParallelStrategy`` (FSDP2, ``fully_shard``
in ``configure_model``) on CPU; rank r saves the batches it trained on and the gathered
parameters to ``argv[1] + f".rank{r}"``."""

from __future__ import annotations

import sys

import lightning as L
import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn

import mograd
from mograd.integrations.lightning import MOLightningModule

STEPS, BATCH = 3, 8  # per rank


def build() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 9), nn.Tanh(), nn.Linear(9, 3)).double()


def losses(net: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    out = net(x)
    return [(out[:, 0] - 1).pow(2).mean(), (out[:, 1] + 1).pow(2).mean() + 0.1 * out[:, 2].mean()]


def data() -> torch.Tensor:
    return torch.randn(2 * BATCH * STEPS, 5, generator=torch.Generator().manual_seed(1)).double()


class TwoLosses(MOLightningModule):
    loss_names = ("a", "b")

    def __init__(self) -> None:
        super().__init__()
        self.net = build()
        self.seen: list[torch.Tensor] = []

    def configure_model(self) -> None:
        from torch.distributed.fsdp import fully_shard

        mesh = self.device_mesh["data_parallel"]
        for m in self.net:
            if isinstance(m, nn.Linear):
                fully_shard(m, mesh=mesh)
        fully_shard(self.net, mesh=mesh)

    def configure_optimizers(self) -> mograd.MOWrapper:
        return mograd.MOWrapper(torch.optim.Adam(self.net.parameters(), lr=1e-2))

    def compute_losses(self, batch: list[torch.Tensor], batch_idx: int) -> list[torch.Tensor]:
        self.seen.append(batch[0].detach().clone())
        return losses(self.net, batch[0])


def main() -> None:
    module = TwoLosses()
    trainer = L.Trainer(
        max_steps=STEPS,
        accelerator="cpu",
        devices=2,
        strategy=ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data()), batch_size=BATCH)
    trainer.fit(module, loader)  # Lightning's DistributedSampler splits each epoch
    params = [p.full_tensor().detach() for p in module.net.parameters()]
    out = {"params": params, "steps": trainer.global_step, "batches": module.seen}
    torch.save(out, f"{sys.argv[1]}.rank{trainer.global_rank}")


if __name__ == "__main__":
    main()

"""MIB with PyTorch Lightning: a LightningModule that steps ``MOWrapper(Adam)`` on two losses.

The model is the small variational information bottleneck of ``examples/quickstart.py``
(encoder -> Gaussian bottleneck z -> linear decoder); the losses are prediction
(cross-entropy) and compression (KL to N(0, I)), and mograd picks their weights at every
step (MIB; the math is in ``docs/derivation.md``).

    python examples/lightning_ib.py --steps 200
    python examples/lightning_ib.py --steps 200 --precision bf16-mixed
    python examples/lightning_ib.py --steps 50 --devices 2 --strategy ddp   # 2 CPU processes

The recipe is :class:`mograd.integrations.lightning.MOLightningModule` (manual
optimization, one ``mograd_step`` per batch, the weights logged): ``LitIB`` below only
says what its losses are (``compute_losses``) and which optimizer to wrap. Why manual
optimization, and what it means for precision plugins, DDP and callbacks:
``docs/integrations/lightning.md``.

``--fixed-noise`` draws the bottleneck noise once per training sample (the data set then
holds ``(x, y, eps)``) instead of at every forward pass, so that runs with different
data-parallel splits see the same noise; the tests use it to compare runs exactly.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import mograd
from mograd.integrations.lightning import MOLightningModule


class TinyVIB(nn.Module):
    """Encoder p(z|x) = N(mu(x), diag softplus(rho(x) - 5)^2), linear decoder q(y|z)."""

    def __init__(self, d_in: int = 20, k: int = 8, n_classes: int = 4) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(d_in, 64), nn.ReLU(), nn.Linear(64, 2 * k))
        self.decoder = nn.Linear(k, n_classes)

    def forward(
        self, x: torch.Tensor, eps: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, rho = self.encoder(x).chunk(2, dim=-1)
        sigma = F.softplus(rho - 5.0)
        if eps is None:
            eps = torch.randn_like(mu)
        return self.decoder(mu + sigma * eps.to(mu.dtype)), mu, sigma


def ib_losses(model: TinyVIB, batch: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """[cross-entropy, KL(N(mu, sigma^2) || N(0, I))] of one batch ``(x, y)`` or ``(x, y, eps)``."""
    x, y = batch[0], batch[1]
    eps = batch[2] if len(batch) > 2 else None
    logits, mu, sigma = (_wide(t) for t in model(x, eps))
    var = sigma.pow(2)
    kl = 0.5 * (mu.pow(2) + var - 1.0 - var.log()).sum(-1).mean()
    return [F.cross_entropy(logits, y), kl]


def _wide(t: torch.Tensor) -> torch.Tensor:
    """Losses in at least float32 (under bf16/fp16 autocast the outputs are half precision)."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


class LitIB(MOLightningModule):
    """TinyVIB trained with MOWrapper(Adam) on (cross-entropy, KL), logged as pred and info."""

    loss_names = ("pred", "info")

    def __init__(self, lr: float = 1e-3, d_in: int = 20, n_classes: int = 4) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = TinyVIB(d_in=d_in, n_classes=n_classes)

    def configure_optimizers(self) -> mograd.MOWrapper:
        return mograd.MOWrapper(torch.optim.Adam(self.model.parameters(), lr=self.hparams.lr))

    def compute_losses(self, batch: Sequence[torch.Tensor], batch_idx: int) -> list[torch.Tensor]:
        return ib_losses(self.model, batch)


def make_data(n: int = 512, seed: int = 0, fixed_noise: bool = False) -> TensorDataset:
    """Gaussian clusters in 20 dimensions, 4 classes (with per-sample noise if fixed_noise)."""
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(4, 20, generator=gen) * 2.0
    y = torch.randint(0, 4, (n,), generator=gen)
    x = centers[y] + torch.randn(n, 20, generator=gen)
    if fixed_noise:
        return TensorDataset(x, y, torch.randn(n, 8, generator=gen))
    return TensorDataset(x, y)


class ClustersData(L.LightningDataModule):
    """The data of :func:`make_data`, sharded by a seeded ``DistributedSampler``.

    Each of N processes takes every N-th sample of one shuffled order (seeded, reshuffled
    each epoch), so one step of N processes with batch b covers the same N b samples as one
    process with batch N b. The trainer runs with ``use_distributed_sampler=False``, which
    keeps Lightning from installing its own sampler.
    """

    def __init__(self, data: TensorDataset, batch_size: int, seed: int = 0) -> None:
        super().__init__()
        self.data, self.batch_size, self.seed = data, batch_size, seed

    def train_dataloader(self) -> DataLoader:
        sampler = DistributedSampler(  # also with one process: the same order
            self.data,
            num_replicas=self.trainer.world_size,
            rank=self.trainer.global_rank,
            shuffle=True,
            seed=self.seed,
        )
        return DataLoader(self.data, batch_size=self.batch_size, sampler=sampler)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps (default 200)")
    parser.add_argument("--batch", type=int, default=64, help="batch size per process")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--precision", default="32-true", help="Lightning precision")
    parser.add_argument("--accelerator", default="cpu", help="Lightning accelerator (default cpu)")
    parser.add_argument("--devices", type=int, default=1, help="processes (default 1)")
    parser.add_argument("--strategy", default="auto", help="Lightning strategy, e.g. ddp")
    parser.add_argument("--fixed-noise", action="store_true", help="noise drawn once per sample")
    parser.add_argument("--save", default=None, help="save parameters and weights here (.pt)")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")

    torch.manual_seed(args.seed)
    module = LitIB(lr=args.lr)
    if args.precision == "64-true":
        module = module.double()
    data = make_data(n=args.steps * args.batch * args.devices, seed=args.seed + 1,
                     fixed_noise=args.fixed_noise)
    datamodule = ClustersData(data, batch_size=args.batch, seed=args.seed)
    trainer = L.Trainer(
        accelerator=args.accelerator,
        devices=args.devices,
        strategy=args.strategy,
        precision=args.precision,
        max_steps=args.steps,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        use_distributed_sampler=False,  # ClustersData shards the data itself
    )
    trainer.fit(module, datamodule=datamodule)
    metrics = {k.removeprefix("mograd/"): float(v) for k, v in trainer.callback_metrics.items()}
    if trainer.is_global_zero:
        print(
            f"{trainer.global_step} steps  CE {metrics['loss_pred']:.3f}  "
            f"KL {metrics['loss_info']:.2f}  "
            f"weights (pred, info) = ({metrics['w_pred']:.3f}, {metrics['w_info']:.3f})  "
            f"coefficients = ({metrics['c_pred']:.3f}, {metrics['c_info']:.3f})"
        )
    if args.save is not None:
        rank = trainer.global_rank
        path = args.save if trainer.world_size == 1 else f"{args.save}.rank{rank}"
        torch.save(
            {
                "params": [p.detach().cpu() for p in module.model.parameters()],
                "steps": trainer.global_step,
                "metrics": metrics,
                "world": trainer.world_size,
            },
            path,
        )
    return metrics


if __name__ == "__main__":
    main()

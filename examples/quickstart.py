"""Quickstart: a small variational information bottleneck trained with MOWrapper(Adam).

Two losses, prediction (cross-entropy) and compression (KL to N(0, I)), no beta to tune:
mograd picks the weights at every step. Runs in a few seconds on a CPU.

    python examples/quickstart.py [--steps 300] [--seed 0]
"""

from __future__ import annotations

import argparse

import torch
from torch import nn
from torch.nn import functional as F

import mograd


class TinyVIB(nn.Module):
    """Encoder p(z|x) = N(mu(x), diag softplus(rho(x) - 5)^2), linear decoder q(y|z)."""

    def __init__(self, d_in: int = 20, k: int = 8, n_classes: int = 4) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(d_in, 64), nn.ReLU(), nn.Linear(64, 2 * k))
        self.decoder = nn.Linear(k, n_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, rho = self.encoder(x).chunk(2, dim=-1)
        sigma = F.softplus(rho - 5.0)
        z = mu + sigma * torch.randn_like(mu)
        return self.decoder(z), mu, sigma


def kl_to_standard_normal(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Batch mean of KL(N(mu, sigma^2) || N(0, I)) in nats."""
    var = sigma.pow(2)
    return 0.5 * (mu.pow(2) + var - 1.0 - var.log()).sum(-1).mean()


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="training steps (default 300)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")

    torch.manual_seed(args.seed)
    centers = torch.randn(4, 20) * 2.0
    y = torch.randint(0, 4, (2048,))
    x = centers[y] + torch.randn(2048, 20)

    model = TinyVIB()
    opt = mograd.MOWrapper(torch.optim.Adam(model.parameters(), lr=1e-3))

    history: dict[str, list[float]] = {"w_pred": [], "w_info": [], "ce": [], "kl": []}
    for step in range(1, args.steps + 1):
        idx = torch.randint(0, 2048, (128,))
        logits, mu, sigma = model(x[idx])
        l_pred = F.cross_entropy(logits, y[idx])
        l_info = kl_to_standard_normal(mu, sigma)
        opt.zero_grad()
        info = opt.step([l_pred, l_info])
        w = info.weights.tolist()
        history["w_pred"].append(w[0])
        history["w_info"].append(w[1])
        history["ce"].append(l_pred.item())
        history["kl"].append(l_info.item())
        if step % max(1, args.steps // 6) == 0 or step == args.steps:
            print(
                f"step {step:4d}  CE {l_pred.item():.3f}  KL {l_info.item():7.2f}  "
                f"weights (pred, info) = ({w[0]:.3f}, {w[1]:.3f})  "
                f"coefficients = ({info.coefficients[0]:.3f}, {info.coefficients[1]:.3f})"
            )
    with torch.no_grad():
        _, mu, _ = model(x)
        acc = (model.decoder(mu).argmax(-1) == y).float().mean().item()
    print(f"train accuracy (z = mu): {100 * acc:.1f}%")
    n = len(history["w_pred"])
    tail = history["w_pred"][n // 2 :]
    print(f"mean weight on prediction, second half of training: {sum(tail) / len(tail):.3f}")
    return history


if __name__ == "__main__":
    main()

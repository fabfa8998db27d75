"""GPU checks; they skip cleanly where CUDA is absent (CI has none)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mograd import MOWrapper

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
@pytest.mark.parametrize("features", [False, True])
def test_two_losses_step_without_host_sync(features: bool) -> None:
    dev = torch.device("cuda")
    torch.manual_seed(0)
    enc, head = nn.Linear(32, 16).to(dev), nn.Linear(16, 4).to(dev)
    params = list(enc.parameters()) + list(head.parameters())
    opt = MOWrapper(torch.optim.Adam(params, lr=1e-3, foreach=True), nonfinite="ignore")
    x, y = torch.randn(64, 32, device=dev), torch.randint(0, 4, (64,), device=dev)

    def losses() -> tuple[list[torch.Tensor], torch.Tensor]:
        z = enc(x)
        return [nn.functional.cross_entropy(head(z), y), z.pow(2).mean()], z

    ls, z = losses()  # warm-up outside the check (lazy CUDA init, Adam state allocation)
    opt.step(ls, features=z if features else None)
    torch.cuda.synchronize()
    before = [p.detach().clone() for p in params]
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            ls, z = losses()
            opt.zero_grad()
            info = opt.step(ls, features=z if features else None)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(info.weights).all()
    assert any(not torch.equal(a, b) for a, b in zip(params, before))


@cuda
def test_matches_cpu() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    x = torch.randn(16, 8, dtype=torch.float64)
    infos = {}
    for dev in ("cpu", "cuda"):
        m = model.to(dev)
        opt = MOWrapper(torch.optim.SGD(m.parameters(), lr=0.1))
        out = m(x.to(dev))
        info = opt.backward([out[:, 0].pow(2).mean(), out[:, 1].abs().mean(), out[:, 2].mean()])
        assert info.weights.device.type == dev
        infos[dev] = info.weights.cpu()
        opt.zero_grad()
    torch.testing.assert_close(infos["cpu"], infos["cuda"])

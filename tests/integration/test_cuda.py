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


@cuda
def test_frugal_step_without_host_sync() -> None:
    dev = torch.device("cuda")
    torch.manual_seed(0)
    enc = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten()).to(dev)
    head = nn.Linear(4 * 6 * 6, 4).to(dev)
    params = list(enc.parameters()) + list(head.parameters())
    opt = MOWrapper(torch.optim.Adam(params, lr=1e-3, foreach=True), nonfinite="ignore",
                    jacobian="gramian", modules=[enc, head])
    x, y = torch.randn(64, 1, 8, 8, device=dev), torch.randint(0, 4, (64,), device=dev)

    def losses() -> list[torch.Tensor]:
        z = enc(x)
        return [nn.functional.cross_entropy(head(z), y), z.pow(2).mean()]

    opt.step(losses())  # warm-up outside the check
    torch.cuda.synchronize()
    before = [p.detach().clone() for p in params]
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            opt.zero_grad()
            info = opt.step(losses())
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(info.weights).all()
    assert any(not torch.equal(a, b) for a, b in zip(params, before))


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_frugal_gram_matches_rows_on_cuda(dtype: torch.dtype) -> None:
    from mograd.frugal import GramianEngine
    from mograd.gramian import jacobian_rows

    dev = torch.device("cuda")
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 5)
    ).to(dev, dtype)
    params = list(model.parameters())
    engine = GramianEngine(model, params)
    out = model(torch.randn(16, 3, 8, 8, device=dev, dtype=dtype))
    losses = [out[:, 0].pow(2).mean(), out.logsumexp(-1).mean(), out[:, 1:].abs().mean()]
    g, _ = engine.gram(losses)
    jac, _, _ = jacobian_rows(losses, params, [], True)
    ref = jac @ jac.T
    err = float((g - ref).abs().max() / ref.abs().max())
    assert err <= (1e-5 if dtype == torch.float32 else 1e-10)
    engine.remove()


def test_gpu_check_skips_without_cuda() -> None:
    """benchmarks/gpu_check.sh exits 0 with a clear message where CUDA is absent."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable}
    out = subprocess.run(
        ["bash", str(root / "benchmarks" / "gpu_check.sh")],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "no CUDA: skipped" in out.stdout

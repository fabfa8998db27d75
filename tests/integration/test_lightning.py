"""mograd.integrations.lightning runs under PyTorch Lightning and takes mograd's exact steps.

The model and data are those of examples/lightning_ib.py (whose LitIB is a
MOLightningModule); the recipe under test is the library's.
(a) plain precision: the parameters equal those of a hand-written MOWrapper loop, both for
    MOLightningModule and for mograd_step in a plain LightningModule;
(b) bf16-mixed: equal to the hand-written loop with the forward pass under bfloat16 autocast;
(c) strategy="ddp", 2 CPU processes (gloo, Lightning's own launcher, in a subprocess):
    both ranks equal one process on the full batch;
(d) misuse (automatic optimization, an optimizer that is not an MOWrapper) is a clear error.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mograd

# find_spec, not importorskip: importing lightning at collection would cost every worker
pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("lightning") is None, reason="needs lightning"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec"),
]

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "lightning_ib.py"
STEPS, BATCH, LR = 4, 32, 1e-2


def load_example():
    spec = importlib.util.spec_from_file_location("lightning_ib", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def args(save: Path, *extra: str, batch: int = BATCH) -> list[str]:
    return ["--steps", str(STEPS), "--batch", str(batch), "--lr", str(LR), "--fixed-noise",
            "--save", str(save), *extra]


def hand_loop(ex, autocast: bool = False) -> list[torch.Tensor]:
    """The same training written by hand: MOWrapper(Adam).step([ce, kl]) per batch."""
    torch.manual_seed(0)
    model = ex.TinyVIB()
    opt = mograd.MOWrapper(torch.optim.Adam(model.parameters(), lr=LR))
    data = ex.make_data(n=STEPS * BATCH, seed=1, fixed_noise=True)
    order = torch.utils.data.DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=0)
    for batch in torch.utils.data.DataLoader(data, batch_size=BATCH, sampler=order):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast, cache_enabled=False):
            losses = ex.ib_losses(model, batch)
        opt.zero_grad()
        opt.step(losses)
    return [p.detach() for p in model.parameters()]


@pytest.fixture(scope="module")
def ex():
    return load_example()


def fit(module, data, **trainer_args) -> None:
    import lightning as L

    trainer = L.Trainer(accelerator="cpu", max_steps=STEPS, max_epochs=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, **trainer_args)
    trainer.fit(module, data)


def test_plain_precision_equals_hand_loop(ex, tmp_path) -> None:
    metrics = ex.main(args(tmp_path / "plain.pt"))
    out = torch.load(tmp_path / "plain.pt", weights_only=True)
    assert out["steps"] == STEPS
    for p, q in zip(out["params"], hand_loop(ex)):
        torch.testing.assert_close(p, q, rtol=0, atol=0)  # same ops in the same order
    # StepInfo was logged (log_step_info, under loss_names), and the weights lie on the simplex
    assert abs(metrics["w_pred"] + metrics["w_info"] - 1.0) < 1e-5
    assert metrics["c_pred"] > 0 and metrics["loss_info"] > 0


def test_mograd_step_in_a_plain_lightning_module_equals_hand_loop(ex) -> None:
    """The two-line recipe: automatic_optimization = False and mograd_step(self, losses)."""
    import lightning as L

    from mograd.integrations.lightning import mograd_step

    class Plain(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False
            self.model = ex.TinyVIB()
            self.infos: list[mograd.StepInfo] = []

        def configure_optimizers(self):
            return mograd.MOWrapper(torch.optim.Adam(self.model.parameters(), lr=LR))

        def training_step(self, batch, batch_idx):
            self.infos.append(mograd_step(self, ex.ib_losses(self.model, batch)))

    torch.manual_seed(0)
    module = Plain()
    data = ex.ClustersData(ex.make_data(n=STEPS * BATCH, seed=1, fixed_noise=True), BATCH)
    fit(module, data, use_distributed_sampler=False)
    assert len(module.infos) == STEPS and module.infos[-1].weights.shape == (2,)
    for p, q in zip(module.model.parameters(), hand_loop(ex)):
        torch.testing.assert_close(p.detach(), q, rtol=0, atol=0)


def test_misuse_is_a_clear_error(ex) -> None:
    from mograd.integrations.lightning import MOLightningModule, log_step_info

    class Automatic(ex.LitIB):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = True

    class NotWrapped(ex.LitIB):
        def configure_optimizers(self):
            return torch.optim.Adam(self.model.parameters(), lr=LR)

    data = ex.ClustersData(ex.make_data(n=2 * BATCH, seed=1), BATCH)
    with pytest.raises(RuntimeError, match="automatic_optimization = False"):
        fit(Automatic(), data, use_distributed_sampler=False)
    with pytest.raises(TypeError, match="must return a mograd.MOWrapper, got Adam"):
        fit(NotWrapped(), data, use_distributed_sampler=False)
    with pytest.raises(NotImplementedError, match="compute_losses"):
        MOLightningModule().compute_losses(None, 0)
    w = torch.ones(2, requires_grad=True)
    info = mograd.MOWrapper(torch.optim.SGD([w], lr=0.1)).step([w[0] ** 2, (w[1] - 2) ** 2])
    for names in (("a", "a"), ("a",)):
        with pytest.raises(ValueError, match="2 distinct names"):
            log_step_info(ex.LitIB(), info, names=names)


def test_bf16_mixed_equals_hand_loop(ex, tmp_path) -> None:
    metrics = ex.main(args(tmp_path / "bf16.pt", "--precision", "bf16-mixed"))
    out = torch.load(tmp_path / "bf16.pt", weights_only=True)
    assert out["steps"] == STEPS
    ref = hand_loop(ex, autocast=True)
    for p, q in zip(out["params"], ref):
        assert p.dtype == torch.float32
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    # the forward pass really ran in bfloat16: the float32 loop ends elsewhere
    assert any(not torch.equal(p, q) for p, q in zip(out["params"], hand_loop(ex)))
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())


def test_ddp_two_cpu_processes_equal_full_batch(ex, tmp_path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for var in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "NODE_RANK"):
        env.pop(var, None)
    cmd = [sys.executable, str(SCRIPT), *args(tmp_path / "ddp.pt", "--devices", "2",
           "--strategy", "ddp", "--precision", "64-true", batch=BATCH // 2)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=420, cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"ddp.pt.rank{r}", weights_only=True) for r in range(2)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert [r["steps"] for r in ranks] == [STEPS, STEPS]

    ex.main(args(tmp_path / "full.pt", "--precision", "64-true"))
    full = torch.load(tmp_path / "full.pt", weights_only=True)
    for a, b in zip(ranks[0]["params"], ranks[1]["params"]):
        assert torch.equal(a, b)  # every rank took the same step
    for p, q in zip(ranks[0]["params"], full["params"]):
        assert p.dtype == torch.float64
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-10)
    # the runs trained (the comparison can fail)
    torch.manual_seed(0)
    init = [p.detach().double() for p in ex.TinyVIB().parameters()]
    assert max(float((p - q).abs().max()) for p, q in zip(full["params"], init)) > 1e-3

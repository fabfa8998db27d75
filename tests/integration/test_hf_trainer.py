"""mograd.integrations.transformers.MOTrainer: a transformers.Trainer with several losses.

gradient_accumulation_steps=2 on micro-batches of 8 takes the same steps as one batch of 16
(MOWrapper.accumulate solves once on the summed per-loss gradients), on the tiny BERT of
examples/hf_trainer.py (whose IBTrainer is an MOTrainer), built from a config: nothing is
downloaded (HF_HUB_OFFLINE=1, report_to=[]). The default compute_loss (the model returns
its losses) and misuse are tested on a linear model.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
# find_spec, not importorskip: importing transformers at collection would cost every worker
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None or importlib.util.find_spec("accelerate") is None,
    reason="needs transformers and accelerate",
)

ROOT = Path(__file__).resolve().parents[2]
STEPS = 3


@pytest.fixture(scope="module")
def ex():
    spec = importlib.util.spec_from_file_location("hf_trainer", ROOT / "examples" / "hf_trainer.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_accumulation_equals_full_batch(ex, tmp_path) -> None:
    torch.set_num_threads(1)
    opts = {"dtype": torch.float64, "steps": STEPS, "lr": 1e-2, "sampling": "sequential"}
    full, full_model = ex.train(str(tmp_path / "full"), batch=16, grad_accum=1, **opts)
    acc, acc_model = ex.train(str(tmp_path / "acc"), batch=8, grad_accum=2, **opts)
    assert full.state.global_step == acc.state.global_step == STEPS

    for (name, p), q in zip(full_model.named_parameters(), acc_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-11, msg=name)
    for a, b in zip(
        (full.last_info.weights, full.last_info.coefficients, full.last_info.losses),
        (acc.last_info.weights, acc.last_info.coefficients, acc.last_info.losses),
    ):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)

    # the model trained, and both losses reached the update
    torch.manual_seed(0)
    start = ex.VIBClassifier(ex.tiny_bert_config()).double()
    moved = max(
        float((p.detach() - q.detach()).abs().max())
        for p, q in zip(full_model.parameters(), start.parameters())
    )
    assert moved > 1e-3

    # the Trainer's logs carry mograd's weights and coefficients
    logs = [e for e in acc.state.log_history if "mograd/w_pred" in e]
    assert logs and abs(logs[-1]["mograd/w_pred"] + logs[-1]["mograd/w_info"] - 1) < 1e-9
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in logs)
    assert logs[-1]["mograd/loss_info"] == pytest.approx(float(acc.last_info.losses[1]))

    # evaluation still works (compute_loss returns one scalar with return_outputs=True)
    metrics = acc.evaluate(eval_dataset=ex.TokenTask(n=8, seed=5))
    assert torch.isfinite(torch.tensor(metrics["eval_loss"]))


def test_example_main_runs(ex, tmp_path) -> None:
    logs = ex.main(["--steps", "2", "--batch", "4", "--output-dir", str(tmp_path)])
    assert len(logs) == 2 and {"mograd/c_pred", "mograd/c_info"} <= set(logs[0])


class TwoTargets(torch.nn.Module):
    """A linear model that returns its two losses, as MOTrainer's default compute_loss reads."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        out = self.net(x)
        return {"losses": [out[:, 0].pow(2).mean(), (out[:, 1] - 1).pow(2).mean()]}


def trainer_for(tmp_path, model, **kwargs):
    from transformers import PrinterCallback, TrainingArguments

    from mograd.integrations.transformers import MOTrainer

    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4,
                             learning_rate=0.1, lr_scheduler_type="constant", logging_steps=1,
                             max_grad_norm=0.0, train_sampling_strategy="sequential",
                             save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True)
    data = [{"x": x} for x in torch.randn(8, 4, generator=torch.Generator().manual_seed(0))]
    trainer = MOTrainer(model=model, args=args, train_dataset=data, **kwargs)
    trainer.remove_callback(PrinterCallback)
    return trainer


def test_default_compute_loss_and_options_equal_a_hand_loop(tmp_path) -> None:
    """Model-returned losses, mograd_options and optimizers= reach MOWrapper as given."""
    import mograd

    torch.manual_seed(0)
    model = TwoTargets()
    ref = TwoTargets()
    ref.load_state_dict(model.state_dict())
    start = [p.detach().clone() for p in model.parameters()]
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = trainer_for(tmp_path, model, optimizers=(sgd, None),
                          mograd_options={"weights": "mgda"})
    trainer.train()
    assert trainer.optimizer.optimizer.optimizer is sgd  # accelerate's, then MOWrapper's
    opt = mograd.MOWrapper(torch.optim.SGD(ref.parameters(), lr=0.1), weights="mgda")
    xs = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    for step in range(2):
        opt.zero_grad()
        info = opt.step(ref(xs[4 * step:4 * step + 4])["losses"])
    for p, q, p0 in zip(model.parameters(), ref.parameters(), start):
        torch.testing.assert_close(p, q)
        assert not torch.equal(p, p0)  # it trained: the comparison can fail
    torch.testing.assert_close(trainer.last_info.weights, info.weights)
    assert trainer.last_info.reweighted.tolist() == trainer.last_info.weights.tolist()  # mgda: p = 1


def test_misuse_is_a_clear_error(tmp_path) -> None:
    from mograd.integrations.transformers import MOTrainer, unwrap_optimizer

    with pytest.raises(TypeError, match="is not a mograd.MOWrapper"):
        unwrap_optimizer(torch.optim.SGD(TwoTargets().parameters(), lr=0.1))
    with pytest.raises(ValueError, match="loss_names has 3 names, compute_loss returned 2"):
        trainer_for(tmp_path, TwoTargets(), loss_names=("a", "b", "c")).train()

    class NoLosses(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Linear(4, 1)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"loss": self.net(x).pow(2).mean()}

    with pytest.raises(TypeError, match="no 'losses' list"):
        trainer_for(tmp_path, NoLosses()).train()
    assert issubclass(MOTrainer, __import__("transformers").Trainer)

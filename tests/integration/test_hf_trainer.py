"""examples/hf_trainer.py: a transformers.Trainer with several losses, stepped by mograd.

gradient_accumulation_steps=2 on micro-batches of 8 takes the same steps as one batch of 16
(MOWrapper.accumulate solves once on the summed per-loss gradients), on a tiny BERT built
from a config in the test: nothing is downloaded (HF_HUB_OFFLINE=1, report_to=[]).
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
    logs = [e for e in acc.state.log_history if "mograd/w_0" in e]
    assert logs and abs(logs[-1]["mograd/w_0"] + logs[-1]["mograd/w_1"] - 1) < 1e-9
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in logs)

    # evaluation still works (compute_loss returns one scalar with return_outputs=True)
    metrics = acc.evaluate(eval_dataset=ex.TokenTask(n=8, seed=5))
    assert torch.isfinite(torch.tensor(metrics["eval_loss"]))


def test_example_main_runs(ex, tmp_path) -> None:
    logs = ex.main(["--steps", "2", "--batch", "4", "--output-dir", str(tmp_path)])
    assert len(logs) == 2 and {"mograd/c_0", "mograd/c_1"} <= set(logs[0])

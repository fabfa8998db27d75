"""MIB with the Hugging Face ``Trainer``: ``compute_loss`` returns several losses, mograd steps.

:class:`mograd.integrations.transformers.MOTrainer` does the work (the Trainer's optimizer
wrapped in ``MOWrapper``, gradient accumulation that solves once per step, the weights in
the Trainer's logs; ``docs/integrations/transformers.md``). ``IBTrainer`` below only says
what the losses are: a variational information bottleneck on top of a tiny BERT encoder
built from a config (random weights, no download), trained on prediction (cross-entropy)
and compression (KL to N(0, I)), the two objectives of MIB (``docs/derivation.md``).

    python examples/hf_trainer.py --steps 20 --grad-accum 2
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here is downloaded

from transformers import BertConfig, BertModel, TrainingArguments

from mograd.integrations.transformers import MOTrainer


class VIBClassifier(nn.Module):
    """A BERT encoder, a Gaussian bottleneck on the [CLS] state and a linear decoder."""

    def __init__(self, config: BertConfig, k: int = 8, n_classes: int = 2) -> None:
        super().__init__()
        self.bert = BertModel(config, add_pooling_layer=False)
        self.bottleneck = nn.Linear(config.hidden_size, 2 * k)
        self.decoder = nn.Linear(k, n_classes)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        eps: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        h = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mu, rho = self.bottleneck(h[:, 0]).chunk(2, dim=-1)
        sigma = F.softplus(rho - 5.0)
        if eps is None:
            eps = torch.randn_like(mu)
        return {"logits": self.decoder(mu + sigma * eps.to(mu.dtype)), "mu": mu, "sigma": sigma}


class IBTrainer(MOTrainer):
    """MOTrainer for :class:`VIBClassifier`: losses [cross-entropy, KL]."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, loss_names=("pred", "info"), **kwargs)

    def compute_loss(  # type: ignore[override]
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        out = model(**inputs)
        var = out["sigma"].pow(2)
        kl = 0.5 * (out["mu"].pow(2) + var - 1.0 - var.log()).sum(-1).mean()
        losses = [F.cross_entropy(out["logits"], inputs["labels"]), kl]
        if return_outputs:  # evaluation: one scalar and the outputs, as the Trainer expects
            return torch.stack(losses).sum(), out
        return losses


def tiny_bert_config() -> BertConfig:
    """A two-layer BERT small enough to train on a CPU in seconds (no dropout)."""
    return BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )


class TokenTask(Dataset):
    """Random token sequences; the label says whether token 1 occurs more often than token 2.

    Each item also carries a fixed bottleneck noise ``eps`` (drawn once per sample), so that
    runs with different batch splits see the same noise.
    """

    def __init__(self, n: int = 256, length: int = 16, k: int = 8, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.input_ids = torch.randint(3, 64, (n, length), generator=gen)
        self.input_ids[:, 0] = 0  # [CLS]
        mask = torch.rand(n, length, generator=gen)
        self.input_ids[mask < 0.15] = 1
        self.input_ids[(mask >= 0.15) & (mask < 0.3)] = 2
        self.labels = ((self.input_ids == 1).sum(1) > (self.input_ids == 2).sum(1)).long()
        self.eps = torch.randn(n, k, generator=gen)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids[i], "labels": self.labels[i], "eps": self.eps[i]}


def train(
    output_dir: str,
    *,
    steps: int = 20,
    batch: int = 16,
    grad_accum: int = 1,
    lr: float = 1e-3,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    sampling: str = "random",
    extra_args: dict[str, Any] | None = None,
) -> tuple[IBTrainer, VIBClassifier]:
    """Train VIBClassifier with IBTrainer; ``batch`` is the per-device micro-batch size."""
    torch.manual_seed(seed)
    model = VIBClassifier(tiny_bert_config()).to(dtype)
    args = TrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=grad_accum,
        max_steps=steps,
        learning_rate=lr,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=0.0,
        train_sampling_strategy=sampling,
        logging_steps=max(1, steps // 4),
        save_strategy="no",
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
        seed=seed,
        disable_tqdm=True,
        **(extra_args or {}),
    )
    data = TokenTask(n=steps * batch * grad_accum, seed=seed + 1)
    trainer = IBTrainer(model=model, args=args, train_dataset=data)
    trainer.train()
    return trainer, model


def main(argv: Sequence[str] | None = None) -> list[dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps (default 20)")
    parser.add_argument("--batch", type=int, default=16, help="micro-batch size (default 16)")
    parser.add_argument("--grad-accum", type=int, default=2, help="micro-batches per step")
    parser.add_argument("--output-dir", default="runs/hf_trainer", help="Trainer output_dir")
    args = parser.parse_args(argv)
    trainer, _ = train(args.output_dir, steps=args.steps, batch=args.batch,
                       grad_accum=args.grad_accum)
    logs = [entry for entry in trainer.state.log_history if "mograd/w_pred" in entry]
    for entry in logs:
        print(
            f"step {entry['step']:3d}  loss {entry['loss']:.3f}  weights (pred, info) = "
            f"({entry['mograd/w_pred']:.3f}, {entry['mograd/w_info']:.3f})  coefficients = "
            f"({entry['mograd/c_pred']:.3f}, {entry['mograd/c_info']:.3f})"
        )
    return logs


if __name__ == "__main__":
    main()

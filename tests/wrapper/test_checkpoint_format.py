"""A checkpoint written by mograd 0.1.0 (``tests/fixtures/checkpoint_0_1_0.pt``, made by
``tests/fixtures/make_checkpoint.py`` at commit ef25cf6) loads into today's wrapper, and the
resumed step gives the parameters 0.1.0 gave."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

import mograd
from tests.fixtures.make_checkpoint import CONFIGS, losses_of, model_and_batches

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "checkpoint_0_1_0.pt"


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_checkpoint_of_0_1_0_resumes(name: str) -> None:
    record = torch.load(FIXTURE, weights_only=True)
    saved = record[name]
    model, _ = model_and_batches(seed=7)  # another init: everything comes from the file
    model.load_state_dict(saved["model"])
    opt = mograd.MOWrapper(torch.optim.Adam(model.parameters(), lr=0.5), **CONFIGS[name])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # same options: no warning
        opt.load_state_dict(saved["opt"])
    assert opt.steps == 3
    assert opt.param_groups[0]["lr"] == 1e-2
    opt.zero_grad()
    opt.step(losses_of(model, saved["x"], saved["k"]))
    for got, want in zip(model.parameters(), saved["after"]):
        torch.testing.assert_close(got.detach(), want, rtol=1e-12, atol=1e-14)
    assert opt.steps == 4

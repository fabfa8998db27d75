"""Tests of benchmarks/fashion_tasks.py: the task data built from the real FashionMNIST files
(the angle and flip targets against torchvision's own rotation), the losses and metrics, the
method catalogue drawn from the weightings registry, Delta m against a hand computation, and
the command line end to end on a few hundred real images."""

from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF

import mograd.weightings as W
from benchmarks import fashion_tasks
from benchmarks.ibkit.data import DEBIAN_FASHION_MNIST
from benchmarks.mtlkit.data import load_fashion_uint8
from benchmarks.taskkit import data as tdata
from benchmarks.taskkit.methods import (
    available,
    catalogue,
    gram_based,
    registry_rows,
    resolve_names,
    scale_sensitive,
)
from benchmarks.taskkit.model import TaskNet
from benchmarks.taskkit.report import delta_m, summarize
from benchmarks.taskkit.tasks import TASKS, metrics, task_losses
from benchmarks.taskkit.train import RunConfig, run

needs_fmnist = pytest.mark.skipif(
    not (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian package dataset-fashion-mnist not installed",
)


@pytest.fixture(scope="module")
def fashion() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return load_fashion_uint8()


# ------------------------------------------------------------------------------ Delta m


def test_delta_m_matches_a_hand_computation() -> None:
    m = {"class": 80.0, "recon": 20.0, "angle": 6.0, "flip": 90.0}
    s = {"class": 85.0, "recon": 19.0, "angle": 5.0, "flip": 88.0}
    # class and recon and flip: higher is better (sign -1); angle MAE: lower is better (+1).
    hand = Fraction(100, 4) * (Fraction(5, 85) - Fraction(1, 19) + Fraction(1, 5) - Fraction(2, 88))
    assert delta_m(m, s) == pytest.approx(float(hand), rel=1e-12)
    assert float(hand) == pytest.approx(4.5866, abs=1e-4)
    assert delta_m(s, s) == 0.0
    better = {"class": 90.0, "recon": 19.0, "angle": 5.0, "flip": 88.0}  # +5.88 % accuracy
    assert delta_m(better, s) == pytest.approx(-100 * 5 / 85 / 4)
    with pytest.raises(ValueError, match="tasks differ"):
        delta_m({"class": 1.0}, s)
    with pytest.raises(ValueError, match="baseline of 'angle' is 0"):
        delta_m(m, {**s, "angle": 0.0})


def test_summary_delta_m_uses_the_seed_mean_single_task_baselines() -> None:
    def rec(method: str, seed: int, vals: dict[str, float], single: str | None) -> dict:
        return {
            "method": method,
            "base": method,
            "single": single,
            "representation": False,
            "seed": seed,
            "mograd_args": "",
            "config": {},
            "duration_s": 1.0,
            "test": {t: {"metric": v, "loss": 0.0} for t, v in vals.items()},
            "epoch_s": [2.0 if single is None else 1.0],
            "epoch_cpu_s": [3.0],
            "coefficients": [],
            "trace": None,
        }

    base = {"class": 50.0, "recon": 10.0, "angle": 10.0, "flip": 50.0}
    runs = []
    for seed, shift in ((0, -1.0), (1, 1.0)):  # single-task means: 80, 20, 5, 90
        runs.append(rec("single class", seed, {**base, "class": 80.0 + shift}, "class"))
        runs.append(rec("single recon", seed, {**base, "recon": 20.0 + shift}, "recon"))
        runs.append(rec("single angle", seed, {**base, "angle": 5.0 + shift}, "angle"))
        runs.append(rec("single flip", seed, {**base, "flip": 90.0 + shift}, "flip"))
    runs.append(rec("Mean", 0, {"class": 72.0, "recon": 20.0, "angle": 6.0, "flip": 90.0}, None))
    runs.append(rec("Mean", 1, {"class": 80.0, "recon": 22.0, "angle": 5.0, "flip": 90.0}, None))
    out = summarize(runs, ["Mean"])
    assert out["single_baselines"] == {"class": 80.0, "recon": 20.0, "angle": 5.0, "flip": 90.0}
    d = out["methods"]["Mean"]["delta_m"]
    assert d["values"] == pytest.approx([25 * (8 / 80 + 1 / 5), 25 * (-2 / 20)])
    assert d["mean"] == pytest.approx(25 * (4 / 80 - 1 / 20 + 0.1))  # Delta m of the means
    assert "delta_m" not in out["methods"]["single class"]
    assert out["methods"]["single class"]["time_ratio"] == pytest.approx(0.5)


# --------------------------------------------------------------------------- task data


def test_rotate_turns_content_counter_clockwise() -> None:
    bar = torch.zeros(1, 1, 29, 29)
    bar[0, 0, 14, 4:25] = 1.0  # a horizontal bar through the centre
    for deg in (-40.0, 25.0, 60.0):
        out = tdata.rotate(bar, torch.tensor([deg]))[0, 0]
        ys, xs = torch.meshgrid(torch.arange(29.0), torch.arange(29.0), indexing="ij")
        w = out / out.sum()
        mx, my = (w * xs).sum(), (w * ys).sum()
        cxx = (w * (xs - mx) ** 2).sum()
        cyy = (w * (ys - my) ** 2).sum()
        cxy = (w * (xs - mx) * (ys - my)).sum()
        # principal axis; image y points down, so a counter-clockwise angle has -y
        axis = 0.5 * math.degrees(math.atan2(float(-2 * cxy), float(cxx - cyy)))
        assert axis == pytest.approx(deg, abs=1.0)


@needs_fmnist
def test_targets_match_the_applied_flip_and_rotation(fashion) -> None:
    images, labels = fashion["test"]
    d = tdata.make_split(images, labels, "test", limit=200)
    assert d.x.shape == (200, 1, 28, 28) and d.x.dtype == torch.float32
    assert 0.0 <= float(d.x.min()) and float(d.x.max()) <= 1.0
    assert float(d.angle.abs().max()) <= 45.0 and 0.3 < float(d.flip.mean()) < 0.7
    idx = torch.randperm(10000, generator=torch.Generator().manual_seed(1))[:200]
    assert torch.equal(d.label, labels[idx])
    flip, angle = tdata.draws(10000, "test")
    np.testing.assert_allclose(d.angle.numpy(), angle[idx.numpy()], rtol=1e-6)
    np.testing.assert_array_equal(d.flip.numpy() == 1.0, flip[idx.numpy()])
    for i in range(0, 200, 7):  # torchvision's rotate is the independent oracle
        src = images[idx[i]].float().div(255.0)[None]
        src = src.flip(-1) if d.flip[i] == 1 else src
        ref = TF.rotate(src, float(d.angle[i]), interpolation=TF.InterpolationMode.BILINEAR)
        torch.testing.assert_close(d.x[i], ref, atol=1e-4, rtol=0)
        wrong = TF.rotate(src, -float(d.angle[i]), interpolation=TF.InterpolationMode.BILINEAR)
        if abs(float(d.angle[i])) > 10:
            assert (d.x[i] - wrong).abs().mean() > 10 * (d.x[i] - ref).abs().mean()
    # A subset is a faithful sample: the same rows as in the full build.
    full = tdata.make_split(images, labels, "test")
    torch.testing.assert_close(full.x[idx[:20]], d.x[:20])
    assert not np.array_equal(tdata.draws(100, "train")[1], tdata.draws(100, "test")[1])


class _Oracle(torch.nn.Module):
    """Returns the true targets of ``data`` (for rows in order), or constants."""

    def __init__(self, data: tdata.TaskData, perfect: bool) -> None:
        super().__init__()
        self.data, self.perfect, self.i = data, perfect, 0

    def forward(self, x: torch.Tensor):  # type: ignore[no-untyped-def]
        n = x.shape[0]
        b = self.data.take(slice(self.i, self.i + n))
        self.i += n
        if self.perfect:
            logits = torch.nn.functional.one_hot(b.label, 10).float() * 50
            return None, (logits, b.x.clone(), b.angle.clone(), 50 * (2 * b.flip - 1))
        return None, (torch.zeros(n, 10), torch.full_like(b.x, 0.5), torch.zeros(n), torch.ones(n))


@needs_fmnist
def test_losses_and_metrics_of_known_predictions(fashion) -> None:
    images, labels = fashion["test"]
    d = tdata.make_split(images, labels, "test", limit=300)
    perfect = metrics(_Oracle(d, True), d, batch=128)
    assert perfect["class"]["metric"] == 100.0 and perfect["flip"]["metric"] == 100.0
    assert perfect["angle"]["metric"] == 0.0 and perfect["recon"]["mse"] == 0.0
    assert perfect["recon"]["metric"] == pytest.approx(120.0)  # MSE floored at 1e-12
    const = metrics(_Oracle(d, False), d, batch=128)
    assert const["class"]["loss"] == pytest.approx(math.log(10), rel=1e-5)
    assert const["angle"]["metric"] == pytest.approx(float(d.angle.abs().mean()), rel=1e-5)
    assert const["angle"]["rmse"] == pytest.approx(float(d.angle.pow(2).mean().sqrt()), rel=1e-5)
    assert const["flip"]["metric"] == pytest.approx(100 * float(d.flip.mean()))
    mse = float((d.x - 0.5).pow(2).mean())
    assert const["recon"]["metric"] == pytest.approx(10 * math.log10(1 / mse), rel=1e-5)
    # Loss scales differ by orders of magnitude at a constant prediction.
    assert const["angle"]["loss"] > 1000 * const["recon"]["loss"]
    model = TaskNet()
    z, out = model(d.x[:16])
    ls = task_losses(out, d.take(slice(0, 16)))
    assert z.shape == (16, 64) and len(ls) == len(TASKS) and all(v.ndim == 0 for v in ls)
    assert out[1].shape == (16, 1, 28, 28) and float(out[1].detach().min()) >= 0.0


# ----------------------------------------------------------------------------- methods


def test_catalogue_has_every_registered_weighting_and_its_variants() -> None:
    cat = catalogue()
    classes = {cls for cls in W.WEIGHTINGS.values()}
    rows = registry_rows()
    assert {r.cls for r in rows} == classes  # one row per distinct class, none missed
    for r in rows:
        assert r.label in cat and cat[r.label].single is None
    assert cat["MGDA"].make_kwargs(0) == {"weights": "mgda"}  # plain MGDA, not MIB
    assert cat["MIB"].make_kwargs(0) == {"weights": "min_norm"}
    assert cat["MIB-loss"].make_kwargs(0) == {"weights": "min_norm", "normalize": "loss"}
    assert cat["MGDA-l2"].make_kwargs(0)["normalize"] == "l2"
    assert cat["MGDA (repr)"].representation and not cat["MGDA"].representation
    pc = cat["PCGrad"].make_kwargs(3)["weights"]
    assert isinstance(pc, W.PCGrad) and repr(pc) == "PCGrad(seed=3)"  # the run's seed
    # Normalization is offered only where it changes the update.
    by = {r.label: r for r in rows}
    assert scale_sensitive(by["MGDA"]) and scale_sensitive(by["Mean"])
    assert not scale_sensitive(by["Nash-MTL"]) and not scale_sensitive(by["IMTL-G"])
    assert "Nash-MTL-l2" not in cat and "IMTL-G-loss" not in cat
    assert not gram_based(by["Mean"]) and not gram_based(by["Random"]) and gram_based(by["UPGrad"])
    assert "Mean (repr)" not in cat and "Mean-l2 (repr)" in cat
    assert [cat[f"single {t.name}"].single for t in TASKS] == list(range(len(TASKS)))
    assert resolve_names(["mgda l2", "SINGLE CLASS", "mgda-l2"], list(cat)) == [
        "MGDA-l2",
        "single class",
    ]
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        resolve_names(["nope"], list(cat))


def test_a_weighting_added_to_the_registry_is_picked_up(monkeypatch) -> None:
    class Halves(W.Weighting):
        host_sync = False

        def weigh(self, gram: torch.Tensor, losses: torch.Tensor | None) -> torch.Tensor:
            w = torch.arange(1, gram.shape[0] + 1, dtype=gram.dtype)
            return w / w.sum()

    monkeypatch.setitem(W.WEIGHTINGS, "halves", Halves)
    cat = catalogue()
    assert cat["Halves"].make_kwargs(0) == {"weights": "halves"}
    assert "Halves-l2" in cat and "Halves (repr)" not in cat  # blind to the Gram matrix
    assert available(cat["Halves"]) is None
    quick = fashion_tasks.presets(cat)["quick"].methods
    assert "Halves" in quick and "Halves-l2" in quick and "Halves-loss" not in quick


def test_every_quick_preset_row_is_available() -> None:
    cat = catalogue()
    quick = fashion_tasks.presets(cat)["quick"]
    assert quick.methods[:5] == (
        "single class",
        "single recon",
        "single angle",
        "single flip",
        "Mean",
    )
    for name in quick.methods:
        assert available(cat[name]) is None, name
    assert set(quick.methods) < set(fashion_tasks.presets(cat)["paper"].methods)


@needs_fmnist
def test_a_run_traces_cosines_and_trains_only_its_task_when_single(fashion) -> None:
    images, labels = fashion["train"]
    train = tdata.make_split(images, labels, "train", limit=256)
    test = tdata.make_split(*fashion["test"], "test", limit=100)
    cfg = RunConfig(epochs=1, batch_size=32, train_limit=256, test_limit=100, trace_every=2)
    cat = catalogue()
    rec = run(cat["MGDA-l2"], 0, cfg, train, test, progress=False)
    tr = rec["trace"]
    assert tr["step"] == [1, 3, 5, 7] and len(tr["cosines"][0]) == 6
    assert all(-1.0 - 1e-6 <= c <= 1.0 + 1e-6 for p in tr["cosines"] for c in p)
    assert all(g > 0 for p in tr["grad_norms"] for g in p)
    assert len(rec["coefficients"]) == 1 and len(rec["coefficients"][0]) == 4
    single = run(cat["single angle"], 0, cfg, train, test, progress=False)
    assert single["trace"] is None and single["single"] == "angle"


# ------------------------------------------------------------------------ command line


def test_help_lists_tasks_and_presets(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        fashion_tasks.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for t in TASKS:
        assert t.name in text and t.metric in text
    assert "quick" in text and "paper" in text
    with pytest.raises(SystemExit) as exc:
        fashion_tasks.main(["--methods", "nope"])
    assert exc.value.code == 2
    assert "unknown method 'nope'" in capsys.readouterr().err


@needs_fmnist
def test_cli_trains_and_writes_its_files(tmp_path: Path, capsys) -> None:
    out = tmp_path / "ft"
    methods = [
        "single class",
        "single recon",
        "single angle",
        "single flip",
        "Mean",
        "MGDA-l2",
        "UPGrad (repr)",
    ]
    argv = [
        "--methods",
        *methods,
        "--seeds",
        "0",
        "1",
        "--epochs",
        "1",
        "--train-limit",
        "300",
        "--test-limit",
        "100",
        "--batch-size",
        "50",
        "--trace-every",
        "2",
        "--threads",
        "1",
        "--no-progress",
        "--out",
        str(out),
    ]
    assert fashion_tasks.main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    meta, summary, runs = res["meta"], res["summary"], res["runs"]
    assert meta["command"].startswith("python -m benchmarks.fashion_tasks --methods")
    assert torch.__version__.startswith(meta["environment"]["torch"])
    assert meta["config"]["train_limit"] == 300 and meta["seeds"] == [0, 1]
    assert len(runs) == 14 and meta["invocations"][-1]["trained"] == 14
    # Delta m of Mean, seed 0, recomputed by hand from the stored metrics.
    single = {
        t.name: np.mean([r["test"][t.name]["metric"] for r in runs if r["single"] == t.name])
        for t in TASKS
    }
    mean0 = next(r for r in runs if r["method"] == "Mean" and r["seed"] == 0)["test"]
    terms = [
        (-1 if t.higher_is_better else 1)
        * (mean0[t.name]["metric"] - single[t.name])
        / single[t.name]
        for t in TASKS
    ]
    assert summary["methods"]["Mean"]["delta_m"]["values"][0] == pytest.approx(100 * np.mean(terms))
    table = (out / "table.md").read_text()
    d = summary["methods"]["MGDA-l2"]["delta_m"]
    assert f"| MGDA-l2 | {d['mean']:.2f} ± {d['std']:.2f} |" in table
    assert "| single angle | (reference) |" in table and "## Separation" in table
    for png in ("delta_m.png", "cosines.png"):
        head = (out / png).read_bytes()[:8]
        assert head == b"\x89PNG\r\n\x1a\n"
    assert "Mean" in summary["cosines"] and len(summary["cosines"]["Mean"]["pair_mean"]) == 6
    capsys.readouterr()
    # A rerun reuses every stored run and keeps the first invocation in the log.
    assert fashion_tasks.main(argv) == 0
    meta2 = json.loads((out / "results.json").read_text())["meta"]
    assert meta2["invocations"][-1]["trained"] == 0 and len(meta2["invocations"]) == 2
    assert "14 runs trained" in (out / "table.md").read_text()

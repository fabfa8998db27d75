"""Tests of benchmarks/multi_fashion.py: Multi-Fashion built from the real FashionMNIST files,
the method table, a tiny smoke run of two methods end to end, and the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import multi_fashion
from benchmarks.ibkit.data import DEBIAN_FASHION_MNIST
from benchmarks.mtlkit import data as mfdata
from benchmarks.mtlkit.methods import all_names, available, expand, resolve_names
from mograd import pareto

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"

needs_fmnist = pytest.mark.skipif(
    not (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian package dataset-fashion-mnist not installed",
)


@pytest.fixture(scope="module")
def fashion() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return mfdata.load_fashion_uint8()


# ------------------------------------------------------------------------------------ data


def test_partners_are_deterministic_other_images() -> None:
    left, right = mfdata.partners(1000, "train", seed=0)
    assert left.shape == right.shape == (2000,)
    np.testing.assert_array_equal(left, np.tile(np.arange(1000), 2))
    assert (left != right).all() and right.min() >= 0 and right.max() < 1000
    _, r2 = mfdata.partners(1000, "train", seed=0)
    np.testing.assert_array_equal(right, r2)
    assert not np.array_equal(right[:1000], right[1000:])  # the two copies differ
    assert not np.array_equal(right, mfdata.partners(1000, "test", seed=0)[1])
    assert not np.array_equal(right, mfdata.partners(1000, "train", seed=1)[1])


@needs_fmnist
def test_multi_fashion_shapes_labels_and_determinism_on_real_data(fashion) -> None:
    images, labels = fashion["test"]
    assert images.shape == (10000, 28, 28) and images.dtype == torch.uint8
    a = mfdata.build_split(images, labels, "test", seed=0, limit=64)
    b = mfdata.build_split(images, labels, "test", seed=0, limit=64)
    assert a.x.shape == (64, 28, 28) and a.x.dtype == torch.uint8
    assert a.y.shape == (64, 2) and a.y.dtype == torch.long
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    left, right = mfdata.partners(10000, "test", seed=0)
    assert torch.equal(a.y[:, 0], labels[left[:64]])
    assert torch.equal(a.y[:, 1], labels[right[:64]])
    # The first rows of a small build are the first rows of the full one.
    full = mfdata.build_split(images, labels, "test", seed=0)
    assert len(full) == 20000 and torch.equal(full.x[:64], a.x)
    # Labels of both tasks are spread over all 10 classes, pairs are not always equal.
    assert set(full.y[:, 0].tolist()) == set(range(10)) == set(full.y[:, 1].tolist())
    assert (full.y[:, 0] != full.y[:, 1]).float().mean() > 0.8
    # Overlay by pixel-wise max then a resize with non-negative weights: monotone in each item.
    alone = mfdata.compose(images[left[:64]], torch.zeros(64, 28, 28, dtype=torch.uint8))
    assert (a.x.int() >= alone.int()).all() and (a.x.int() > alone.int()).any()
    # The top-left item fills the top-left corner, the bottom-right one the opposite corner.
    tl = mfdata.compose(images[:8], torch.zeros(8, 28, 28, dtype=torch.uint8)).float()
    br = mfdata.compose(torch.zeros(8, 28, 28, dtype=torch.uint8), images[:8]).float()
    assert tl[:, :4, :4].sum() >= 0 and tl[:, -3:, -3:].sum() == 0 and br[:, :3, :3].sum() == 0


@needs_fmnist
def test_cache_roundtrip_on_a_real_subset(fashion, tmp_path: Path, monkeypatch) -> None:
    small = {
        "train": (fashion["train"][0][:300], fashion["train"][1][:300]),
        "test": (fashion["test"][0][:100], fashion["test"][1][:100]),
    }
    calls = []

    def fake_load(data_dir=None):  # type: ignore[no-untyped-def]
        calls.append(data_dir)
        return small

    monkeypatch.setattr(mfdata, "load_fashion_uint8", fake_load)
    tr, te, info = mfdata.load_multi_fashion(cache_dir=tmp_path)
    assert info["built"] and len(tr) == 600 and len(te) == 200 and len(calls) == 1
    assert (tmp_path / "multi_fashion_v1_seed0.pt").is_file()
    tr2, te2, info2 = mfdata.load_multi_fashion(cache_dir=tmp_path)
    assert not info2["built"] and len(calls) == 1
    assert torch.equal(tr.x, tr2.x) and torch.equal(te.y, te2.y)
    assert info2["sha256_train"] == info["sha256_train"]
    x, _ = tr.subset(50, seed=0).tensors()
    assert x.shape == (50, 1, 28, 28) and x.dtype == torch.float32 and 0 <= x.min() <= x.max() <= 1
    assert torch.equal(tr.subset(50, seed=0).y, tr2.subset(50, seed=0).y)


# --------------------------------------------------------------------------------- methods


def test_method_names_and_expansion() -> None:
    assert resolve_names(["mgda", "upgrad_pref", "MGDA (repr)", "ls"]) == [
        "MGDA",
        "UPGrad-pref",
        "MGDA (repr)",
        "LS",
    ]
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        resolve_names(["nope"])
    rays = pareto.preference_rays(3)
    ls = expand("LS", rays)
    assert [m.label for m in ls] == ["LS r=0.79/0.21", "LS r=0.50/0.50", "LS r=0.21/0.79"]
    assert all(abs(sum(m.ray) - 1.0) < 1e-12 for m in ls)
    (mgda_repr,) = expand("MGDA (repr)", rays)
    assert mgda_repr.representation and mgda_repr.ray is None
    assert "Mean (repr)" not in all_names() and "Random (repr)" not in all_names()


def test_every_preset_method_is_available() -> None:
    rays = pareto.preference_rays(2)
    for name in multi_fashion.presets()["paper"].methods:
        assert available(expand(name, rays)[0]) is None, name


# ------------------------------------------------------------------------------- smoke run


@needs_fmnist
def test_smoke_two_methods_tiny_then_resume(tmp_path: Path, capsys) -> None:
    out = tmp_path / "mf"
    argv = [
        "--methods",
        "Mean",
        "UPGrad-pref",
        "--rays",
        "2",
        "--seeds",
        "0",
        "--epochs",
        "1",
        "--train-limit",
        "192",
        "--test-limit",
        "100",
        "--threads",
        "2",
        "--device",
        "cpu",
        "--no-progress",
        "--out",
        str(out),
    ]
    assert multi_fashion.main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["meta"]["command"].startswith("python") and "torch" in res["meta"]["environment"]
    assert len(res["runs"]) == 3  # Mean + two rays
    assert {r["group"] for r in res["runs"]} == {"Mean", "UPGrad-pref"}
    for r in res["runs"]:
        assert len(r["acc"]) == 2 and all(0 <= a <= 1 for a in r["acc"])
        assert len(r["epoch_s"]) == len(r["epoch_cpu_s"]) == 1 and r["api"] == "weightings"
    front = res["summary"]["UPGrad-pref"]
    assert front["kind"] == "front" and len(front["points"]) == 2
    assert all(0 <= p["angle_train"]["mean"] <= 90 for p in front["points"])
    assert res["summary"]["Mean"]["time_ratio"]["mean"] == pytest.approx(1.0)
    assert front["time_ratio"]["mean"] > 0
    table = (out / "table.md").read_text()
    assert "| Mean |" in table and "| UPGrad-pref (front) |" in table and "angle train" in table
    assert (out / "front.png").stat().st_size > 10_000
    # A second invocation reuses the stored runs.
    capsys.readouterr()
    assert multi_fashion.main(argv) == 0
    assert "0 to train (3 stored" in capsys.readouterr().out


def test_help_lists_presets_and_methods(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        multi_fashion.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for word in ("--preset", "--methods", "--seeds", "--epochs", "--train-limit", "--test-limit",
                 "--device", "--out", "--threads", "quick", "paper", "UPGrad-pref", "Nash-MTL"):  # fmt: skip
        assert word in text


def test_unknown_method_is_a_usage_error(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        multi_fashion.main(["--methods", "nope"])
    assert exc.value.code == 2 and "unknown method 'nope'" in capsys.readouterr().err


def test_default_out_is_the_ignored_runs_dir() -> None:
    args = multi_fashion.build_parser().parse_args([])
    _, out = multi_fashion.resolve(args)
    assert out.parts[-2:] == ("runs", "multi_fashion_quick")


# ---------------------------------------------------------------- the EPO-style weighting


def test_ray_balance_weights_and_ray_tracing_on_quadratics() -> None:
    import mograd
    from benchmarks.mtlkit.epo import RayBalance

    eye = torch.eye(2, dtype=torch.float64)
    on_ray = RayBalance([0.5, 0.5])(eye, torch.tensor([1.0, 1.0], dtype=torch.float64))
    assert on_ray.tolist() == [0.5, 0.5]
    off = RayBalance([0.5, 0.5])(eye, torch.tensor([3.0, 1.0], dtype=torch.float64))
    assert off.tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="positive"):
        RayBalance([1.0, 0.0])

    a, b = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 0.0])

    def train(ray: np.ndarray) -> list[float]:
        x = torch.tensor([0.3, 2.0], requires_grad=True)
        opt = mograd.MOWrapper(torch.optim.Adam([x], lr=0.05), weights=RayBalance(ray))
        for _ in range(250):
            opt.zero_grad()
            opt.step([((x - a) ** 2).sum(), ((x - b) ** 2).sum()])
        x = x.detach()
        return [float(((x - a) ** 2).sum()), float(((x - b) ** 2).sum())]

    front = pareto.trace_front(train, rays=3, progress=False)
    # On the front sqrt(f1) + sqrt(f2) = 2 and within a few degrees of EPO's target rays.
    np.testing.assert_allclose(np.sqrt(front.points).sum(axis=1), 2.0, atol=0.02)
    assert front.angles.max() < 3.0

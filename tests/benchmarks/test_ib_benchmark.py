"""End-to-end tests of benchmarks/ib_fmnist.py and benchmarks/ib_cifar10.py (real data paths)."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision import datasets

from benchmarks.ibkit.attacks import ATTACKS
from benchmarks.ibkit.cli import main
from benchmarks.ibkit.data import DEBIAN_FASHION_MNIST, UncheckedCIFAR10, load_dataset
from benchmarks.ibkit.methods import ALL_METHODS, MAIN_METHODS
from benchmarks.ibkit.train import RunConfig, info_plane_points, run

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"

needs_fmnist = pytest.mark.skipif(
    not (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian package dataset-fashion-mnist not installed",
)

SMOKE = [
    "--preset",
    "quick",
    "--epochs",
    "1",
    "--seeds",
    "0",
    "--train-limit",
    "256",
    "--test-limit",
    "64",
    "--curve-limit",
    "32",
    "--threads",
    "2",
    "--no-progress",
]


def _cells(table: str) -> dict[str, list[str]]:
    """Rows of the first markdown table: name -> cells."""
    rows: dict[str, list[str]] = {}
    for line in table.split("\n\n")[1].strip().splitlines()[2:]:
        parts = [p.strip() for p in line.strip("|").split("|")]
        rows[parts[0]] = parts[1:]
    return rows


@needs_fmnist
def test_smoke_every_method_and_attack_then_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every method and attack on real FashionMNIST; then a rerun retrains nothing.

    results.json and table.md must hold every method x attack cell, finite, within [0, 100].
    One test rather than a fixture shared by two, so pytest-xdist never trains twice.
    """
    monkeypatch.setenv("MOGRAD_DATA", str(tmp_path / "cache"))
    out = tmp_path / "res"
    assert main("fashion_mnist", "ib_fmnist", [*SMOKE, "--out", str(out)]) == 0

    results = json.loads((out / "results.json").read_text())
    rows = ["NONE", *ATTACKS]
    assert results["rows"] == rows
    for method in ALL_METHODS:
        for row in rows:
            cell = results["summary"][method][row]
            assert len(cell["values"]) == 1
            assert math.isfinite(cell["mean"]) and 0.0 <= cell["mean"] <= 100.0
    meta = results["meta"]
    assert meta["seeds"] == [0] and meta["device"] == "cpu"
    assert {"torch", "torchvision", "torchattacks", "mograd"} <= set(meta["versions"])
    assert "--train-limit 256" in meta["command"]
    assert all(r["duration_s"] > 0 and len(r["epochs"]) == 1 for r in results["runs"])
    # the multi-objective methods record the optimizer's weights per epoch
    weights = results["mo_weights_per_epoch"]
    assert set(weights) == {
        "MIB",
        "MIB w.o. s",
        "MIB w.o. aw",
        "VIB w. aw",
        "MIB-l2",
        "MIB-loss",
        "MGDA-l2",
    }
    w = weights["MIB"]["0"]
    assert w["weights_0"][0] + w["weights_1"][0] == pytest.approx(1.0, abs=1e-4)
    assert weights["MIB w.o. aw"]["0"]["weights_0"][0] == pytest.approx(0.5)

    table = (out / "table.md").read_text()
    cells = _cells(table)
    assert list(cells) == [*rows, "Rank Avg.", "test KL [nats]"]
    header = table.split("\n\n")[1].splitlines()[0]
    assert header == "| Attack | " + " | ".join(MAIN_METHODS) + " |"
    for row in rows:
        assert len(cells[row]) == len(MAIN_METHODS)
        for cell in cells[row]:
            mean = float(cell.strip("*").removeprefix("<u>").split(" ± ")[0])
            assert 0.0 <= mean <= 100.0
    assert any(c.startswith("**") for c in cells["NONE"])
    assert "Ablation" in table
    # the gradient-normalized variants are labelled as interpretations, one block per budget
    assert "| MIB-l2 * | MIB-loss * | MGDA-l2 * |" in table
    for label in ("2/255", "4/255", "8/255"):
        assert f"Accuracy (%) at eps = {label}" in table
    assert [b["label"] for b in results["budgets"]] == ["1/255", "2/255", "4/255", "8/255"]
    assert set(results["summary_by_eps"]["8/255"]["MIB"]) == {"NONE", "FGSM", "PGD"}
    assert results["test_kl"]["MIB"]["estimator"] == "kl"
    assert results["test_kl"]["NIB"]["estimator"] == "kde"
    assert "RES18" not in results["test_kl"]
    assert "median_weights_1" in weights["MIB"]["0"]
    for fig in ("info_plane.png", "curves.png", "ablation.png", "weights.png", "eps.png"):
        assert (out / fig).stat().st_size > 1000

    # resume: the same command reuses every stored run
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")}
    assert len(stamps) == len(ALL_METHODS)
    first = capsys.readouterr().out
    # the command prints the weights the multi-objective optimizer chose
    assert "MIB: weights chosen" in first and "MIB w.o. aw: weights chosen" in first
    assert "w* = (pred 0.50000, info 5.00e-01)" in first  # the fixed equal weights
    assert main("fashion_mnist", "ib_fmnist", [*SMOKE, "--out", str(out), "--no-figures"]) == 0
    assert "0 to train" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")} == stamps
    # ... and refuses to mix in runs made with other settings
    with pytest.raises(SystemExit):
        main("fashion_mnist", "ib_fmnist", [*SMOKE, "--out", str(out), "--epochs", "2"])
    assert "different settings" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--epochs", "0"], "positive integer"),
        (["--beta", "-1"], ">= 0"),
        (["--methods", "XIB"], "unknown method"),
        (["--attacks", "CW"], "unknown attack"),
        (["--seeds", "x"], "integer seed"),
    ],
)
def test_cli_rejects_bad_values(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Bad command-line values stop with a message that names them."""
    with pytest.raises(SystemExit) as exc:
        main("fashion_mnist", "ib_fmnist", [*args, "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@needs_fmnist
def test_info_plane_points_api() -> None:
    """The library entry point other code uses: (I(X;Z), I(Z;Y)) per epoch."""
    points = info_plane_points("VIB", epochs=2, train_limit=256, test_limit=32, curve_limit=16)
    assert len(points) == 2
    for ixz, izy in points:
        assert ixz > 0 and math.isfinite(izy) and izy <= math.log(10)


# ----------------------------------------------------------------------------- CIFAR-10


def _write_tiny_cifar(root: Path, per_batch: int = 12) -> None:
    """A tiny dataset in CIFAR-10's on-disk format: pickled batches plus batches.meta."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        data = rng.integers(0, 256, (per_batch, 3 * 32 * 32), dtype=np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "labels": labels, "data": data}, f)
    classes = [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": classes, "num_vis": 3072}, f)


def test_cifar10_real_loader_and_short_run(tmp_path: Path) -> None:
    """A hand-written CIFAR-10 goes through torchvision's CIFAR10 code and a 1-epoch run."""
    _write_tiny_cifar(tmp_path)
    with pytest.raises(RuntimeError, match="not found or corrupted"):
        datasets.CIFAR10(str(tmp_path), train=True)  # md5 sums differ from the real archive
    ds = UncheckedCIFAR10(str(tmp_path), train=True)
    assert isinstance(ds, datasets.CIFAR10) and len(ds) == 60 and ds.classes[9] == "truck"
    train, test = load_dataset("cifar10", tmp_path, verify_md5=False, download=False)
    assert train.x.shape == (60, 3, 32, 32) and test.x.shape == (12, 3, 32, 32)
    raw = np.asarray(ds.data)
    assert torch.equal(
        (train.x[0] * 255).round().to(torch.uint8).permute(1, 2, 0), torch.from_numpy(raw[0])
    )
    out = tmp_path / "out"
    args = [
        "--data-dir",
        str(tmp_path),
        "--no-verify-md5",
        "--epochs",
        "1",
        "--seeds",
        "0",
        "--methods",
        "RES18",
        "NIB",
        "MIB",
        "--train-limit",
        "all",
        "--test-limit",
        "all",
        "--curve-limit",
        "8",
        "--attacks",
        "FGSM",
        "Jitter",
        "--no-figures",
        "--no-progress",
        "--threads",
        "2",
        "--out",
        str(out),
    ]
    assert main("cifar10", "ib_cifar10", args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["meta"]["attack_settings"] == {"eps": 8 / 255, "alpha": 10 / 255, "steps": 10}
    for method in ("RES18", "NIB", "MIB"):
        for row in ("NONE", "FGSM", "Jitter"):
            assert 0.0 <= results["summary"][method][row]["mean"] <= 100.0
    assert results["runs"][0]["n_train"] == 60


@needs_fmnist
def test_resnet18_paper_backbone_trains() -> None:
    """The paper preset's ResNet-18 model trains and is attacked (a few images, CPU)."""
    cfg = RunConfig(
        backbone="resnet18",
        epochs=1,
        batch_size=32,
        train_limit=64,
        test_limit=16,
        curve_limit=8,
        curve_attacks=("FGSM",),
        attacks=("FGSM", "PGD"),
    )
    result = run("MIB", 0, cfg, progress=False)
    assert set(result["final"]) == {"NONE", "FGSM", "PGD"}
    assert all(0.0 <= v <= 100.0 for v in result["final"].values())
    assert result["epochs"][0]["optimizer"]["weights_0"] >= 0.0


@needs_fmnist
def test_weights_saved_then_attack_only_and_normalization_outside(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Training (bf16 autocast, one-cycle) saves the weights; --attack-only rebuilds the same
    models and reproduces the attacked accuracies exactly; --normalization outside and
    --eval-precision fp32 rerun only the evaluation; weights trained with other settings or
    missing weights are refused with a message naming the problem."""
    wdir = tmp_path / "weights"
    base = [
        *SMOKE,
        "--methods",
        "RES18",
        "MIB",
        "--attacks",
        "FGSM",
        "PGD",
        "--eps",
        "1/255",
        "8/255",
        "--eps-attacks",
        "FGSM",
        "--schedule",
        "onecycle",
        "--precision",
        "bf16",
        "--weights-dir",
        str(wdir),
        "--no-figures",
    ]
    trained = tmp_path / "trained"
    assert main("fashion_mnist", "ib_fmnist", [*base, "--out", str(trained)]) == 0
    assert sorted(p.name for p in wdir.iterdir()) == ["MIB__seed0.pt", "RES18__seed0.pt"]
    first = json.loads((trained / "results.json").read_text())
    lr = [e["lr_mean"] for e in first["runs"][0]["epochs"]]
    assert len(lr) == 1 and 0.0 < lr[0] < 1e-3  # one-cycle: the epoch mean is below the peak

    again = tmp_path / "again"
    assert main("fashion_mnist", "ib_fmnist", [*base, "--attack-only", "--out", str(again)]) == 0
    assert "2 to attack from saved weights" in capsys.readouterr().out
    second = json.loads((again / "results.json").read_text())
    for r1, r2 in zip(first["runs"], second["runs"], strict=True):
        assert r2["attack_only"] and r2["method"] == r1["method"]
        assert r2["budgets"] == r1["budgets"] and r2["epochs"] == r1["epochs"]

    outside = tmp_path / "outside"
    cmd = [*base, "--attack-only", "--normalization", "outside", "--out", str(outside)]
    assert main("fashion_mnist", "ib_fmnist", cmd) == 0
    res = json.loads((outside / "results.json").read_text())
    assert res["meta"]["config"]["normalization"] == "outside"
    for r in res["runs"]:
        clean = next(q for q in first["runs"] if q["method"] == r["method"])["final"]["NONE"]
        assert r["final"]["NONE"] == clean  # same function, no clamp without an attack
        assert 0.5 < r["clamped_fraction"] < 1.0  # background -0.81 and bright pixels > 1
        assert set(r["final"]) == {"NONE", "FGSM", "PGD", "CLAMP"}
    assert "| MIB | " in (outside / "table.md").read_text().split("CLAMP: torchattacks")[1]

    # the same bf16-trained weights attacked in float32: the clean accuracy barely moves
    cmd = [*base, "--attack-only", "--eval-precision", "fp32", "--out", str(tmp_path / "fp32")]
    assert main("fashion_mnist", "ib_fmnist", cmd) == 0
    fp32 = json.loads((tmp_path / "fp32" / "results.json").read_text())
    assert fp32["meta"]["config"]["eval_precision"] == "fp32"
    for r1, r2 in zip(first["runs"], fp32["runs"], strict=True):
        assert abs(r2["final"]["NONE"] - r1["final"]["NONE"]) <= 5.0

    other = [*base, "--attack-only", "--out", str(tmp_path / "other")]
    with pytest.raises(SystemExit):  # other training settings: named in the message
        main("fashion_mnist", "ib_fmnist", [*other, "--epochs", "2"])
    assert "epochs (1 saved, 2 here)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main("fashion_mnist", "ib_fmnist", [*other, "--weights-dir", str(tmp_path / "none")])
    assert "no saved weights" in capsys.readouterr().err

"""The gradient-normalized MIB variants on the IB benchmark: no hidden beta (docs/benchmarks.md).

Units of the options added for them (KL reduction, attack budgets, encoder-only Gram matrix,
test KL, per-step medians, default output directory) and a smoke test on real FashionMNIST.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from benchmarks import _common
from benchmarks import pareto_fronts as pf
from benchmarks.ibkit import attacks as atk
from benchmarks.ibkit.cli import build_parser, main, presets, resolve
from benchmarks.ibkit.data import DEBIAN_FASHION_MNIST, TensorData
from benchmarks.ibkit.losses import gaussian_kl, information_term
from benchmarks.ibkit.methods import get_method
from benchmarks.ibkit.models import build_model
from benchmarks.ibkit.report import summarize, summarize_information, table_markdown
from benchmarks.ibkit.train import encoder_parameters, evaluate_information, make_optimizer

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"

needs_fmnist = pytest.mark.skipif(
    not (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian package dataset-fashion-mnist not installed",
)

TINY = ["--seeds", "0", "--epochs", "1", "--train-limit", "256", "--test-limit", "64",
        "--curve-limit", "16", "--attacks", "FGSM", "--eps", "1/255", "8/255",
        "--threads", "2", "--no-progress", "--no-figures"]  # fmt: skip


# ----------------------------------------------------------------------------- units


def test_kl_reduction_mean_is_sum_over_k() -> None:
    torch.manual_seed(0)
    mu, sigma = torch.randn(5, 16), torch.rand(5, 16) + 0.1
    total = gaussian_kl(mu, sigma, "sum")
    assert gaussian_kl(mu, sigma) == total  # "sum" is the default (the paper's form)
    torch.testing.assert_close(gaussian_kl(mu, sigma, "mean"), total / 16)
    with pytest.raises(ValueError, match="unknown KL reduction"):
        gaussian_kl(mu, sigma, "max")


def test_attack_budgets_keep_the_paper_setting_first() -> None:
    assert atk.budget("fashion_mnist", 1 / 255) == atk.SETTINGS["fashion_mnist"]
    b = atk.budget("fashion_mnist", 8 / 255)
    assert (b.eps, b.alpha, b.steps) == (8 / 255, 2 / 255, 10)  # alpha = eps / 4
    assert atk.budget("cifar10", 8 / 255) == atk.SETTINGS["cifar10"]
    assert atk.parse_eps("8/255") == 8 / 255 and atk.parse_eps("0.5") == 0.5
    assert atk.eps_label(0.5 / 255) == "0.5/255" and atk.eps_label(8 / 255) == "8/255"
    for bad in ("x", "0", "2", "1/0"):
        with pytest.raises(ValueError):
            atk.parse_eps(bad)
    quick = presets("fashion_mnist")["quick"].config
    assert [atk.eps_label(b.eps) for b in quick.budgets()] == ["1/255", "2/255", "4/255", "8/255"]
    assert presets("cifar10")["quick"].config.budgets() == [atk.SETTINGS["cifar10"]]


def test_cli_options_and_default_names(tmp_path: Path) -> None:
    parser = build_parser("fashion_mnist", "ib_fmnist.py")
    args = parser.parse_args(["--kl-reduction", "mean", "--gram", "encoder", "--eps", "2/255"])
    preset, out = resolve(args, "fashion_mnist", "ib_fmnist")
    cfg = preset.config
    assert (cfg.kl_reduction, cfg.gram, cfg.eps) == ("mean", "encoder", (2 / 255,))
    # the default output is under runs/ (git-ignored), never the committed reference
    assert out == _common.RUNS / "ib_fmnist_quick_kl-mean_gram-encoder"
    args = parser.parse_args(["--preset", "resnet-cpu"])
    preset, out = resolve(args, "fashion_mnist", "ib_fmnist")
    assert out == _common.RUNS / "ib_fmnist_resnet-cpu"
    assert preset.config.backbone == "resnet18" and preset.seeds == (0,)
    assert preset.methods == ("RES18", "VIB", "MIB", "MIB-loss")
    assert preset.config.test_limit == 1000 and preset.config.train_limit == 10000
    with pytest.raises(SystemExit):
        parser.parse_args(["--eps", "3"])


def test_encoder_gram_and_scale_invariance_of_one_step() -> None:
    """One step on (CE, KL) and on (CE, KL / K): identical for MIB-l2 and MIB-loss."""
    x, y = torch.rand(32, 1, 28, 28), torch.randint(0, 10, (32,))

    def one_step(method: str, reduction: str, gram: str = "all") -> torch.Tensor:
        torch.manual_seed(0)
        model = build_model("cnn", 1, method, cnn_width=4, hidden=32, bottleneck=8)
        opt = make_optimizer(get_method(method), model, 1e-3, gram)
        torch.manual_seed(1)
        stats = model.forward_stats(x)
        ce = torch.nn.functional.cross_entropy(stats.logits, y)
        opt.step([ce, information_term(stats, reduction)])
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    for method in ("MIB-l2", "MIB-loss"):
        torch.testing.assert_close(one_step(method, "sum"), one_step(method, "mean"))
    assert not torch.allclose(one_step("MIB", "sum"), one_step("MIB", "mean"))
    model = build_model("cnn", 1, "MIB", cnn_width=4, hidden=32, bottleneck=8)
    enc = encoder_parameters(model)
    assert len(enc) == len(list(model.parameters())) - 2  # decoder weight and bias
    assert all(p is not model.decoder.weight for p in enc)
    assert one_step("MIB-loss", "sum", "encoder").isfinite().all()
    with pytest.raises(ValueError, match="unknown gram"):
        make_optimizer(get_method("MIB"), model, 1e-3, "decoder")


def test_test_information_is_the_summed_kl_of_the_eval_encoder() -> None:
    torch.manual_seed(0)
    model = build_model("cnn", 1, "VIB", cnn_width=4, hidden=32, bottleneck=8)
    td = TensorData(torch.rand(10, 1, 28, 28), torch.zeros(10, dtype=torch.long))
    value, kind = evaluate_information(model, td, batch_size=4)
    model.eval()
    stats = model.forward_stats(td.x)
    assert kind == "kl"
    expected = float(gaussian_kl(stats.mu, stats.sigma, "sum").detach())
    assert value == pytest.approx(expected, rel=1e-5)
    model.train()
    evaluate_information(model, td, batch_size=4)
    assert model.training  # restored to the mode it had
    det = build_model("cnn", 1, "RES18", cnn_width=4, hidden=32, bottleneck=8)
    assert evaluate_information(det, td, 4) == (None, None)


def test_report_budgets_test_kl_and_star_labels() -> None:
    runs = [
        {"method": "MIB-loss", "seed": s, "final": {"NONE": 80.0 + s}, "test_kl": 70.0 + s,
         "test_info_estimator": "kl",
         "budgets": [{"accuracy": {"NONE": 80.0 + s}}, {"accuracy": {"NONE": 80.0, "FGSM": 9.0}}]}
        for s in (0, 1)
    ]  # fmt: skip
    info = summarize_information(runs)
    assert info["MIB-loss"]["mean"] == pytest.approx(70.5)
    assert summarize(runs, 1)["MIB-loss"]["FGSM"]["mean"] == 9.0
    text = table_markdown(summarize(runs), ["MIB-loss"], rows=("NONE",), information=info)
    assert text.splitlines()[0] == "| Attack | MIB-loss * |"
    assert text.strip().splitlines()[-1] == "| test KL [nats] | 70.5 ± 0.71 |"


def test_pareto_fronts_writes_to_runs_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(_common, "RUNS", tmp_path / "runs")
    pf.main(["--seeds", "1", "--starts", "2", "--steps", "3", "--problems", "zdt1",
             "--methods", "linear", "--no-figures"])  # fmt: skip
    assert (tmp_path / "runs" / "pareto_fronts" / "results.json").is_file()
    assert "reference" in capsys.readouterr().out


# ----------------------------------------------------------------------------- real data


@needs_fmnist
def test_mib_loss_same_trajectory_with_kl_sum_and_mean(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """MIB-loss with --kl-reduction sum and mean: same test KL and accuracy (within 2 %).

    The first run goes to the default output directory (runs/, redirected to tmp_path here):
    it must not write into benchmarks/results, and it reports how it compares with the
    committed reference.
    """
    monkeypatch.setattr(_common, "RUNS", tmp_path / "runs")
    results_dir = BENCH / "results"
    before = {p: p.stat().st_mtime_ns for p in results_dir.rglob("*") if p.is_file()}
    assert main("fashion_mnist", "ib_fmnist", ["--methods", "MIB-loss", *TINY]) == 0
    printed = capsys.readouterr().out
    assert "reference" in printed
    after = {p: p.stat().st_mtime_ns for p in results_dir.rglob("*") if p.is_file()}
    assert after == before  # nothing written into the committed results
    out_sum = tmp_path / "runs" / "ib_fmnist_quick"
    out_mean = tmp_path / "mean"
    assert (out_sum / "results.json").is_file()
    assert (out_sum / "reference_comparison.md").is_file()
    args = ["--methods", "MIB-loss", "--kl-reduction", "mean", *TINY, "--out", str(out_mean)]
    assert main("fashion_mnist", "ib_fmnist", args) == 0
    a = json.loads((out_sum / "results.json").read_text())
    b = json.loads((out_mean / "results.json").read_text())
    assert a["meta"]["config"]["kl_reduction"] == "sum"
    assert b["meta"]["config"]["kl_reduction"] == "mean"
    kl_a, kl_b = a["test_kl"]["MIB-loss"]["mean"], b["test_kl"]["MIB-loss"]["mean"]
    assert math.isfinite(kl_a) and abs(kl_a - kl_b) <= 0.02 * kl_a
    acc_a = a["summary"]["MIB-loss"]["NONE"]["mean"]
    acc_b = b["summary"]["MIB-loss"]["NONE"]["mean"]
    assert abs(acc_a - acc_b) <= 0.02 * max(acc_a, 1.0)
    run = a["runs"][0]
    assert [x["label"] for x in run["budgets"]] == ["1/255", "8/255"]
    med = run["epochs"][0]["optimizer_median"]
    assert 0.0 <= med["weights_1"] <= 1.0 and med["coef_ratio"] > 0.0

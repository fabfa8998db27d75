"""The frugal exact Gram matrix and update (mograd.frugal) against J @ J.T and c @ J of
the default path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn import functional as F

from mograd.frugal import GramianEngine, weighted_gradients
from mograd.gramian import jacobian_rows

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


def reference(losses, params, shared=None):
    """G and the Jacobian of the default path (rows of J on shared first)."""
    shared = params if shared is None else shared
    rest = [p for p in params if all(p is not q for q in shared)]
    jac, _, _ = jacobian_rows(losses, [*shared, *rest], [], True)
    n = sum(p.numel() for p in shared)
    return jac[:, :n] @ jac[:, :n].T, jac, [*shared, *rest]


def assert_gram_close(g, ref, dtype):
    tol = TOL[dtype]
    scale = ref.abs().max()
    assert scale > 0
    err = float((g - ref).abs().max() / scale)
    assert err <= tol, f"relative error {err:.2e} > {tol:.0e}"


# ------------------------------------------------------------------ models
class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(10, 32), nn.ReLU(inplace=True), nn.Linear(32, 16), nn.Tanh()
        )
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.body(x))


class CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 4, 3)
        self.fc = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x):
        h = F.relu(self.bn(self.conv1(x)), inplace=True)
        return self.fc(self.conv2(h).flatten(1))


class Tied(nn.Module):
    """Weight tying both ways: two Linear layers share one weight, and the embedding
    matrix is reused outside its module as the output projection."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.lin = nn.Linear(8, 8)
        self.out = nn.Linear(8, 8)
        self.out.weight = self.lin.weight

    def forward(self, t):
        h = self.out(torch.tanh(self.lin(self.emb(t))))
        return h @ self.emb.weight.T


class Recurrent(nn.Module):
    """One Linear applied twice, an LSTM (several outputs) and a parent's own parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.Linear(5, 5)
        self.rnn = nn.LSTM(5, 4, batch_first=True)
        self.scale = nn.Parameter(torch.tensor(1.5))

    def forward(self, x):
        h = self.cell(torch.tanh(self.cell(x)))
        out, (hn, _) = self.rnn(h)
        return self.scale * out, hn


def mlp_case(batch):
    def losses(m, dtype):
        x = torch.randn(batch, 10, generator=torch.Generator().manual_seed(1)).to(dtype)
        out = m(x)
        return [out[:, 0].pow(2).mean(), out[:, 1].abs().mean(), F.softplus(out).sum()]

    return MLP, losses


def cnn_losses(m, dtype):
    x = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(2)).to(dtype)
    out = m(x)
    return [F.cross_entropy(out, torch.arange(6) % 5), out.pow(2).mean()]


def tied_losses(m, dtype):
    t = torch.randint(0, 20, (4, 5), generator=torch.Generator().manual_seed(3))
    o = m(t)
    return [o.logsumexp(-1).mean(), o[..., 0].pow(2).mean(), o.mean()]


def recurrent_losses(m, dtype):
    x = torch.randn(3, 6, 5, generator=torch.Generator().manual_seed(4)).to(dtype)
    out, hn = m(x)
    return [out.pow(2).mean(), hn.sum(), out[:, -1].abs().mean()]


CASES: dict[str, tuple[Callable[[], nn.Module], Callable]] = {
    "mlp_small_batch": mlp_case(8),  # the activation trick
    "mlp_large_batch": mlp_case(200),  # per-loss weight gradients
    "cnn": (CNN, cnn_losses),
    "tied": (Tied, tied_losses),
    "recurrent": (Recurrent, recurrent_losses),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", sorted(CASES))
def test_same_gram_and_update_as_rows(case, dtype):
    build, make_losses = CASES[case]
    torch.manual_seed(0)
    model = build().to(dtype)
    params = list(model.parameters())
    engine = GramianEngine(model, params)
    losses = make_losses(model, dtype)
    g, reached = engine.gram(losses)
    ref, jac, order = reference(losses, params)
    assert g.dtype == torch.float64 and g.shape == (len(losses), len(losses))
    assert_gram_close(g, ref, dtype)
    assert all(reached)
    c = torch.linspace(0.2, 1.0, len(losses), dtype=dtype)
    # the update from the records == c @ J, and so is one weighted backward pass
    assert_update_close(engine.update(c), c @ jac, dtype)
    assert_update_close(weighted_gradients(losses, c, order), c @ jac, dtype)
    engine.remove()


def assert_update_close(grads, ref, dtype):
    flat = torch.cat([gr.reshape(-1) for gr in grads])
    err = float((flat - ref).abs().max() / ref.abs().max())
    assert err <= TOL[dtype], f"relative error {err:.2e} > {TOL[dtype]:.0e}"


def test_plan_uses_the_cheap_paths():
    torch.manual_seed(0)
    model = MLP()
    with GramianEngine(model, list(model.parameters())) as engine:
        engine.gram(mlp_case(8)[1](model, torch.float32))
        kinds = [kind for kind, _ in engine.last_plan]
        assert kinds.count("linear_weight:trick") == 2 and kinds.count("linear_bias") == 3
        assert "direct" not in kinds
        model = Tied()
        engine2 = GramianEngine(model, list(model.parameters()))
        engine2.gram(tied_losses(model, torch.float32))
        plan = dict(engine2.last_plan)
        assert plan["direct"] == 20 * 8  # the embedding used outside its module
        assert any(k.startswith("linear_weight") for k in plan)  # the shared Linear weight
        engine2.remove()
        model = Recurrent()
        engine3 = GramianEngine(model, list(model.parameters()))
        engine3.gram(recurrent_losses(model, torch.float32))
        plan = dict(engine3.last_plan)
        assert plan["local"] == sum(p.numel() for p in model.rnn.parameters())  # the LSTM
        assert plan["direct"] == 1  # the container's own scale
        engine3.remove()


def test_partial_losses_and_shared_subset():
    torch.manual_seed(0)
    enc, dec, aux = nn.Linear(6, 12), nn.Linear(12, 3), nn.Linear(12, 2)
    extra = nn.Linear(12, 2)  # reached by no loss
    mods = nn.ModuleList([enc, dec, aux, extra])
    params = list(mods.parameters())
    engine = GramianEngine(mods, params)
    for shared in (None, list(enc.parameters()), [dec.weight, enc.bias]):
        x = torch.randn(10, 6)
        h = torch.relu(enc(x))
        losses = [dec(h).pow(2).mean(), h.pow(2).mean(), aux(h).sum()]  # the 2nd: encoder only
        g, reached = engine.gram(losses, shared=shared)
        ref, _, _ = reference(losses, params, shared)
        assert_gram_close(g, ref, torch.float32)
        assert reached == [True] * 6 + [False] * 2
    engine.remove()


def test_update_of_task_parameters_and_extras_then_the_graph_is_freed():
    """Task-specific parameters and a leaf outside ``params`` receive the update but do
    not enter ``G``; without ``retain_graph`` the step frees the graph (as
    ``loss.backward()`` would) and the update can be formed once."""
    torch.manual_seed(0)
    enc, dec, aux = nn.Linear(6, 12), nn.Linear(12, 3), nn.Linear(12, 2)
    lstm = nn.LSTM(3, 40, batch_first=True)  # first module, more parameters than outputs
    mods = nn.ModuleList([lstm, enc, dec, aux])
    params = [*lstm.parameters(), *enc.parameters(), *dec.parameters(), *aux.parameters()]
    shared = [*lstm.parameters(), *enc.parameters()]
    engine = GramianEngine(mods, params)
    shift = torch.zeros(6, requires_grad=True)  # leaves outside params
    gate = nn.Parameter(torch.tensor(0.7))
    out, _ = lstm(torch.randn(5, 4, 3))
    h = torch.relu(enc(out[:, -1, :6] + shift)) * gate
    losses = [dec(h).pow(2).mean(), h.pow(2).mean(), aux(h).sum()]
    extras = [shift, gate]
    jac, _, blocks = jacobian_rows(losses, params, extras, True)
    n = sum(p.numel() for p in shared)
    c = torch.tensor([0.5, 0.3, 0.2])
    g, reached = engine.gram(losses, params, shared, extras=extras, retain_graph=False)
    assert_gram_close(g, jac[:, :n] @ jac[:, :n].T, torch.float32)
    assert all(reached)
    assert dict(engine.last_plan)["local"] == sum(p.numel() for p in lstm.parameters())
    grads = engine.update(c)
    assert_update_close(grads[: len(params)], c @ jac, torch.float32)
    for got, blk in zip(grads[len(params) :], blocks):
        torch.testing.assert_close(got.reshape(-1), c @ blk, rtol=1e-5, atol=1e-7)
    with pytest.raises(RuntimeError, match="already ran and freed the graph"):
        engine.update(c)
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        losses[0].backward()  # every saved tensor was freed
    engine.clear()
    with pytest.raises(RuntimeError, match="needs a gram"):
        engine.update(c)
    engine.remove()


def test_a_local_module_the_passes_run_through_is_direct_when_the_graph_is_freed():
    torch.manual_seed(0)
    model = Recurrent()
    params = list(model.parameters())
    for retain, kind in ((True, "local"), (False, "direct")):
        engine = GramianEngine(model, params)
        losses = recurrent_losses(model, torch.float32)
        ref, jac, _ = reference(losses, params)
        g, _ = engine.gram(losses, retain_graph=retain)
        plan = dict(engine.last_plan)
        assert kind in plan and plan.get("local", 0) == (kind == "local") * sum(
            p.numel() for p in model.rnn.parameters()
        )
        assert_gram_close(g, ref, torch.float32)
        c = torch.tensor([0.2, 0.5, 0.3])
        assert_update_close(engine.update(c), c @ jac, torch.float32)
        engine.remove()


def test_no_weight_gradient_is_formed_for_linear_layers():
    """Pass counts: in one wrapper step the Linear weights of an MLP at a small batch
    never get a gradient from autograd (G and the update come from the records), while a
    parameter used outside its module gets one per loss."""
    from mograd import MOWrapper

    torch.manual_seed(0)
    model = MLP()
    scale = nn.Parameter(torch.tensor(1.0))
    holder = nn.ParameterList([scale])
    params = [*model.parameters(), scale]
    opt = MOWrapper(torch.optim.SGD(params, lr=0.1), jacobian="gramian", modules=[model, holder])
    counts = {id(p): 0 for p in params}

    def counter(key: int):
        def hook(grad):
            counts[key] += 1

        return hook

    for p in params:
        p.register_hook(counter(id(p)))
    out = model(torch.randn(8, 10)) * scale
    opt.step([out[:, 0].pow(2).mean(), out[:, 1].abs().mean(), F.softplus(out).sum()])
    assert all(counts[id(p)] == 0 for p in model.parameters())
    assert counts[id(scale)] == 3  # direct: one gradient per loss, no weighted pass
    assert all(p.grad is not None for p in params)


def test_hooks_records_and_removal():
    model = MLP()
    engine = GramianEngine(model, list(model.parameters()))
    with torch.no_grad():
        model(torch.randn(2, 10))
    assert engine._records == []  # nothing recorded without grad mode
    out = model(torch.randn(2, 10))
    assert len(engine._records) == 3
    engine.gram([out.sum(), out.pow(2).sum()])
    assert engine._records == []  # consumed
    engine.remove()
    model(torch.randn(2, 10))
    assert engine._records == []


def test_bad_input():
    model = MLP()
    other = nn.Linear(3, 3)
    with pytest.raises(ValueError, match=r"params\[6\].*belong to none of the modules"):
        GramianEngine(model, [*model.parameters(), other.weight])
    with pytest.raises(TypeError, match="nn.Module"):
        GramianEngine([model, "head"])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="nn.Module or a sequence"):
        GramianEngine(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="modules is empty"):
        GramianEngine([])
    engine = GramianEngine(model, list(model.parameters()))
    out = model(torch.randn(4, 10))
    with pytest.raises(ValueError, match=r"shared\[0\].*not one of params"):
        engine.gram([out.sum(), out.mean()], shared=[other.weight])
    out = model(torch.randn(4, 10))
    stray = other(torch.randn(2, 3)).sum()
    with pytest.raises(ValueError, match=r"losses\[1\] does not depend"):
        engine.gram([out.sum(), stray])
    with pytest.raises(ValueError, match="losses is empty"):
        engine.gram([])
    out = model(torch.randn(4, 10))
    with pytest.raises(ValueError, match=r"extras\[0\].*is one of params"):
        engine.gram([out.sum(), out.mean()], extras=[model.head.weight])
    out = model(torch.randn(4, 10))
    engine.gram([out.sum(), out.mean()])
    with pytest.raises(ValueError, match="coefficients has 3 entries for 2 losses"):
        engine.update(torch.ones(3))
    with pytest.raises(ValueError, match="scalar"):
        engine.gram([model(torch.randn(4, 10))])
    engine.remove()
    with pytest.raises(ValueError, match="pass params"):
        GramianEngine(model).gram([model(torch.randn(1, 10)).sum()])


def test_overflowing_float32_gram_stays_finite():
    lin = nn.Linear(4, 2)
    with torch.no_grad():
        lin.weight.fill_(1e20)
    engine = GramianEngine(lin, list(lin.parameters()))
    out = lin(torch.full((3, 4), 1e10))
    g, _ = engine.gram([out[:, 0].sum(), out[:, 1].sum()])  # gradients ~1e10: G ~1e21..
    assert torch.isfinite(g).all()
    nan = lin(torch.full((3, 4), float("nan")))
    g, _ = engine.gram([nan[:, 0].sum(), nan[:, 1].sum()])
    assert not torch.isfinite(g).all()  # NaN gradients reach G (the optimizer's NaN policy)
    engine.remove()


# ------------------------------------------------------------------ memory
MEMORY_CHILD = textwrap.dedent(
    """
    import json, torch
    from torch import nn
    from mograd.frugal import GramianEngine
    from mograd.gramian import jacobian_rows
    torch.set_num_threads(1)
    torch.manual_seed(0)
    K = 8
    model = nn.Sequential(*[nn.Linear(1024, 1024) for _ in range(6)])  # P = 6.3M
    params = list(model.parameters())
    engine = GramianEngine(model, params)
    def kib(field):
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1])
    def peak(fn):
        out = model(torch.randn(64, 1024))
        losses = [out[:, i].pow(2).mean() for i in range(K)]
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the high-water mark to the current RSS
        before = kib("VmRSS")
        fn(losses)
        return (kib("VmHWM") - before) / 1024
    def rows(losses):
        jac, _, _ = jacobian_rows(losses, params, [], True)
        return jac @ jac.T
    # frugal first: the rows path's 192 MiB buffer is a fresh mapping either way
    result = {"frugal": peak(engine.gram), "rows": peak(rows)}
    result["p"] = sum(p.numel() for p in params)
    print(json.dumps(result))
    """
)


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc")
def test_peak_memory_does_not_grow_like_k_times_p():
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_CHILD],
        capture_output=True, text=True, check=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    res = json.loads(out.stdout.strip().splitlines()[-1])
    jac_mib = 8 * res["p"] * 4 / 2**20  # 192 MiB
    assert res["rows"] > 0.8 * jac_mib, res  # the measurement sees the k x P buffer
    assert res["frugal"] < 0.2 * jac_mib, res  # k x P would be 1.0


# ------------------------------------------------------------------ distributed
BATCH = 16


def dist_model() -> nn.Module:
    torch.manual_seed(0)
    return CNNSmall().double()


class CNNSmall(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)  # fewer parameters than outputs: direct
        self.wide = nn.Conv2d(3, 16, 4)  # more parameters than outputs: local
        self.fc1 = nn.Linear(16, 8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x):
        h = torch.tanh(self.wide(torch.tanh(self.conv(x))))
        h = torch.tanh(self.fc1(h.flatten(1)))
        return h, self.fc2(h)


def dist_data():
    gen = torch.Generator().manual_seed(5)
    return torch.randn(BATCH, 1, 6, 6, generator=gen, dtype=torch.float64)


def dist_losses(model, x):
    h, out = model(x)
    return [out[:, 0].pow(2).mean(), h.pow(2).mean(), F.softplus(out).mean()]  # 2nd: no fc2


def dist_worker(rank: int, world: int, init_file: str, out_dir: str, mode: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model = dist_model()
        params = list(model.parameters())
        engine = GramianEngine(model, params, bucket_elements=50)  # several collectives
        half = BATCH // world
        x = dist_data()[rank * half : (rank + 1) * half]
        if mode == "ddp":
            ddp = nn.parallel.DistributedDataParallel(model)
            with ddp.no_sync():  # the engine averages what it needs itself
                losses = dist_losses(ddp, x)
        else:
            losses = dist_losses(model, x)
        g, reached = engine.gram(losses)
        kinds = {kind for kind, _ in engine.last_plan}
        assert {"local", "direct", "linear_weight:outputs", "linear_bias"} <= kinds, kinds
        c = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
        update = engine.update(c)  # from the records, averaged over the ranks
        grads = weighted_gradients(losses, c, params, reached=reached)
        torch.save(
            {"g": g, "grads": grads, "update": update, "reached": reached},
            os.path.join(out_dir, f"r{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("mode", ["plain", "ddp"])
def test_two_gloo_ranks_match_one_process(tmp_path, mode):
    model = dist_model()
    params = list(model.parameters())
    losses = dist_losses(model, dist_data())
    ref, jac, _ = reference(losses, params)
    c = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    mp.start_processes(
        dist_worker, args=(2, str(tmp_path / "init"), str(tmp_path), mode), nprocs=2, join=True,
        start_method="spawn" if sys.platform != "linux" else "fork",
    )
    for r in range(2):
        out = torch.load(tmp_path / f"r{r}.pt", weights_only=True)
        assert_gram_close(out["g"], ref, torch.float64)
        for key in ("grads", "update"):
            flat = torch.cat([g.reshape(-1) for g in out[key]])
            torch.testing.assert_close(flat, c @ jac, rtol=1e-10, atol=1e-12)
        assert all(out["reached"])


# ------------------------------------------------------------------ the memory benchmark
def test_step_memory_cli_and_table(capsys):

    from benchmarks import step_memory

    with pytest.raises(SystemExit) as exc:
        step_memory.parse_args(["--help"])
    assert exc.value.code == 0 and "frugal" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        step_memory.parse_args(["--k", "3"])  # k must be even
    if os.path.exists("/proc/self/clear_refs"):  # the CPU measurement needs Linux
        assert step_memory.parse_args([]).out.parts[-2:] == ("runs", "step_memory")
    per = {
        m: {"steady_mib": v, "first_mib": 2 * v, "steady_ratio": v / 10.0}
        for m, v in {"adam": 10.0, "frugal": 11.0}.items()
    }
    table = step_memory.markdown_table([{"k": 8, "methods": per}], ["adam", "frugal"])
    assert "| 8 | 10 (1.00x) [20] | 11 (1.10x) [22] |" in table
    losses, z = step_memory.make_losses(
        _tiny_net(), torch.rand(8, 4),
        torch.randint(0, 3, (8,)), 4,
    )
    assert len(losses) == 4 and z.shape == (8, 2)


def _tiny_net() -> nn.Module:
    net = nn.Module()
    net.encoder = nn.Linear(4, 2)
    net.head = nn.Linear(2, 3)
    return net

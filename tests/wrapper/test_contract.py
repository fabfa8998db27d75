"""The drop-in contract: wherever plain PyTorch works, mograd works and gives its answer.

Each test names the item of the contract it covers (copies, .grad layout, closures,
parameters added later, leaves outside the optimizer, dtypes, non-finite coefficients,
accumulation, sparse gradients, and the smaller ones). Where plain PyTorch defines the
answer, the test compares with it.
"""

from __future__ import annotations

import copy
import io
import pickle
import warnings

import pytest
import torch
from torch import nn

from mograd import MOWrapper, NonFiniteError, min_norm_weights
from mograd.weightings import Constant


def mlp(seed: int = 0, dtype: torch.dtype = torch.float64) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2)).to(dtype)


def two_losses(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    out = model(x)
    return [out[:, 0].pow(2).mean(), (out[:, 1] - 1).pow(2).mean() + out[:, 0].mean()]


def per_loss_grads(losses, leaves) -> list[torch.Tensor]:
    rows = []
    for loss in losses:
        gs = torch.autograd.grad(loss, leaves, retain_graph=True, allow_unused=True)
        rows.append(torch.cat([torch.zeros(p.numel(), dtype=p.dtype) if g is None else g.reshape(-1) for p, g in zip(leaves, gs)]))
    return rows


# 1. copies ------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["deepcopy", "pickle", "torch.save"])
@pytest.mark.parametrize("shared", [False, True])
def test_copy_of_model_and_optimizer_steps_identically(how, shared) -> None:
    model = mlp()
    sp = list(model[0].parameters()) if shared else None
    opt = MOWrapper(torch.optim.Adam(model.parameters(), lr=1e-2), shared_params=sp)
    x = torch.randn(16, 5, dtype=torch.float64)
    opt.step(two_losses(model, x))
    bundle = {"model": model, "opt": opt}
    if how == "deepcopy":
        twin = copy.deepcopy(bundle)
    elif how == "pickle":
        twin = pickle.loads(pickle.dumps(bundle))
    else:
        buf = io.BytesIO()
        torch.save(bundle, buf)
        buf.seek(0)
        twin = torch.load(buf, weights_only=False)
    for _ in range(3):
        x = torch.randn(16, 5, dtype=torch.float64)
        opt.zero_grad()
        twin["opt"].zero_grad()
        a = opt.step(two_losses(model, x))
        b = twin["opt"].step(two_losses(twin["model"], x))
        assert torch.equal(a.weights, b.weights)
        assert not torch.equal(a.weights, torch.tensor([0.5, 0.5], dtype=a.weights.dtype))
    for p, q in zip(model.parameters(), twin["model"].parameters()):
        assert torch.equal(p, q)


# 2. .grad as after loss.backward() ----------------------------------------------------
class Aliased(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(3, 3, dtype=torch.float64))
        self.dw = nn.Parameter(torch.zeros(3, 3, dtype=torch.float64))

    def forward(self, x):
        return x @ (self.w + self.dw)


@pytest.mark.parametrize("mode", ["single", "representation"])
def test_aliased_parameters_get_their_own_grad(mode) -> None:
    torch.manual_seed(0)
    ref, mod = Aliased(), Aliased()
    mod.load_state_dict(ref.state_dict())
    opt = MOWrapper(torch.optim.SGD(mod.parameters(), lr=0.1))
    for _ in range(2):  # accumulation over two backward calls
        x = torch.randn(4, 3, dtype=torch.float64)
        ref(x).pow(2).mean().backward()
        z = mod(x)
        if mode == "single":
            opt.backward([z.pow(2).mean()])
        else:
            out = z.pow(2)
            # two losses that are the halves of the reference loss, in representation mode
            info = opt.backward([out[:, :2].sum() / 12, out[:, 2:].sum() / 12], features=z)
            assert info.coefficients.shape == (2,)
    assert mod.w.grad.data_ptr() != mod.dw.grad.data_ptr()
    if mode == "single":
        torch.testing.assert_close(mod.w.grad, ref.w.grad, rtol=0, atol=0)
        torch.testing.assert_close(mod.dw.grad, ref.dw.grad, rtol=0, atol=0)
    ref_norm = nn.utils.clip_grad_norm_(ref.parameters(), 0.5)
    mod_norm = nn.utils.clip_grad_norm_(mod.parameters(), 0.5)
    if mode == "single":
        torch.testing.assert_close(mod_norm, ref_norm, rtol=0, atol=0)
        torch.testing.assert_close(mod.w.grad, ref.w.grad, rtol=0, atol=0)
    torch.testing.assert_close(mod.w.grad, mod.dw.grad, rtol=0, atol=0)


def test_stride_zero_gradient_accumulates_and_clips() -> None:
    p = nn.Parameter(torch.randn(4, 5))
    q = nn.Parameter(p.detach().clone())
    opt = MOWrapper(torch.optim.SGD([p], lr=0.1))
    for _ in range(2):
        opt.backward([p.sum()])
        q.sum().backward()
    nn.utils.clip_grad_norm_([p], 1.0)
    nn.utils.clip_grad_norm_([q], 1.0)
    assert p.grad.stride() == q.grad.stride() == p.stride()
    assert torch.equal(p.grad, q.grad)


@pytest.mark.parametrize("mode", ["single", "exact", "representation"])
def test_channels_last_weight_keeps_its_layout(mode) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3).to(memory_format=torch.channels_last)
    ref = copy.deepcopy(conv)
    x = torch.randn(2, 3, 6, 6).to(memory_format=torch.channels_last)
    opt = MOWrapper(torch.optim.SGD(conv.parameters(), lr=0.1))
    z = conv(x)
    losses = [z.pow(2).mean(), z.mean()]
    if mode == "single":
        opt.backward(losses[:1])
    else:
        opt.backward(losses, features=z if mode == "representation" else None)
    ref(x).pow(2).mean().backward()
    assert conv.weight.grad.stride() == ref.weight.grad.stride() == conv.weight.stride()


# 3. closures ----------------------------------------------------------------------------
def test_positional_and_keyword_closure_match_explicit_losses() -> None:
    results = []
    for style in ("losses", "positional", "keyword"):
        model = mlp()
        opt = MOWrapper(torch.optim.SGD(model.parameters(), lr=0.1))
        x = torch.randn(16, 5, dtype=torch.float64)

        def closure(model=model, opt=opt, x=x):
            opt.zero_grad()
            return two_losses(model, x)

        if style == "losses":
            opt.zero_grad()
            info = opt.step(two_losses(model, x))
            ret = (info.coefficients * info.losses).sum()
        elif style == "positional":
            ret = opt.step(closure)
        else:
            ret = opt.step(closure=closure)
        assert opt.last_info is not None and opt.steps == 1
        results.append((ret, [p.detach().clone() for p in model.parameters()]))
    for ret, params in results[1:]:
        assert torch.equal(ret, results[0][0])
        assert all(torch.equal(a, b) for a, b in zip(params, results[0][1]))


def test_lbfgs_single_loss_equals_plain_lbfgs() -> None:
    x = torch.randn(32, 5, dtype=torch.float64)
    plain, wrapped = mlp(), mlp()
    opt_p = torch.optim.LBFGS(plain.parameters(), lr=0.5, max_iter=5, history_size=4)
    opt_w = MOWrapper(torch.optim.LBFGS(wrapped.parameters(), lr=0.5, max_iter=5, history_size=4))

    def closure_p():
        opt_p.zero_grad()
        loss = two_losses(plain, x)[0]
        loss.backward()
        return loss

    def closure_w():
        opt_w.zero_grad()
        return [two_losses(wrapped, x)[0]]

    for _ in range(3):
        rp = opt_p.step(closure_p)
        rw = opt_w.step(closure_w)
        assert torch.equal(rp, rw)
    for a, b in zip(plain.parameters(), wrapped.parameters()):
        assert torch.equal(a, b)
    assert opt_w.steps == 3


def test_lbfgs_two_losses_reevaluates_with_the_multi_objective_backward() -> None:
    model = mlp()
    opt = MOWrapper(torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=4), weights="mgda")
    x = torch.randn(32, 5, dtype=torch.float64)
    calls = []

    def closure():
        opt.zero_grad()
        calls.append(1)
        return two_losses(model, x)

    first = opt.step(closure)
    assert len(calls) > 1  # LBFGS re-evaluated, each time through mograd
    final = (opt.last_info.coefficients * torch.stack([v.detach() for v in two_losses(model, x)])).sum()
    assert float(final) < float(first)


def test_lbfgs_without_closure_is_rejected_before_any_change() -> None:
    model = mlp()
    opt = MOWrapper(torch.optim.LBFGS(model.parameters()))
    losses = two_losses(model, torch.randn(4, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="closure"):
        opt.step(losses)
    assert all(p.grad is None for p in model.parameters()) and opt.steps == 0


# 4. parameters added later --------------------------------------------------------------
@pytest.mark.parametrize("where", ["inner", "wrapper"])
def test_parameters_added_later_train_and_enter_the_gram_matrix(where) -> None:
    model = mlp()
    inner = torch.optim.SGD(model[0].parameters(), lr=0.1)
    opt = MOWrapper(inner)
    group = {"params": list(model[2].parameters())}
    (inner if where == "inner" else opt).add_param_group(group)
    x = torch.randn(8, 5, dtype=torch.float64)
    losses = two_losses(model, x)
    rows = per_loss_grads(losses, list(model.parameters()))
    info = opt.backward(losses)
    torch.testing.assert_close(info.grad_norms, torch.stack([r.norm() for r in rows]))
    assert all(p.grad is not None for p in model[2].parameters())


# 5. leaves the wrapped optimizer does not hold -----------------------------------------
def test_leaves_outside_the_optimizer_get_the_combined_gradient() -> None:
    model = mlp()
    x = torch.randn(8, 5, dtype=torch.float64, requires_grad=True)
    opt = MOWrapper(torch.optim.SGD(model[0].parameters(), lr=0.1), weights="mgda")
    losses = two_losses(model, x)
    outside = [*model[2].parameters(), x]
    rows = per_loss_grads(losses, outside)
    enc_rows = per_loss_grads(losses, list(model[0].parameters()))
    fired = []
    for p in model.parameters():
        p.register_post_accumulate_grad_hook(lambda t, fired=fired: fired.append(id(t)))
    info = opt.backward(losses)
    expected = info.coefficients[0] * rows[0] + info.coefficients[1] * rows[1]
    got = torch.cat([t.grad.reshape(-1) for t in outside])
    torch.testing.assert_close(got, expected)
    # only the optimizer's parameters form the Gram matrix
    torch.testing.assert_close(info.grad_norms, torch.stack([r.norm() for r in enc_rows]))
    assert sorted(fired) == sorted(id(p) for p in model.parameters())  # once each


# 6. no false NonFiniteError -------------------------------------------------------------
def test_fp16_single_loss_with_large_finite_gradient() -> None:
    p = nn.Parameter(torch.zeros(4096, dtype=torch.float16))
    opt = MOWrapper(torch.optim.SGD([p], lr=1e-6))
    info = opt.step([(p * 2000.0).sum()])  # loss 0, gradient 2000 everywhere: norm 128000
    assert torch.isfinite(info.grad_norms).all() and torch.isfinite(p).all()


def test_fp16_representation_mode() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(512, 512).half()
    head = nn.Linear(512, 2).half()
    opt = MOWrapper(torch.optim.SGD([*lin.parameters(), *head.parameters()], lr=1e-8))
    z = lin(torch.full((64, 512), 3.0, dtype=torch.float16))
    out = head(z)
    info = opt.step([out[:, 0].sum() * 50, out[:, 1].sum() * 50], features=z)
    assert not info.skipped and all(torch.isfinite(q.grad).all() for q in lin.parameters())


def test_float32_gram_overflow_for_finite_gradients() -> None:
    model = mlp(dtype=torch.float32)
    x = torch.randn(16, 5)
    base = MOWrapper(torch.optim.SGD(model.parameters(), lr=0.0), power=1.0, mu=None)
    w_ref = base.backward(two_losses(model, x)).weights
    model.zero_grad()
    big = MOWrapper(torch.optim.SGD(model.parameters(), lr=0.0), power=1.0, mu=None)
    info = big.backward([loss * 1e20 for loss in two_losses(model, x)])  # G entries ~ 1e40
    torch.testing.assert_close(info.weights, w_ref.to(info.weights.dtype), rtol=1e-4, atol=1e-6)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_mixed_dtype_losses_keep_their_values() -> None:
    model = mlp(dtype=torch.float32)
    out = model(torch.randn(8, 5))
    l16 = out[:, 0].pow(2).mean().half()
    l32 = out[:, 1].mean() * 0 + 100000.2
    opt = MOWrapper(torch.optim.SGD(model.parameters(), lr=0.0))
    info = opt.backward([l16, l32])
    assert info.losses.dtype == torch.float32 and float(info.losses[1]) == pytest.approx(100000.2)
    assert torch.isfinite(info.coefficients).all()


# 7. non-finite coefficients ---------------------------------------------------------------
def test_huge_finite_loss_gives_finite_coefficients() -> None:
    model = mlp(dtype=torch.float32)
    out = model(torch.randn(8, 5))
    opt = MOWrapper(torch.optim.SGD(model.parameters(), lr=0.0))
    info = opt.backward([out[:, 0].pow(2).mean() + 3e38, out[:, 1].pow(2).mean()])
    assert torch.isfinite(info.coefficients).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_nonfinite_coefficients_are_caught_by_the_policy() -> None:
    model = mlp()
    out = model(torch.randn(8, 5, dtype=torch.float64))
    opt = MOWrapper(torch.optim.SGD(model.parameters(), lr=0.1), weights=(0.5, 0.5), mu=1e-300)
    with pytest.raises(NonFiniteError, match="coefficients"):
        opt.backward([out[:, 0].pow(2).mean() + 1e300, out[:, 1].pow(2).mean()])
    assert all(p.grad is None for p in model.parameters())


# 8. gradient accumulation ------------------------------------------------------------------
@pytest.mark.parametrize("scaler", [False, True])
def test_four_micro_batches_equal_one_batch(scaler) -> None:
    x = torch.randn(128, 5, dtype=torch.float64)
    full, micro = mlp(), mlp()
    opt_f = MOWrapper(torch.optim.SGD(full.parameters(), lr=0.1))
    opt_m = MOWrapper(torch.optim.SGD(micro.parameters(), lr=0.1))
    gs = torch.amp.GradScaler("cpu", init_scale=1024.0) if scaler else None
    info_f = opt_f.backward(two_losses(full, x), grad_scaler=gs)
    for xm in x.chunk(4):
        opt_m.accumulate([loss / 4 for loss in two_losses(micro, xm)], grad_scaler=gs)
    info_m = opt_m.backward()
    torch.testing.assert_close(info_m.weights, info_f.weights, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(info_m.losses, info_f.losses, rtol=1e-10, atol=1e-12)
    for a, b in zip(full.parameters(), micro.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-10, atol=1e-12)
    opt_m.step()
    assert opt_m.steps == 1


def test_nonfinite_micro_batch_skips_the_whole_accumulated_step() -> None:
    model = mlp()
    before = [p.detach().clone() for p in model.parameters()]
    opt = MOWrapper(torch.optim.Adam(model.parameters(), lr=0.1), nonfinite="skip")
    xs = torch.randn(3, 8, 5, dtype=torch.float64)
    xs[1, 0, 0] = float("nan")  # the middle micro-batch
    for x in xs:
        opt.accumulate([loss / 3 for loss in two_losses(model, x)])
    info = opt.step()
    assert info.skipped and opt.steps == 0 and opt.state_dict()["mograd"]["skipped"] == 1
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.grad is None for p in model.parameters()) and len(opt.state) == 0


def test_step_counter_counts_optimizer_steps() -> None:
    model = mlp()
    opt = MOWrapper(torch.optim.SGD(model.parameters(), lr=0.1))
    x = torch.randn(8, 5, dtype=torch.float64)
    opt.backward(two_losses(model, x[:4]))
    opt.backward(two_losses(model, x[4:]))
    opt.step()
    assert opt.steps == 1


# 9. sparse gradients -----------------------------------------------------------------------
def test_sparse_embedding_gradients_are_combined_densely() -> None:
    torch.manual_seed(0)
    emb = nn.Embedding(10, 4, sparse=True).double()
    idx = torch.tensor([1, 3, 3, 7])
    opt = MOWrapper(torch.optim.Adam(emb.parameters(), lr=0.1), weights="mgda")
    e = emb(idx)
    losses = [e[:, 0].pow(2).sum(), (e[:, 1] - 1).pow(2).sum()]
    rows = [torch.autograd.grad(loss, emb.weight, retain_graph=True)[0].to_dense().reshape(-1) for loss in losses]
    info = opt.step(losses)
    expected = info.coefficients[0] * rows[0] + info.coefficients[1] * rows[1]
    assert not emb.weight.grad.is_sparse
    torch.testing.assert_close(emb.weight.grad.reshape(-1), expected)


def test_sparse_adam_is_rejected_up_front() -> None:
    emb = nn.Embedding(10, 4, sparse=True)
    with pytest.raises(ValueError, match="SparseAdam"):
        MOWrapper(torch.optim.SparseAdam(emb.parameters()))


def test_single_sparse_loss_is_plain_backward() -> None:
    emb = nn.Embedding(10, 4, sparse=True)
    ref = copy.deepcopy(emb)
    idx = torch.tensor([2, 2, 5])
    MOWrapper(torch.optim.SGD(emb.parameters(), lr=0.1)).backward([emb(idx).sum()])
    ref(idx).sum().backward()
    assert emb.weight.grad.is_sparse
    assert torch.equal(emb.weight.grad.to_dense(), ref.weight.grad.to_dense())


# 10. the smaller ones ----------------------------------------------------------------------
def test_fixed_weights_of_wrong_length_are_rejected_before_backward() -> None:
    model = mlp()
    opt = MOWrapper(torch.optim.SGD(model.parameters(), lr=0.1), weights=Constant([1.0, 1.0, 1.0]))
    losses = two_losses(model, torch.randn(4, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="3 entries but 2 losses"):
        opt.backward(losses)
    sum(losses).backward()  # the graph was not consumed
    assert all(p.grad is not None for p in model.parameters())


def test_loading_a_checkpoint_with_other_options_warns() -> None:
    model = mlp()
    sd = MOWrapper(torch.optim.SGD(model.parameters(), lr=0.1), mu=0.5).state_dict()
    assert sd["mograd"]["config"]["mu"] == 0.5
    other = MOWrapper(torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.warns(UserWarning, match=r"mu: 0.5 -> 0.2"):
        other.load_state_dict(sd)
    same = MOWrapper(torch.optim.SGD(model.parameters(), lr=0.1), mu=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same.load_state_dict(sd)


def test_representation_mode_under_no_grad_says_what_to_do() -> None:
    model = mlp()
    opt = MOWrapper(torch.optim.SGD(model.parameters(), lr=0.1))
    with torch.no_grad():
        z = model[0](torch.randn(4, 5, dtype=torch.float64))
        with pytest.raises(ValueError, match=r"torch.no_grad\(\)"):
            opt.backward([z.sum(), z.mean()], features=z)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_identical_gradients_get_equal_weights_for_every_k(k) -> None:
    g = torch.randn(6, dtype=torch.float64)
    gram = torch.outer(torch.ones(k, dtype=torch.float64), torch.ones(k, dtype=torch.float64)) * (g @ g)
    torch.testing.assert_close(min_norm_weights(gram), torch.full((k,), 1.0 / k, dtype=torch.float64))


def test_mograd_math_does_not_run_under_autocast() -> None:
    model = mlp(dtype=torch.float32)
    x = torch.randn(64, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = [loss.float() for loss in two_losses(model, x)]
    rows = per_loss_grads(losses, list(model.parameters()))
    j = torch.stack(rows)
    expected = min_norm_weights(j @ j.T)
    opt = MOWrapper(torch.optim.SGD(model.parameters(), lr=0.1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        info = opt.backward(losses)
    torch.testing.assert_close(info.weights, expected, rtol=1e-5, atol=1e-6)
    assert info.weights.dtype == torch.float32

"""Representation mode (``features=z``): how ``.grad`` is written and the non-finite policy.

Two write paths: when no leaf has a ``.grad`` yet (the usual step after ``zero_grad``) one
plain backward pass of ``sum_i c_i L_i`` writes them and a rejected step clears them again;
otherwise the gradients are computed out of place, checked, then added. Both must equal
plain PyTorch and leave everything untouched on a non-finite step.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mograd import MOWrapper, NonFiniteError, StepInfo


class Net(nn.Module):
    def __init__(self, sqrt_trunk: bool = False) -> None:
        super().__init__()
        self.trunk = nn.Linear(4, 6)
        self.heads = nn.Linear(6, 2)
        self.sqrt_trunk = sqrt_trunk

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x)
        if self.sqrt_trunk:
            # finite z and finite dL/dz, but d sqrt(|0|) = inf: the parameters' gradients
            # are not finite although nothing the weights see is
            h = h + (h * 0).abs().sqrt()
        z = torch.tanh(h)
        return z, self.heads(z)


def losses_of(out: torch.Tensor) -> list[torch.Tensor]:
    return [(out[:, 0] - 1).pow(2).mean(), (out[:, 1] + 1).pow(2).mean()]


def make(seed: int = 0, **kw: bool) -> tuple[Net, torch.Tensor]:
    torch.manual_seed(seed)
    return Net(**kw).double(), torch.randn(8, 4, dtype=torch.float64)


@pytest.mark.parametrize("existing", [False, True], ids=["fresh-grad", "existing-grad"])
def test_representation_step_equals_plain_backward(existing: bool) -> None:
    model, x = make()
    ref = copy.deepcopy(model)
    x_ref = x.clone().requires_grad_()
    x_mod = x.clone().requires_grad_()  # a leaf the optimizer does not hold
    if existing:
        for m, xx in ((ref, x_ref), (model, x_mod)):
            m(xx)[1].sum().backward()
    opt = MOWrapper(torch.optim.SGD(model.parameters(), lr=0.1))
    z, out = model(x_mod)
    info = opt.backward(losses_of(out), features=z)
    _, out_ref = ref(x_ref)
    c = info.coefficients.detach()
    (c[0] * losses_of(out_ref)[0] + c[1] * losses_of(out_ref)[1]).backward()
    for p, q in zip(model.parameters(), ref.parameters()):
        assert torch.equal(p.grad, q.grad)
    assert torch.equal(x_mod.grad, x_ref.grad)


@pytest.mark.parametrize("state", ["fresh-grad", "existing-grad", "hooked"])
@pytest.mark.parametrize("policy", ["raise", "skip"])
def test_nonfinite_parameter_gradient_leaves_everything_untouched(state: str, policy: str) -> None:
    model, x = make(sqrt_trunk=True)
    opt = MOWrapper(torch.optim.Adam(model.parameters(), lr=1e-2), nonfinite=policy)
    x = x.requires_grad_()
    if state == "existing-grad":
        model.heads(torch.ones(1, 6, dtype=torch.float64)).sum().backward()
    before = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    params = copy.deepcopy(model.state_dict())
    fired: list[int] = []
    if state == "hooked":
        model.heads.bias.register_post_accumulate_grad_hook(lambda p: fired.append(1))
    z, out = model(x)
    if policy == "raise":
        with pytest.raises(NonFiniteError, match="non-finite gradient in representation mode"):
            opt.step(losses_of(out), features=z)
    else:
        assert opt.step(losses_of(out), features=z).skipped
    for p, g in zip(model.parameters(), before):
        assert (p.grad is None and g is None) or torch.equal(p.grad, g)
    assert all(torch.equal(v, params[k]) for k, v in model.state_dict().items())
    assert x.grad is None
    assert fired == []
    assert not opt.optimizer.state  # Adam never stepped


def test_post_accumulate_hooks_fire_once_per_good_step() -> None:
    model, x = make()
    opt = MOWrapper(torch.optim.SGD(model.parameters(), lr=0.1))
    fired: list[torch.Tensor] = []
    model.trunk.weight.register_post_accumulate_grad_hook(lambda p: fired.append(p.grad.clone()))
    z, out = model(x)
    opt.backward(losses_of(out), features=z)
    assert len(fired) == 1
    assert torch.equal(fired[0], model.trunk.weight.grad)


def test_step_info_diagnostics_are_those_of_the_feature_gradients() -> None:
    model, x = make()
    opt = MOWrapper(torch.optim.SGD(model.parameters(), lr=0.1))
    z, out = model(x)
    losses = losses_of(out)
    rows = [torch.autograd.grad(loss, z, retain_graph=True)[0].reshape(-1) for loss in losses]
    info = opt.backward(losses, features=z)
    torch.testing.assert_close(info.grad_norms, torch.stack([r.norm() for r in rows]))
    cos = rows[0] @ rows[1] / (rows[0].norm() * rows[1].norm())
    torch.testing.assert_close(info.cosines[0, 1], cos)
    assert "grad_norms=tensor(" in repr(info)
    same = StepInfo(
        info.weights, info.reweighted, info.coefficients, info.losses, info.grad_norms,
        info.cosines, info.iterations, normalizers=info.normalizers,
    )  # fmt: skip
    assert same == info and same.as_dict() == info.as_dict()
    same.cosines = torch.zeros(2, 2, dtype=torch.float64)
    assert same != info

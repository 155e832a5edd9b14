"""Tests for SAM (``fisherlab.penalties.SharpnessAwareMinimization``, name ``sam``).

The reference is written out by hand, without the code under test: the mini-batch
cross-entropy (log-softmax by ``logsumexp``) through ``torch.func.functional_call`` on
copies of the parameters, its gradient g at w, e = rho g / ||g|| (one global L2 norm
over the trainable parameters), the gradient at w + e, and SGD with momentum and weight
decay written as PyTorch defines it (d = g_SAM + wd w; buf = d on the first step, then
mu buf + d; w -= lr buf). Float64 on tiny models, one with BatchNorm in training mode
(both SAM passes normalise with batch statistics).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from helpers import CrashingData, Interrupted, make_mlp, random_batch, seeded, without_timing
from torch import nn
from torch.func import functional_call

from fisherlab import TrainConfig, TrainData, train
from fisherlab.models import MODELS, register
from fisherlab.penalties import (
    REGULARIZERS,
    SharpnessAwareMinimization,
    build_regularizer,
)

DT = torch.float64
C = 4
RHO = 0.3  # large enough that the gradient at w + e clearly differs from the one at w


def make_bn_cnn(seed: int = 1) -> nn.Module:
    """Conv - BatchNorm2d - Tanh - Linear, in training mode."""
    m = seeded(seed, lambda: nn.Sequential(
        nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 3 * 3, C)
    ).to(DT))  # fmt: skip
    with torch.no_grad():  # affine parameters away from their (1, 0) init
        m[1].weight.copy_(torch.tensor([1.3, 0.6, -0.9], dtype=DT))
        m[1].bias.copy_(torch.tensor([0.2, -0.1, 0.3], dtype=DT))
    return m.train()


MODELS_ = {"mlp": (make_mlp, (5,)), "bn_cnn": (make_bn_cnn, (2, 5, 5))}


def make_batch(kind: str, B: int, seed: int):
    return random_batch(B, MODELS_[kind][1], seed)


def ce(z, y):
    """Reference cross-entropy, written out: mean of logsumexp(z) - z_y."""
    return (torch.logsumexp(z, dim=1) - z.gather(1, y[:, None]).squeeze(1)).mean()


def ref_grad(model: nn.Module, w: dict[str, torch.Tensor], x, y) -> dict[str, torch.Tensor]:
    """d CE / d w for the trainable entries of ``w`` (others held constant), on a copy of
    the model (a train-mode BN forward would otherwise update the model's buffers)."""
    scratch = copy.deepcopy(model)
    params = {n: v.detach().clone().requires_grad_(n in w) for n, v in scratch.named_parameters()}
    params.update({n: v.detach().clone().requires_grad_(True) for n, v in w.items()})
    loss = ce(functional_call(scratch, params, (x,)), y)
    return dict(zip(w, torch.autograd.grad(loss, [params[n] for n in w])))


def ref_sam_grad(model, w, x, y, rho):
    """The hand-written two-step SAM gradient: g at w, e = rho g/||g||, gradient at w + e."""
    g = ref_grad(model, w, x, y)
    norm = math.sqrt(sum(v.pow(2).sum().item() for v in g.values()))
    w_adv = {n: w[n] + rho * g[n] / norm for n in w}
    return ref_grad(model, w_adv, x, y)


def trainable(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def grads_of(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def assert_dicts_close(got, expected, tol=1e-12):
    assert list(got) == list(expected)
    for n in got:
        torch.testing.assert_close(got[n], expected[n], rtol=0, atol=tol, msg=n)


# =========================================================================== the update


@pytest.mark.parametrize("kind", list(MODELS_))
def test_sam_update_matches_hand_written_reference(kind):
    """Two optimizer steps (SGD, momentum 0.9, weight decay 5e-3) with SAM's gradient
    equal the hand-written reference to 1e-12 (momentum acts from the second step)."""
    lr, mu, wd = 0.1, 0.9, 5e-3
    model = MODELS_[kind][0]()
    w = trainable(model)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=mu, weight_decay=wd)
    reg = build_regularizer("sam", rho=RHO)
    buf, plain_w = None, None
    for step in range(2):
        x, y = make_batch(kind, 6, seed=10 + step)
        g_sam = ref_sam_grad(model, w, x, y, RHO)
        if step == 0:  # the comparison is not vacuous: SAM's step differs from plain SGD's
            g = ref_grad(model, w, x, y)
            plain_w = {n: w[n] - lr * (g[n] + wd * w[n]) for n in w}
        d = {n: g_sam[n] + wd * w[n] for n in w}
        buf = d if buf is None else {n: mu * buf[n] + d[n] for n in w}
        w = {n: w[n] - lr * buf[n] for n in w}

        opt.zero_grad(set_to_none=True)
        out = reg.backward(model, x, y, step=step, epoch=0)
        opt.step()
        assert_dicts_close(trainable(model), w)
        assert out.penalty is None and not out.loss.requires_grad
        if step == 0:
            assert max((trainable(model)[n] - plain_w[n]).abs().max().item() for n in w) > 1e-4


@pytest.mark.parametrize("kind", list(MODELS_))
def test_sam_gradient_and_exact_restore(kind):
    """p.grad == the reference SAM gradient (1e-12); the weights afterwards are the very
    same bits as before; StepOutput holds the loss and logits at w; an existing p.grad is
    accumulated into."""
    model = MODELS_[kind][0]()
    x, y = make_batch(kind, 6, seed=20)
    before = trainable(model)
    expected = ref_sam_grad(model, before, x, y, RHO)
    ref_model = copy.deepcopy(model)
    with torch.no_grad():
        z = ref_model(x)  # train mode: batch statistics, like the first SAM pass

    reg = build_regularizer("sam", rho=RHO)
    out = reg.backward(model, x, y, step=0, epoch=0)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n
    assert_dicts_close(grads_of(model), expected)
    torch.testing.assert_close(out.loss, ce(z, y), rtol=0, atol=1e-12)
    torch.testing.assert_close(out.logits, z, rtol=0, atol=1e-12)

    g0 = {n: torch.randn(p.shape, generator=torch.Generator().manual_seed(3), dtype=DT)
          for n, p in model.named_parameters()}  # fmt: skip
    fresh = make_bn_cnn() if kind == "bn_cnn" else make_mlp()
    for n, p in fresh.named_parameters():
        p.grad = g0[n].clone()
    reg.backward(fresh, x, y, step=0, epoch=0)
    assert_dicts_close(grads_of(fresh), {n: g0[n] + expected[n] for n in expected})


def test_norm_over_trainable_parameters_only():
    """A frozen parameter gets no gradient, is not perturbed, and does not enter ||g||."""
    model = make_mlp()
    model[0].bias.requires_grad_(False)
    x, y = make_batch("mlp", 6, seed=30)
    w = trainable(model)
    assert "0.bias" not in w
    expected = ref_sam_grad(model, w, x, y, RHO)
    frozen = model[0].bias.detach().clone()
    build_regularizer("sam", rho=RHO).backward(model, x, y, step=0, epoch=0)
    assert model[0].bias.grad is None and torch.equal(model[0].bias, frozen)
    assert_dicts_close(grads_of(model), expected)


def test_rho_zero_is_the_plain_gradient():
    model = make_mlp()
    x, y = make_batch("mlp", 6, seed=31)
    w = trainable(model)
    build_regularizer("sam", rho=0.0).backward(model, x, y, step=0, epoch=0)
    assert_dicts_close(grads_of(model), ref_grad(model, w, x, y))


# =========================================================================== BatchNorm


def test_batchnorm_running_statistics_see_one_pass_per_step():
    """After a SAM step the BN running mean, variance and num_batches_tracked are exactly
    those of one plain train-mode forward at w (the perturbed pass leaves no trace);
    in eval mode they are untouched."""
    model, plain = make_bn_cnn(), make_bn_cnn()
    reg = build_regularizer("sam", rho=RHO)
    for step in range(3):
        x, y = make_batch("bn_cnn", 6, seed=40 + step)
        with torch.no_grad():
            for p, q in zip(plain.parameters(), model.parameters()):
                p.copy_(q)
            plain(x)
        model.zero_grad(set_to_none=True)
        reg.backward(model, x, y, step=step, epoch=0)
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            assert torch.equal(getattr(model[1], name), getattr(plain[1], name)), name
        assert model[1].num_batches_tracked.item() == step + 1
        with torch.no_grad():  # move the weights so that the next step sees new statistics
            for p in model.parameters():
                p -= 0.1 * p.grad

    model.eval()
    state = copy.deepcopy(model.state_dict())
    x, y = make_batch("bn_cnn", 6, seed=49)
    reg.backward(model, x, y, step=3, epoch=0)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


# =========================================================================== start_epoch, state


def test_start_epoch():
    """Before start_epoch: the plain cross-entropy gradient; from it on: SAM's."""
    model = make_mlp()
    reg = build_regularizer("sam", rho=RHO, start_epoch=2, seed=3)
    for epoch in range(3):
        x, y = make_batch("mlp", 6, seed=50 + epoch)
        w = trainable(model)
        expected = ref_sam_grad(model, w, x, y, RHO) if epoch >= 2 else ref_grad(model, w, x, y)
        model.zero_grad(set_to_none=True)
        reg.backward(model, x, y, step=epoch, epoch=epoch)
        assert_dicts_close(grads_of(model), expected)
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.2 * p.grad


def test_registration_state_and_arguments():
    assert REGULARIZERS["sam"] is SharpnessAwareMinimization
    reg = build_regularizer("sam", rho=0.05, start_epoch=1, seed=7)
    assert (reg.rho, reg.start_epoch, reg.seed) == (0.05, 1, 7)
    assert reg.state_dict() == {}  # deterministic: nothing to resume
    reg.load_state_dict({})
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="rho"):
            build_regularizer("sam", rho=bad)
    with pytest.raises(ValueError, match="start_epoch"):
        build_regularizer("sam", rho=0.05, start_epoch=-1)


# =========================================================================== resume in the trainer

if "sam_test_bn_cnn" not in MODELS:

    @register("sam_test_bn_cnn")
    class _TinyBNCNN(nn.Module):
        """Conv - BN - ReLU - pool - Linear: a BatchNorm model small enough for CPU tests."""

        def __init__(self, num_classes: int = 10):
            super().__init__()
            self.net = nn.Sequential(
                nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(8 * 16, num_classes),
            )  # fmt: skip

        def forward(self, x):
            return self.net(x)


def config(**kw) -> TrainConfig:
    base = dict(
        model="sam_test_bn_cnn", epochs=3, batch_size=32, lr=0.05, weight_decay=1e-4,
        milestones=[2], regularizer="sam", regularizer_kwargs={"rho": 0.05},
        fisher_examples=32, fisher_every=5,
    )  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def assert_same_run(a, b):
    assert a.status == b.status == "ok"
    assert without_timing(a.metrics) == without_timing(b.metrics)
    assert without_timing(a.curvature) == without_timing(b.curvature)
    for (name, x), y in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(x, y), name


@pytest.mark.parametrize("kwargs", [{"rho": 0.05}, {"rho": 0.05, "start_epoch": 1}])
def test_resume_after_a_crash_is_bit_identical(tmp_path, data, kwargs):
    """A SAM run (BatchNorm model, momentum, weight decay) killed in epoch 2 and resumed
    from its end-of-epoch checkpoint equals the uninterrupted run bit for bit; the same
    run with plain training differs (SAM did act)."""
    cfg = config(regularizer_kwargs=kwargs)
    ref = train(cfg, data)
    ckpt = tmp_path / "ckpt.pt"
    crashing = TrainData(CrashingData(data.train, crash_after=9), data.val, data.test)
    with pytest.raises(Interrupted):
        train(cfg, crashing, checkpoint=ckpt)
    assert torch.load(ckpt, weights_only=False)["progress"]["epoch"] == 1
    assert_same_run(ref, train(cfg, data, checkpoint=ckpt))

    plain = train(config(regularizer="none", regularizer_kwargs={}), data)
    assert without_timing(plain.metrics) != without_timing(ref.metrics)


def test_stop_request_midway_resumes_bit_identically(tmp_path, data):
    """Stopped by a preemption request within epoch 2 (step 8 of 18) and resumed."""
    cfg = config()
    ref = train(cfg, data)
    ckpt, polls = tmp_path / "ckpt.pt", []

    def stop():
        polls.append(None)
        return len(polls) >= 9

    first = train(cfg, data, checkpoint=ckpt, should_stop=stop)
    assert first.status == "preempted"
    assert torch.load(ckpt, weights_only=False)["progress"]["step"] == 8
    assert_same_run(ref, train(cfg, data, checkpoint=ckpt, should_stop=lambda: False))

"""Tests for fisherlab's regularizers (``fisherlab.penalties``) against independent references.

Every expected gradient here is computed without the code under test: the explicit
objective

    L(theta) = CE_mean(f(x), y) + alpha * ||v(theta)||^2

is written out with a hand-written cross-entropy (log-softmax by ``logsumexp``), ``v`` is
taken with ``torch.autograd.grad(..., create_graph=True)`` through
``torch.func.functional_call`` on copies of the parameters, and ``L`` is differentiated
again with autograd (reference 1); the result is also checked against central finite
differences of ``L`` along random directions (reference 2). Everything is float64 on
tiny models (the global default dtype is never changed).

Coupling with the implementation's random streams (the only thing the tests share with
it, and deliberately so, to reproduce the sampled labels without calling its sampling):

* ``fp`` / ``fp_exact`` draw ``torch.multinomial(softmax(logits), 1, generator=g)`` with
  ``g = torch.Generator(device).manual_seed(seed)`` created on first use and advanced
  only on steps where the penalty is recomputed; ``fp_exact`` draws on the first row
  ``logits[:1]`` only.
* ``gpr`` draws ``torch.randint(0, C, y.shape, generator=g)`` from the same kind of
  generator.
* ``mixup`` draws ``lambda = np.random.default_rng(seed).beta(beta, beta)`` (one stream
  created at construction) and ``torch.randperm(B, generator=g)`` with ``g`` as above.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from helpers import make_mlp, random_batch, seeded
from torch import nn
from torch.func import functional_call

from fisherlab.penalties import build_regularizer

DT = torch.float64
C = 4
TOL = 1e-10
PENALTIES = ["fp", "fp_exact", "gp", "gpr", "gpx"]
ALPHA = {"fp": 0.7, "fp_exact": 0.7, "gp": 0.7, "gpr": 0.7, "gpx": 20.0}


# =========================================================================== helpers


def make_cnn(seed: int = 1) -> nn.Module:
    return seeded(seed, lambda: nn.Sequential(nn.Conv2d(2, 3, 3), nn.Softplus(), nn.Flatten(), nn.Linear(27, C)).to(DT))


MODELS = {"mlp": (make_mlp, (5,)), "cnn": (make_cnn, (2, 5, 5))}


def make_batch(kind: str, B: int, seed: int):
    return random_batch(B, MODELS[kind][1], seed)


def ce(z: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Reference cross-entropy, written out: -(z_y - logsumexp(z))."""
    nll = torch.logsumexp(z, dim=1) - z.gather(1, y[:, None]).squeeze(1)
    return nll.mean() if reduction == "mean" else nll.sum()


def params_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """Fresh leaf copies of the parameters (same order as model.parameters()); frozen
    ones stay frozen."""
    return {n: p.detach().clone().requires_grad_(p.requires_grad) for n, p in model.named_parameters()}


def _wrt(params):
    return [p for p in params.values() if p.requires_grad]


def ref_labels(name: str, model: nn.Module, x, y, gen: torch.Generator):
    """Reproduce the labels the regularizer draws (see the module docstring)."""
    with torch.no_grad():
        z = model(x)
    if name == "fp":
        return torch.multinomial(z.softmax(-1), 1, generator=gen).squeeze(1)
    if name == "fp_exact":
        return torch.multinomial(z[:1].softmax(-1), 1, generator=gen).squeeze(1)
    if name == "gpr":
        return torch.randint(0, C, y.shape, generator=gen)
    return None


def ref_terms(name, model, params, x, y, labels, create_graph=True):
    """(data term CE_mean(f(x), y), penalty ||v||^2 without alpha) at ``params``."""
    xx = x.detach().clone().requires_grad_(True) if name == "gpx" else x
    z = functional_call(model, params, (xx,))
    data = ce(z, y)
    wrt = _wrt(params)
    if name == "fp":
        inner = ce(z, labels)
    elif name == "fp_exact":
        inner = ce(z[:1], labels, reduction="sum")
    elif name == "gp":
        inner = ce(z, y)
    elif name == "gpr":
        inner = ce(z, labels)
    elif name == "gpx":  # the default reading, per_example: (1/B) sum_i ||d l_i / d x_i||^2 (tests/test_gpx.py)
        inner, wrt = ce(z, y, reduction="sum"), [xx]
    else:
        raise AssertionError(name)
    v = torch.autograd.grad(inner, wrt, create_graph=create_graph)
    return data, sum(vi.pow(2).sum() for vi in v) / (len(x) if name == "gpx" else 1)


def ref_objective_grad(name, alpha, model, x, y, labels):
    """Reference 1: autograd gradient of the explicit objective, and ||v||^2."""
    params = params_of(model)
    data, pen = ref_terms(name, model, params, x, y, labels)
    return list(torch.autograd.grad(data + alpha * pen, _wrt(params))), pen.detach()


def ref_penalty_grad(name, alpha, model, x, y, labels):
    """Gradient of alpha * ||v||^2 alone (what the regularizer caches)."""
    params = params_of(model)
    _, pen = ref_terms(name, model, params, x, y, labels)
    return list(torch.autograd.grad(alpha * pen, _wrt(params)))


def ref_ce_grad(model, x, y):
    params = params_of(model)
    z = functional_call(model, params, (x,))
    return list(torch.autograd.grad(ce(z, y), _wrt(params)))


def run_backward(reg, model, x, y, step=0, epoch=0, grad0=None):
    """Set p.grad (None or grad0), run reg.backward, return (output, list of p.grad)."""
    for i, p in enumerate(model.parameters()):
        p.grad = None if grad0 is None else grad0[i].clone()
    out = reg.backward(model, x, y, step=step, epoch=epoch)
    grads = [p.grad.detach().clone() for p in model.parameters()]
    return out, grads


def assert_grads_close(got, expected, tol=TOL):
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.dtype == DT and g.shape == e.shape
        torch.testing.assert_close(g, e, rtol=tol, atol=tol)


def max_diff(a, b) -> float:
    return max((ai - bi).abs().max().item() for ai, bi in zip(a, b))


def sgd_update(model, lr=0.2):
    with torch.no_grad():
        for p in model.parameters():
            p -= lr * p.grad


def fresh_gen(seed):
    return torch.Generator().manual_seed(seed)


# =========================================================================== 1. penalties


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("name", PENALTIES)
def test_penalty_gradient_matches_explicit_objective(name, kind):
    seed, alpha = 11, ALPHA[name]
    model = make_mlp() if kind == "mlp" else make_cnn()
    x, y = make_batch(kind, 6, seed=3)
    labels = ref_labels(name, model, x, y, fresh_gen(seed))
    if labels is not None and name != "fp_exact":
        assert not torch.equal(labels, y)  # the test tells sampled labels from true ones

    kwargs = dict(alpha=alpha, seed=seed) if name == "fp_exact" else dict(alpha=alpha, every=1, seed=seed)
    reg = build_regularizer(name, **kwargs)
    out, got = run_backward(reg, model, x, y)

    expected, pen = ref_objective_grad(name, alpha, model, x, y, labels)
    assert_grads_close(got, expected)
    # the penalty actually moves the gradient (the comparison is not vacuous)
    assert max_diff(got, ref_ce_grad(model, x, y)) > 1e-4

    assert out.penalty is not None
    torch.testing.assert_close(out.penalty, pen, rtol=TOL, atol=TOL)
    torch.testing.assert_close(out.loss, ce(model(x), y).detach(), rtol=TOL, atol=TOL)
    torch.testing.assert_close(out.logits, model(x).detach(), rtol=TOL, atol=TOL)
    assert not out.loss.requires_grad and not out.logits.requires_grad


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("name", PENALTIES)
def test_penalty_gradient_matches_finite_differences(name, kind):
    """Reference 2: central differences of the explicit objective (labels held fixed)
    along random directions, against <p.grad, d> from the code under test."""
    seed, alpha, h = 5, ALPHA[name], 1e-5
    model = make_mlp() if kind == "mlp" else make_cnn()
    x, y = make_batch(kind, 5, seed=8)
    labels = ref_labels(name, model, x, y, fresh_gen(seed))
    kwargs = dict(alpha=alpha, seed=seed) if name == "fp_exact" else dict(alpha=alpha, every=1, seed=seed)
    _, got = run_backward(build_regularizer(name, **kwargs), model, x, y)

    def objective(params):
        data, pen = ref_terms(name, model, params, x, y, labels, create_graph=False)
        return (data + alpha * pen).item()

    base = params_of(model)
    g = torch.Generator().manual_seed(123)
    for _ in range(3):
        d = {n: torch.randn(p.shape, generator=g, dtype=DT) for n, p in base.items()}
        plus = {n: (base[n] + h * d[n]).detach().requires_grad_(True) for n in base}
        minus = {n: (base[n] - h * d[n]).detach().requires_grad_(True) for n in base}
        fd = (objective(plus) - objective(minus)) / (2 * h)
        analytic = sum((gi * di).sum() for gi, di in zip(got, d.values())).item()
        assert abs(fd - analytic) <= 1e-6 * max(abs(analytic), 1e-3), (fd, analytic)


# =========================================================================== 2. none


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_none_is_plain_cross_entropy(kind):
    model = make_mlp() if kind == "mlp" else make_cnn()
    x, y = make_batch(kind, 6, seed=4)
    reg = build_regularizer("none")
    out, got = run_backward(reg, model, x, y)
    assert_grads_close(got, ref_ce_grad(model, x, y))
    assert out.penalty is None
    torch.testing.assert_close(out.loss, ce(model(x), y).detach(), rtol=TOL, atol=TOL)
    assert reg.state_dict() == {}


# =========================================================================== 3. mixup


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_mixup_gradient(kind):
    seed, beta, B = 3, 0.4, 6
    model = make_mlp() if kind == "mlp" else make_cnn()
    reg = build_regularizer("mixup", beta=beta, seed=seed)
    np_rng, gen = np.random.default_rng(seed), fresh_gen(seed)
    for step in range(3):  # the streams continue from step to step
        x, y = make_batch(kind, B, seed=20 + step)
        lam = float(np_rng.beta(beta, beta))
        perm = torch.randperm(B, generator=gen)
        assert 0.0 < lam < 1.0 and not torch.equal(perm, torch.arange(B))

        out, got = run_backward(reg, model, x, y, step=step)

        params = params_of(model)
        z = functional_call(model, params, (lam * x + (1 - lam) * x[perm],))
        loss = lam * ce(z, y) + (1 - lam) * ce(z, y[perm])
        expected = torch.autograd.grad(loss, list(params.values()))
        assert_grads_close(got, expected)
        torch.testing.assert_close(out.loss, loss.detach(), rtol=TOL, atol=TOL)
        assert out.penalty is None
        sgd_update(model)


# =========================================================================== 4. caching


@pytest.mark.parametrize("name,every", [("fp", 3), ("gp", 3), ("fp", 1), ("gp", 1), ("gpr", 3), ("gpx", 3)])
def test_penalty_gradient_cached_between_refreshes(name, every):
    """Refresh at steps 0, every, 2*every, ...; in between, p.grad = grad CE at the
    current params + the penalty gradient computed at the last refresh (stale params)."""
    seed, alpha = 7, ALPHA[name]
    model = make_mlp()
    reg = build_regularizer(name, alpha=alpha, every=every, seed=seed)
    gen = fresh_gen(seed)  # advanced only on refresh steps
    cached = None
    refreshed = []
    for step in range(8):
        x, y = make_batch("mlp", 6, seed=100 + step)
        refresh = step % every == 0
        labels = ref_labels(name, model, x, y, gen) if refresh else None
        if refresh:
            cached = ref_penalty_grad(name, alpha, model, x, y, labels)
            _, pen = ref_objective_grad(name, alpha, model, x, y, labels)
        elif every > 1:
            # params have moved: a fresh penalty gradient would differ from the cached one
            fresh_labels = ref_labels(name, model, x, y, torch.Generator().manual_seed(999))
            assert max_diff(ref_penalty_grad(name, alpha, model, x, y, fresh_labels), cached) > 1e-6

        out, got = run_backward(reg, model, x, y, step=step)
        if out.penalty is not None:
            refreshed.append(step)
            torch.testing.assert_close(out.penalty, pen, rtol=TOL, atol=TOL)

        expected = [gc + gp for gc, gp in zip(ref_ce_grad(model, x, y), cached)]
        assert_grads_close(got, expected)
        torch.testing.assert_close(out.loss, ce(model(x), y).detach(), rtol=TOL, atol=TOL)
        sgd_update(model)
    assert refreshed == [s for s in range(8) if s % every == 0]


def test_fp_exact_refreshes_every_step():
    seed, alpha = 2, 0.7
    model = make_mlp()
    reg = build_regularizer("fp_exact", alpha=alpha, seed=seed)
    gen = fresh_gen(seed)
    for step in range(4):
        x, y = make_batch("mlp", 5, seed=40 + step)
        labels = ref_labels("fp_exact", model, x, y, gen)
        out, got = run_backward(reg, model, x, y, step=step)
        expected, pen = ref_objective_grad("fp_exact", alpha, model, x, y, labels)
        assert_grads_close(got, expected)
        assert out.penalty is not None
        torch.testing.assert_close(out.penalty, pen, rtol=TOL, atol=TOL)
        sgd_update(model)


# =========================================================================== 5. start_epoch


@pytest.mark.parametrize("name", ["fp", "gpx"])
def test_start_epoch_penalty(name):
    seed, alpha = 4, ALPHA[name]
    model = make_mlp()
    reg = build_regularizer(name, alpha=alpha, every=3, start_epoch=2, seed=seed)
    step = 0
    for epoch in (0, 1):
        for _ in range(2):
            x, y = make_batch("mlp", 6, seed=60 + step)
            out, got = run_backward(reg, model, x, y, step=step, epoch=epoch)
            assert_grads_close(got, ref_ce_grad(model, x, y))
            assert out.penalty is None
            state = reg.state_dict()
            assert state["cache"] is None and state["rng"] is None
            sgd_update(model)
            step += 1
    # epoch 2: the penalty is on, the cache is built now, and the label stream is untouched
    x, y = make_batch("mlp", 6, seed=60 + step)
    labels = ref_labels(name, model, x, y, fresh_gen(seed))
    out, got = run_backward(reg, model, x, y, step=step, epoch=2)
    expected, pen = ref_objective_grad(name, alpha, model, x, y, labels)
    assert_grads_close(got, expected)
    assert out.penalty is not None
    torch.testing.assert_close(out.penalty, pen, rtol=TOL, atol=TOL)
    assert reg.state_dict()["cache"] is not None


def test_start_epoch_mixup():
    seed, beta = 9, 0.5
    model = make_mlp()
    reg = build_regularizer("mixup", beta=beta, start_epoch=2, seed=seed)
    for epoch in (0, 1):
        x, y = make_batch("mlp", 6, seed=70 + epoch)
        _, got = run_backward(reg, model, x, y, step=epoch, epoch=epoch)
        assert_grads_close(got, ref_ce_grad(model, x, y))
    x, y = make_batch("mlp", 6, seed=72)
    lam = float(np.random.default_rng(seed).beta(beta, beta))
    perm = torch.randperm(6, generator=fresh_gen(seed))
    _, got = run_backward(reg, model, x, y, step=2, epoch=2)
    params = params_of(model)
    z = functional_call(model, params, (lam * x + (1 - lam) * x[perm],))
    loss = lam * ce(z, y) + (1 - lam) * ce(z, y[perm])
    assert_grads_close(got, torch.autograd.grad(loss, list(params.values())))


# =========================================================================== 6. state_dict


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("fp", dict(alpha=0.7, every=3, seed=5)),
        ("gpr", dict(alpha=0.7, every=2, seed=5)),
        ("mixup", dict(beta=0.4, seed=5)),
    ],
)
def test_state_dict_round_trip(name, kwargs):
    model_a = make_mlp()
    reg_a = build_regularizer(name, **kwargs)
    for step in range(5):
        x, y = make_batch("mlp", 6, seed=200 + step)
        run_backward(reg_a, model_a, x, y, step=step)
        sgd_update(model_a)

    state = copy.deepcopy(reg_a.state_dict())
    reg_b = build_regularizer(name, **kwargs)
    reg_b.load_state_dict(state)
    reg_c = build_regularizer(name, **kwargs)  # not restored: must diverge somewhere
    model_b, model_c = copy.deepcopy(model_a), copy.deepcopy(model_a)

    diverged = False
    for step in range(5, 10):
        x, y = make_batch("mlp", 6, seed=200 + step)
        _, ga = run_backward(reg_a, model_a, x, y, step=step)
        _, gb = run_backward(reg_b, model_b, x, y, step=step)
        _, gc = run_backward(reg_c, model_c, x, y, step=step)
        for a, b in zip(ga, gb):
            assert torch.equal(a, b)
        diverged |= any(not torch.equal(a, c) for a, c in zip(ga, gc))
        sgd_update(model_a), sgd_update(model_b), sgd_update(model_c)
    assert diverged


# =========================================================================== 7. validation


@pytest.mark.parametrize(
    "name,kwargs,match",
    [
        ("fp", dict(alpha=-0.1), "alpha"),
        ("fp_exact", dict(alpha=-1.0), "alpha"),
        ("gp", dict(alpha=-1e-3), "alpha"),
        ("gpx", dict(alpha=-5.0), "alpha"),
        ("gpr", dict(alpha=-1.0), "alpha"),
        ("fp", dict(alpha=1.0, every=0), "every"),
        ("gp", dict(alpha=1.0, every=-2), "every"),
        ("gpr", dict(alpha=1.0, every=0), "every"),
        ("gpx", dict(alpha=1.0, every=0), "every"),
        ("mixup", dict(beta=0.0), "beta"),
        ("mixup", dict(beta=-0.5), "beta"),
        ("fp", dict(alpha=1.0, start_epoch=-1), "start_epoch"),
        ("mixup", dict(beta=1.0, start_epoch=-1), "start_epoch"),
    ],
)
def test_invalid_arguments(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_regularizer(name, **kwargs)


def test_unknown_name():
    with pytest.raises(ValueError, match="unknown regularizer 'fisher'") as info:
        build_regularizer("fisher", alpha=1.0)
    for known in ("none", "fp", "fp_exact", "gp", "gpx", "gpr", "mixup"):
        assert repr(known) in str(info.value)


def test_boundary_arguments_accepted():
    build_regularizer("fp", alpha=0.0, every=1)
    build_regularizer("mixup", beta=1e-6)
    build_regularizer("none", start_epoch=0)


# =========================================================================== 8. accumulation


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("none", {}),
        ("fp", dict(alpha=0.7, every=2, seed=1)),
        ("fp_exact", dict(alpha=0.7, seed=1)),
        ("gp", dict(alpha=0.7, every=2, seed=1)),
        ("gpr", dict(alpha=0.7, every=2, seed=1)),
        ("gpx", dict(alpha=20.0, every=2, seed=1)),
        ("mixup", dict(beta=0.4, seed=1)),
    ],
)
def test_backward_accumulates_into_existing_grad(name, kwargs):
    """p.grad = G0 before the call -> G0 + (what the call writes from p.grad = None),
    on a refresh step and on a cached step (steps 0 and 1 with every=2)."""
    model_1, model_2 = make_mlp(), make_mlp()
    reg_1, reg_2 = build_regularizer(name, **kwargs), build_regularizer(name, **kwargs)
    g = torch.Generator().manual_seed(17)
    for step in range(2):
        x, y = make_batch("mlp", 6, seed=300 + step)
        grad0 = [torch.randn(p.shape, generator=g, dtype=DT) for p in model_1.parameters()]
        _, fresh = run_backward(reg_1, model_1, x, y, step=step)
        _, acc = run_backward(reg_2, model_2, x, y, step=step, grad0=grad0)
        assert_grads_close(acc, [g0 + f for g0, f in zip(grad0, fresh)], tol=1e-12)
        # same update for both, from the fresh gradient
        with torch.no_grad():
            for p1, p2, f in zip(model_1.parameters(), model_2.parameters(), fresh):
                p1 -= 0.2 * f
                p2 -= 0.2 * f


def test_frozen_parameters_untouched():
    """Parameters with requires_grad=False get no gradient; the rest match the reference
    objective with the frozen ones held constant (also on a cached step)."""
    seed, alpha = 3, 0.7
    model = make_mlp()
    model[0].bias.requires_grad_(False)
    reg = build_regularizer("gp", alpha=alpha, every=2, seed=seed)
    trainable = [p for p in model.parameters() if p.requires_grad]
    cached = None
    for step in range(2):
        x, y = make_batch("mlp", 6, seed=400 + step)
        for p in model.parameters():
            p.grad = None
        reg.backward(model, x, y, step=step, epoch=0)
        assert model[0].bias.grad is None
        if cached is None:  # refresh at step 0, reused at step 1
            cached = ref_penalty_grad("gp", alpha, model, x, y, None)
        expected = [gc + gp for gc, gp in zip(ref_ce_grad(model, x, y), cached)]
        assert_grads_close([p.grad for p in trainable], expected)
        with torch.no_grad():
            for p in trainable:
                p -= 0.2 * p.grad

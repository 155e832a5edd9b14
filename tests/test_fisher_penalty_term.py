"""Tests for the Fisher penalty as a term of one's own loss (``fisherlab.penalty_term``).

References, none of which calls the code under test:

* the explicit penalty P(theta) = alpha * ||v(theta)||^2 with v the gradient of a
  hand-written cross-entropy (log-softmax by ``logsumexp``) of
  ``torch.func.functional_call`` on copies of the parameters, for labels held fixed,
  differentiated again by autograd, and by central finite differences;
* for the Gaussian likelihood, v written through the per-example Jacobians,
  v = (1/N) sum_i J_i^T (f_i - yhat_i) / sigma^2 (row by row, by autograd), and its
  gradient by central finite differences;
* the existing ``FisherPenalty`` regularizer (an independent implementation of the
  cache and of the training step: its own backward, ``p.grad`` filled by hand).

Coupling with the implementation's random streams (deliberate, to reproduce the
sampled labels): categorical labels are ``torch.multinomial(softmax(logits), 1,
generator=g)``, Gaussian ones ``f + sigma * torch.randn(f.shape, generator=g)``;
``FisherPenaltyTerm(seed=s)`` draws from ``torch.Generator().manual_seed(s)``,
advanced on recompute steps only. Everything is float64 on tiny models (except the
bfloat16 autocast test), and the global default dtype is never changed.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import make_mlp, random_batch, seeded
from torch import nn
from torch.func import functional_call

from fisherlab.likelihoods import Gaussian
from fisherlab.penalties import FisherPenalty
from fisherlab.penalty_term import FisherPenaltyTerm, fisher_penalty

DT = torch.float64
C = 4
TOL = 1e-10


# =========================================================================== helpers


def make_cnn(seed: int = 1, bn: bool = False, dtype=DT) -> nn.Module:
    def build():
        norm = nn.BatchNorm2d(3) if bn else nn.Identity()
        return nn.Sequential(nn.Conv2d(2, 3, 3), norm, nn.Softplus(), nn.Flatten(), nn.Linear(27, C)).to(dtype)

    return seeded(seed, build)


SHAPES = {"mlp": (5,), "cnn": (2, 5, 5)}


def make_batch(kind: str, B: int, seed: int, dtype=DT):
    return random_batch(B, SHAPES[kind], seed, dtype=dtype)


def model_of(kind: str, **kw) -> nn.Module:
    return make_mlp(**kw) if kind == "mlp" else make_cnn(**kw)


def ce(z, y):
    """Reference mean cross-entropy, written out."""
    return (torch.logsumexp(z, dim=1) - z.gather(1, y[:, None]).squeeze(1)).mean()


def params_of(model):
    return {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}


def ref_labels(model, x, gen):
    with torch.no_grad():
        return torch.multinomial(model(x).softmax(-1), 1, generator=gen).squeeze(1)


def ref_penalty(model, params, x, labels, alpha, create_graph=True):
    """alpha * ||grad_theta CE_mean(f(x), labels)||^2 at ``params`` (labels fixed)."""
    z = functional_call(model, params, (x,))
    v = torch.autograd.grad(ce(z, labels), list(params.values()), create_graph=create_graph)
    return alpha * sum(vi.pow(2).sum() for vi in v)


def ref_penalty_grad(model, x, labels, alpha):
    params = params_of(model)
    return list(torch.autograd.grad(ref_penalty(model, params, x, labels, alpha), list(params.values())))


def ref_ce_grad(model, x, y):
    params = params_of(model)
    return list(torch.autograd.grad(ce(functional_call(model, params, (x,)), y), list(params.values())))


def grads_of(model):
    return [p.grad.detach().clone() for p in model.parameters()]


def zero_grad(model):
    for p in model.parameters():
        p.grad = None


def assert_all_close(got, expected, tol=TOL):
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=tol, atol=tol)


def max_diff(a, b):
    return max((u - v).abs().max().item() for u, v in zip(a, b))


# =========================================================================== fisher_penalty


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("source", ["inputs", "outputs"])
def test_gradient_matches_explicit_penalty_and_regularizer(kind, source):
    seed, alpha = 11, 0.7
    model = model_of(kind)
    x, y = make_batch(kind, 6, seed=3)
    labels = ref_labels(model, x, torch.Generator().manual_seed(seed))
    assert not torch.equal(labels, y)

    gen = torch.Generator().manual_seed(seed)
    zero_grad(model)
    if source == "inputs":
        pen = fisher_penalty(model, x, alpha=alpha, generator=gen)
    else:
        pen = fisher_penalty(model, outputs=model(x), alpha=alpha, generator=gen)
    assert pen.dim() == 0 and pen.requires_grad
    pen.backward()
    got = grads_of(model)

    # 1. the explicit formula, by autograd
    params = params_of(model)
    torch.testing.assert_close(pen.detach(), ref_penalty(model, params, x, labels, alpha).detach(), rtol=TOL, atol=TOL)
    assert_all_close(got, ref_penalty_grad(model, x, labels, alpha))

    # 2. the regularizer's step (every=1): grad CE + penalty gradient, to the last bit
    reg = FisherPenalty(alpha=alpha, every=1, seed=seed)
    zero_grad(model)
    out = reg.backward(model, x, y, step=0, epoch=0)
    ce_grad = ref_ce_grad(model, x, y)
    reg_pen_grad = [g - c for g, c in zip(grads_of(model), ce_grad)]
    assert_all_close(got, reg_pen_grad)
    torch.testing.assert_close(alpha * out.penalty, pen.detach(), rtol=0, atol=0)

    # the step as the user writes it gives the regularizer's p.grad (one joint backward
    # sums the two terms' gradients at the shared logits: equal up to rounding)
    zero_grad(model)
    logits = model(x)
    (F.cross_entropy(logits, y) + fisher_penalty(model, outputs=logits, alpha=alpha,
                                                 generator=torch.Generator().manual_seed(seed))).backward()
    user = grads_of(model)
    reg2 = FisherPenalty(alpha=alpha, every=1, seed=seed)
    zero_grad(model)
    reg2.backward(model, x, y, step=0, epoch=0)
    assert_all_close(user, grads_of(model), tol=1e-13)
    assert max_diff(user, ce_grad) > 1e-4  # the penalty moves the gradient


def test_gradient_matches_finite_differences():
    seed, alpha, h = 5, 0.7, 1e-5
    model = make_mlp()
    x, _ = make_batch("mlp", 5, seed=8)
    labels = ref_labels(model, x, torch.Generator().manual_seed(seed))
    zero_grad(model)
    fisher_penalty(model, x, alpha=alpha, generator=torch.Generator().manual_seed(seed)).backward()
    got = grads_of(model)

    base = params_of(model)
    g = torch.Generator().manual_seed(123)
    for _ in range(3):
        d = {n: torch.randn(p.shape, generator=g, dtype=DT) for n, p in base.items()}
        shifted = [{n: (base[n] + s * h * d[n]).detach().requires_grad_(True) for n in base} for s in (1, -1)]
        plus, minus = (ref_penalty(model, p, x, labels, alpha, create_graph=False).item() for p in shifted)
        fd = (plus - minus) / (2 * h)
        analytic = sum((gi * di).sum() for gi, di in zip(got, d.values())).item()
        assert abs(fd - analytic) <= 1e-6 * max(abs(analytic), 1e-3), (fd, analytic)


def test_examples_first_m_like_the_regularizer():
    seed, alpha, m = 4, 0.5, 3
    model = make_cnn()
    x, y = make_batch("cnn", 8, seed=2)
    gen = torch.Generator().manual_seed(seed)
    labels = ref_labels(model, x[:m], torch.Generator().manual_seed(seed))
    zero_grad(model)
    pen = fisher_penalty(model, outputs=model(x), alpha=alpha, generator=gen, examples=m)
    pen.backward()
    got = grads_of(model)
    assert_all_close(got, ref_penalty_grad(model, x[:m], labels, alpha))
    reg = FisherPenalty(alpha=alpha, every=1, seed=seed, examples=m)
    zero_grad(model)
    reg.backward(model, x, y, step=0, epoch=0)
    assert_all_close(got, [g - c for g, c in zip(grads_of(model), ref_ce_grad(model, x, y))])
    # with inputs, only the first m are forwarded: the same penalty (no BatchNorm here)
    again = fisher_penalty(model, x, alpha=alpha, generator=torch.Generator().manual_seed(seed), examples=m)
    torch.testing.assert_close(again, pen, rtol=TOL, atol=TOL)


def test_gaussian_likelihood_against_jacobian_formula():
    """v = (1/N) sum_i J_i^T (f_i - yhat_i) / sigma^2 with yhat_i = f_i + sigma eps_i."""
    seed, alpha, sigma, h = 3, 0.3, 0.5, 1e-5
    model = make_mlp(out=3)
    x, _ = make_batch("mlp", 6, seed=9)
    with torch.no_grad():
        yhat = model(x) + sigma * torch.randn(6, 3, generator=torch.Generator().manual_seed(seed), dtype=DT)
    names = [n for n, _ in model.named_parameters()]

    def explicit(flat_params):
        params = {n: p.detach().requires_grad_(True) for n, p in zip(names, flat_params)}
        f = functional_call(model, params, (x,))
        r = ((f - yhat) / sigma**2).detach()
        # v = (1/N) sum_i sum_o r_io d f_io / d theta, one row of the Jacobian at a time
        v = [torch.zeros_like(p) for p in params.values()]
        for i in range(f.shape[0]):
            for o in range(f.shape[1]):
                row = torch.autograd.grad(f[i, o], list(params.values()), retain_graph=True)
                v = [vk + r[i, o] * jk / len(x) for vk, jk in zip(v, row)]
        return alpha * sum(vi.pow(2).sum() for vi in v)

    zero_grad(model)
    pen = fisher_penalty(model, x, alpha=alpha, likelihood=Gaussian(sigma=sigma),
                         generator=torch.Generator().manual_seed(seed))
    pen.backward()
    got = grads_of(model)
    base = [p.detach().clone() for p in model.parameters()]
    torch.testing.assert_close(pen.detach(), explicit(base), rtol=TOL, atol=TOL)
    assert pen.item() > 1e-3
    g = torch.Generator().manual_seed(7)
    for _ in range(3):
        d = [torch.randn(p.shape, generator=g, dtype=DT) for p in base]
        fd = (explicit([b + h * di for b, di in zip(base, d)]) - explicit([b - h * di for b, di in zip(base, d)])) / (2 * h)
        analytic = sum((gi * di).sum() for gi, di in zip(got, d))
        assert abs(fd - analytic).item() <= 1e-6 * max(abs(analytic).item(), 1e-3), (fd, analytic)
    # by name: sigma = 1, and v scales as 1/sigma (yhat - f = sigma eps)
    other = fisher_penalty(model, x, alpha=alpha, likelihood="gaussian", generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(other, pen * sigma**2, rtol=1e-12, atol=0)


def test_sequence_outputs_sum_over_positions():
    """(N, T, C) outputs: one example is a sequence, its loss the sum over its T positions,
    v = grad (1/N) sum_i sum_t CE(z_it, yhat_it)."""
    seed, alpha, N, T = 8, 0.4, 3, 5
    model = make_mlp()
    x = torch.randn(N, T, 5, generator=torch.Generator().manual_seed(2), dtype=DT)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        labels = torch.multinomial(model(x).reshape(-1, C).softmax(-1), 1, generator=gen).reshape(N, T)
    zero_grad(model)
    pen = fisher_penalty(model, x, alpha=alpha, generator=torch.Generator().manual_seed(seed))
    pen.backward()

    def explicit(params, create_graph=True):
        z = functional_call(model, params, (x,)).reshape(-1, C)
        nll = ce(z, labels.reshape(-1)) * T  # the mean over N*T positions, times T
        v = torch.autograd.grad(nll, list(params.values()), create_graph=create_graph)
        return alpha * sum(vi.pow(2).sum() for vi in v)

    params = params_of(model)
    expected = explicit(params)
    torch.testing.assert_close(pen.detach(), expected.detach(), rtol=TOL, atol=TOL)
    assert_all_close(grads_of(model), list(torch.autograd.grad(expected, list(params.values()))))


class DictModel(nn.Module):
    """A Hugging Face style model: keyword inputs, a dict (or a tuple) out."""

    def __init__(self, as_tuple: bool = False):
        super().__init__()
        self.net, self.as_tuple = make_mlp(), as_tuple

    def forward(self, features, scale):
        z = self.net(features * scale)
        return (z, z.sum()) if self.as_tuple else {"loss": z.sum(), "logits": z}


def test_dict_inputs_and_output_fn():
    seed, alpha = 6, 0.4
    x, _ = make_batch("mlp", 5, seed=1)
    plain = fisher_penalty(make_mlp(), x, alpha=alpha, generator=torch.Generator().manual_seed(seed))
    inputs = {"features": x, "scale": torch.ones(1, dtype=DT)}
    for model, kw in [(DictModel(), {}), (DictModel(as_tuple=True), {"output_fn": lambda out: out[0]})]:
        pen = fisher_penalty(model, inputs, alpha=alpha, generator=torch.Generator().manual_seed(seed), **kw)
        torch.testing.assert_close(pen, plain, rtol=TOL, atol=TOL)
        out = model(**inputs)
        shared = fisher_penalty(model, outputs=out, alpha=alpha, generator=torch.Generator().manual_seed(seed), **kw)
        torch.testing.assert_close(shared, plain, rtol=TOL, atol=TOL)
    with pytest.raises(TypeError, match="output_fn"):
        fisher_penalty(DictModel(as_tuple=True), inputs, alpha=alpha)


def test_own_forward_leaves_batchnorm_statistics():
    model = make_cnn(bn=True).train()
    x, _ = make_batch("cnn", 6, seed=5)
    before = [b.clone() for b in model.buffers()]
    fisher_penalty(model, x, alpha=0.1).backward()
    assert all(torch.equal(a, b) for a, b in zip(before, model.buffers()))
    model(x)  # the user's own forward pass updates them once
    assert not torch.equal(before[0], next(model.buffers()))


def test_bad_arguments():
    model = make_mlp()
    x, _ = make_batch("mlp", 4, seed=0)
    with pytest.raises(TypeError, match="inputs"):
        fisher_penalty(model, alpha=0.1)
    with pytest.raises(TypeError, match="tensor or a dict"):
        fisher_penalty(model, [x], alpha=0.1)
    with pytest.raises(ValueError, match="no autograd graph"):
        with torch.no_grad():
            out = model(x)
        fisher_penalty(model, outputs=out, alpha=0.1)
    for alpha in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="alpha"):
            fisher_penalty(model, x, alpha=alpha)
    with pytest.raises(TypeError, match="alpha"):
        fisher_penalty(model, x, alpha="0.1")
    with pytest.raises(ValueError, match="examples"):
        fisher_penalty(model, x, alpha=0.1, examples=0)
    with pytest.raises(ValueError, match="unknown likelihood"):
        fisher_penalty(model, x, alpha=0.1, likelihood="poisson")
    with torch.no_grad(), pytest.raises(RuntimeError, match="no_grad"):
        fisher_penalty(model, x, alpha=0.1)
    with pytest.raises(ValueError, match="every"):
        FisherPenaltyTerm(alpha=0.1, every=0)
    term = FisherPenaltyTerm(alpha=0.1, every=5)
    term(model, x)
    with pytest.raises(ValueError, match="reset"):
        term(make_mlp(dtype=torch.float32), x.float())
    term.reset()
    term(make_mlp(dtype=torch.float32), x.float())
    assert term.recomputed
    frozen = make_mlp().requires_grad_(False)
    with pytest.raises(ValueError, match="no parameters"):
        fisher_penalty(frozen, x, alpha=0.1)


# =========================================================================== the cached term


def _batches(n, B=6, kind="mlp"):
    return [make_batch(kind, B, seed=100 + i) for i in range(n)]


@pytest.mark.parametrize("source", ["outputs", "inputs"])
@pytest.mark.parametrize("use_step", [False, True])
def test_term_trains_like_the_regularizer(source, use_step):
    """25 steps of momentum SGD, f = 10, a CNN with BatchNorm: the same parameters and
    running statistics, to the last bit (the term's own forward pass, with ``inputs``,
    leaves the running statistics alone)."""
    seed, alpha, every = 9, 0.5, 10
    reg_model = make_cnn(bn=True)
    term_model = copy.deepcopy(reg_model)
    reg_opt = torch.optim.SGD(reg_model.parameters(), lr=0.1, momentum=0.9)
    term_opt = torch.optim.SGD(term_model.parameters(), lr=0.1, momentum=0.9)
    reg = FisherPenalty(alpha=alpha, every=every, seed=seed)
    term = FisherPenaltyTerm(alpha=alpha, every=every, seed=seed)
    recomputed = []
    for step, (x, y) in enumerate(_batches(25, kind="cnn")):
        reg_opt.zero_grad(set_to_none=True)
        out = reg.backward(reg_model, x, y, step=step, epoch=0)
        reg_opt.step()

        term_opt.zero_grad(set_to_none=True)
        logits = term_model(x)
        kw = {"step": step} if use_step else {}
        t = term(term_model, outputs=logits, **kw) if source == "outputs" else term(term_model, x, **kw)
        data = F.cross_entropy(logits, y)
        (data + t).backward()
        term_opt.step()

        assert term.recomputed == (out.penalty is not None)
        if term.recomputed:
            recomputed.append(step)
            last = alpha * out.penalty
        # the term's value: the penalty of the last recompute step
        assert torch.equal(t.detach(), last) and torch.equal(term.last_penalty, last)
        assert all(torch.equal(a, b) for a, b in zip(reg_model.parameters(), term_model.parameters())), step
        assert all(torch.equal(a, b) for a, b in zip(reg_model.buffers(), term_model.buffers())), step
    assert recomputed == [0, 10, 20]


def test_term_every_step_value_and_cache_reuse():
    """Between recomputes the gradient is the cached one, at moved parameters."""
    seed, alpha, every = 2, 0.7, 3
    model = make_mlp()
    term = FisherPenaltyTerm(alpha=alpha, every=every, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    cached = None
    for step, (x, y) in enumerate(_batches(7)):
        if step % every == 0:
            labels = ref_labels(model, x, gen)
            cached = ref_penalty_grad(model, x, labels, alpha)
            value = ref_penalty(model, params_of(model), x, labels, alpha).detach()
        zero_grad(model)
        logits = model(x)
        t = term(model, outputs=logits)
        (ce(logits, y) + t).backward()
        assert term.recomputed == (step % every == 0)
        torch.testing.assert_close(t.detach(), value, rtol=TOL, atol=TOL)
        assert_all_close(grads_of(model), [c + p for c, p in zip(ref_ce_grad(model, x, y), cached)])
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.3 * p.grad


def test_term_state_dict_resumes_exactly():
    seed, alpha = 5, 0.6
    batches = _batches(8)

    def train(model, term, steps):
        for x, y in steps:
            zero_grad(model)
            logits = model(x)
            (ce(logits, y) + term(model, outputs=logits)).backward()
            with torch.no_grad():
                for p in model.parameters():
                    p -= 0.2 * p.grad

    a = make_mlp()
    ta = FisherPenaltyTerm(alpha=alpha, every=3, seed=seed)
    train(a, ta, batches)
    b = make_mlp()
    tb = FisherPenaltyTerm(alpha=alpha, every=3, seed=seed)
    train(b, tb, batches[:4])
    state = copy.deepcopy(tb.state_dict())
    tc = FisherPenaltyTerm(alpha=alpha, every=3, seed=seed)
    tc.load_state_dict(state)
    train(b, tc, batches[4:])
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


# =========================================================================== AMP, accumulation


def test_bfloat16_autocast_step():
    torch.manual_seed(0)
    model = make_cnn(bn=True, dtype=torch.float32)
    x, y = make_batch("cnn", 8, seed=1, dtype=torch.float32)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    term = FisherPenaltyTerm(alpha=0.5, every=2, seed=0)
    for step in range(3):
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(x)
            assert logits.dtype == torch.bfloat16
            pen = fisher_penalty(model, outputs=logits, alpha=0.5)
            loss = F.cross_entropy(logits, y) + pen + term(model, outputs=logits)
        loss.backward()
        assert torch.isfinite(loss) and pen.item() > 0
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
        opt.step()


def test_gradient_accumulation_is_per_micro_batch():
    """Two half batches, loss / 2 each: p.grad = the mean of the halves' gradients of
    CE + alpha ||v_half||^2, which is not the full batch's penalty gradient."""
    seed, alpha = 13, 0.8
    model = make_mlp()
    x, y = make_batch("mlp", 8, seed=21)
    halves = [(x[:4], y[:4]), (x[4:], y[4:])]

    gen = torch.Generator().manual_seed(seed)
    zero_grad(model)
    for xh, yh in halves:
        logits = model(xh)
        ((F.cross_entropy(logits, yh) + fisher_penalty(model, outputs=logits, alpha=alpha, generator=gen)) / 2).backward()
    got = grads_of(model)

    ref_gen = torch.Generator().manual_seed(seed)
    expected = [torch.zeros_like(p) for p in model.parameters()]
    for xh, yh in halves:
        labels = ref_labels(model, xh, ref_gen)
        for e, c, p in zip(expected, ref_ce_grad(model, xh, yh), ref_penalty_grad(model, xh, labels, alpha)):
            e += (c + p) / 2
    assert_all_close(got, expected)
    full_labels = ref_labels(model, x, torch.Generator().manual_seed(seed))
    full = [c + p for c, p in zip(ref_ce_grad(model, x, y), ref_penalty_grad(model, x, full_labels, alpha))]
    assert max_diff(got, full) > 1e-4

    # the cached term with step=: both micro-batches of a recompute step get their own
    # penalty; the cache is their mean, added (1/2 + 1/2) on the next step
    term = FisherPenaltyTerm(alpha=alpha, every=3, seed=seed)
    ref_gen = torch.Generator().manual_seed(seed)
    pen_grads = [ref_penalty_grad(model, xh, ref_labels(model, xh, ref_gen), alpha) for xh, _ in halves]
    for step in (0, 1):
        zero_grad(model)
        for xh, yh in halves:
            logits = model(xh)
            ((F.cross_entropy(logits, yh) + term(model, outputs=logits, step=step)) / 2).backward()
            assert term.recomputed == (step == 0)
        ce_mean = [(a + b) / 2 for a, b in zip(ref_ce_grad(model, *halves[0]), ref_ce_grad(model, *halves[1]))]
        pen_mean = [(a + b) / 2 for a, b in zip(*pen_grads)]
        assert_all_close(grads_of(model), [c + p for c, p in zip(ce_mean, pen_mean)])


def test_grad_scaler_unscales_to_the_same_gradient():
    """GradScaler multiplies the loss by 2^k and divides p.grad by it again: the
    penalty's gradient (fresh or cached) comes out the same as without it."""
    seed, alpha = 3, 0.6
    results = []
    for scaled in (False, True):
        model = make_mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, enabled=scaled)
        term = FisherPenaltyTerm(alpha=alpha, every=2, seed=seed)
        gen = torch.Generator().manual_seed(seed)
        grads = []
        for x, y in _batches(3):
            opt.zero_grad(set_to_none=True)
            logits = model(x)
            loss = F.cross_entropy(logits, y) + term(model, outputs=logits)
            loss = loss + fisher_penalty(model, outputs=logits, alpha=alpha, generator=gen)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            grads.append(grads_of(model))
            scaler.step(opt)
            scaler.update()
        results.append(grads)
    for plain, scaled in zip(*results):
        assert_all_close(scaled, plain, tol=1e-12)


# =========================================================================== DDP


def _ddp_worker(rank: int, port: int, queue) -> None:
    import os

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    try:
        result = {}
        for kind in ("outputs", "inputs", "term"):
            model = make_mlp()
            ddp = DistributedDataParallel(model)
            term = FisherPenaltyTerm(alpha=0.5, every=2, seed=rank)
            gen = torch.Generator().manual_seed(rank)
            grads = []
            for step in range(3):
                x, y = make_batch("mlp", 6, seed=100 * step + rank)
                zero_grad(ddp)
                logits = ddp(x)
                if kind == "outputs":
                    pen = fisher_penalty(ddp, outputs=logits, alpha=0.5, generator=gen)
                elif kind == "inputs":
                    pen = fisher_penalty(ddp, x, alpha=0.5, generator=gen)
                else:
                    pen = term(ddp, outputs=logits, step=step)
                (F.cross_entropy(logits, y) + pen).backward()
                grads.append([p.grad.numpy().copy() for p in ddp.parameters()])
                with torch.no_grad():
                    for p in ddp.parameters():
                        p -= 0.1 * p.grad
            result[kind] = grads
        queue.put((rank, result))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_averages_the_per_rank_penalty_gradients():
    """2 gloo ranks on the CPU: p.grad after (CE + penalty).backward() through DDP is, on
    both ranks, the mean of what each rank's batch gives in one process (each rank
    penalises its own batch; DDP averages the gradients). ~20-60 s: it spawns."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_ddp_worker, args=(r, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=300) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0

    for kind in ("outputs", "inputs", "term"):
        model = make_mlp()
        terms = [FisherPenaltyTerm(alpha=0.5, every=2, seed=r) for r in range(2)]
        gens = [torch.Generator().manual_seed(r) for r in range(2)]
        for step in range(3):
            zero_grad(model)
            for r in range(2):
                x, y = make_batch("mlp", 6, seed=100 * step + r)
                logits = model(x)
                if kind == "term":
                    pen = terms[r](model, outputs=logits, step=step)
                else:
                    pen = fisher_penalty(model, outputs=logits, alpha=0.5, generator=gens[r])
                ((F.cross_entropy(logits, y) + pen) / 2).backward()
            expected = grads_of(model)
            for r in range(2):
                got = [torch.from_numpy(g) for g in results[r][kind][step]]
                assert_all_close(got, expected, tol=1e-12)
            with torch.no_grad():
                for p in model.parameters():
                    p -= 0.1 * p.grad

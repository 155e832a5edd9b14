"""Tests for fisherlab's curvature measurements against independent references.

Every reference here is computed without the code under test: dense Jacobians and
Hessians from ``torch.func``, brute-force loops of ordinary per-example backward passes,
and exact expectations from enumerating every label. All computations are in float64
(models are built with ``.double()``; the global default dtype is never changed).
"""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import randn, seeded
from torch import nn
from torch.func import functional_call, hessian, jacrev

from fisherlab import (
    build_model,
    eval_mode,
    gradient_cosine,
    mean_gradient,
    mean_gradient_sq_norm,
    per_example_grad_sq_norms,
    trace_fisher,
    trace_fisher_batch,
    trace_hessian,
)

DT = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# =========================================================================== helpers


def _randint(high: int, n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, high, (n,), generator=torch.Generator().manual_seed(seed))


def _trainable(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def brute_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Reference: (N, P) flat per-example gradients, one ordinary backward per example
    (model mode used as it is; ``.grad`` fields are reset to None afterwards)."""
    rows = []
    for i in range(len(x)):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1], reduction="sum").backward()
        rows.append(
            torch.cat(
                [
                    (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                    for _, p in _trainable(model)
                ]
            )
        )
    model.zero_grad(set_to_none=True)
    return torch.stack(rows)


def brute_sq_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Reference: ||g(x_i, y_i)||^2 from a loop of per-example backward passes, summing
    p.grad**2 over the trainable parameters."""
    out = []
    for i in range(len(x)):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1], reduction="sum").backward()
        out.append(sum(p.grad.pow(2).sum() for _, p in _trainable(model) if p.grad is not None))
    model.zero_grad(set_to_none=True)
    return torch.stack(out)


def brute_label_grads(model: nn.Module, x: torch.Tensor, num_classes: int):
    """Reference: (K, C, P) gradients g(x_i, y=c) for every example and label, and the
    (K, C) predictive probabilities, in eval mode, from ordinary backward passes."""
    model.eval()
    with torch.no_grad():
        probs = model(x).softmax(-1)
    grads = torch.stack(
        [brute_grads(model, x, torch.full((len(x),), c, dtype=torch.long)) for c in range(num_classes)],
        dim=1,
    )
    return grads, probs


def _flat_fn(model: nn.Module):
    """(flat params -> dict of trainable params), buffers, and the flat start vector."""
    named = _trainable(model)
    names = [n for n, _ in named]
    shapes = [p.shape for _, p in named]
    sizes = [p.numel() for _, p in named]
    flat0 = torch.cat([p.detach().reshape(-1) for _, p in named])
    buffers = {n: b.detach() for n, b in model.named_buffers()}

    def unflatten(flat):
        return {n: v.reshape(s) for n, v, s in zip(names, flat.split(sizes), shapes)}

    return unflatten, buffers, flat0


def jacobian_trace_fisher(model: nn.Module, x: torch.Tensor) -> float:
    """Reference Tr(F) = mean_i Tr(J_i^T Lambda_i J_i), J_i the (C, P) Jacobian of the
    logits w.r.t. all trainable parameters (torch.func.jacrev + functional_call) and
    Lambda_i = diag(p_i) - p_i p_i^T. Eval mode."""
    model.eval()
    unflatten, buffers, flat0 = _flat_fn(model)

    def logits(flat, xi):
        return functional_call(model, (unflatten(flat), buffers), (xi.unsqueeze(0),)).squeeze(0)

    total = 0.0
    for i in range(len(x)):
        J = jacrev(logits)(flat0, x[i])  # (C, P)
        p = logits(flat0, x[i]).softmax(-1)
        lam = torch.diag(p) - torch.outer(p, p)
        total += torch.trace(J.T @ lam @ J).item()
    return total / len(x)


def dense_hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Reference: the dense (P, P) Hessian of the mean CE loss w.r.t. the flattened
    trainable parameters (torch.func.hessian), eval mode."""
    model.eval()
    unflatten, buffers, flat0 = _flat_fn(model)

    def loss(flat):
        return F.cross_entropy(functional_call(model, (unflatten(flat), buffers), (x,)), y)

    return hessian(loss)(flat0)


# =========================================================================== models


class Scale(nn.Module):
    """x * s with a scalar parameter (SkipInit/Fixup-like): generic torch.func path."""

    def __init__(self):
        super().__init__()
        self.s = nn.Parameter(torch.tensor(1.3))

    def forward(self, x):
        return x * self.s


class SkipInitBlock(nn.Module):
    """x + alpha * conv(relu(x)): a module owning a parameter *and* a child layer."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.alpha = nn.Parameter(torch.tensor(0.7))

    def forward(self, x):
        return x + self.alpha * self.conv(torch.relu(x))


class TwiceUsed(nn.Module):
    """One Linear module called twice (whole-model torch.func fallback)."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(6, 5)
        self.shared = nn.Linear(5, 5)
        self.out = nn.Linear(5, 4)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        h = torch.tanh(self.shared(h))
        h = torch.tanh(self.shared(h))
        return self.out(h)


class SharedWeight(nn.Module):
    """Two Linear modules sharing one weight Parameter (whole-model fallback)."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(6, 5)
        self.a = nn.Linear(5, 5)
        self.b = nn.Linear(5, 5)
        self.b.weight = self.a.weight
        self.out = nn.Linear(5, 4)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        return self.out(torch.tanh(self.b(torch.tanh(self.a(h)))))


class FunctionalTied(nn.Module):
    """The output layer reuses ``fc.weight`` through F.linear outside its module (weight
    tying as in language models)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return F.linear(torch.tanh(self.fc(x)), self.fc.weight)


def make_mlp(seed: int = 0) -> nn.Module:
    """Linear(6,5) - tanh - Linear(5,4)."""
    return seeded(seed, lambda: nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4)).double())


def make_cnn(seed: int = 1) -> nn.Module:
    """Conv - BN2d (non-trivial running stats and affine) - ReLU - Conv(stride 2) - Linear;
    input (N, 2, 6, 6), 3 classes. Returned in eval mode."""

    def build():
        m = nn.Sequential(
            nn.Conv2d(2, 3, 3, padding=1),
            nn.BatchNorm2d(3),
            nn.ReLU(),
            nn.Conv2d(3, 4, 3, stride=2),
            nn.Flatten(),
            nn.Linear(16, 3),
        ).double()
        bn = m[1]
        with torch.no_grad():
            bn.running_mean.copy_(torch.tensor([0.3, -0.2, 0.1]))
            bn.running_var.copy_(torch.tensor([0.5, 2.0, 1.3]))
            bn.weight.copy_(torch.tensor([1.5, 0.7, -0.8]))
            bn.bias.copy_(torch.tensor([0.1, -0.3, 0.2]))
        return m.eval()

    return seeded(seed, build)


MLP_X = lambda n=5, seed=10: randn(n, 6, seed=seed)  # noqa: E731
CNN_X = lambda n=4, seed=11: randn(n, 2, 6, 6, seed=seed)  # noqa: E731

TINY = {
    "mlp": (make_mlp, MLP_X, 4),
    "cnn_bn": (make_cnn, CNN_X, 3),
}


# =========================================================================== 2. exact Tr(F)


@pytest.mark.parametrize("name", list(TINY))
@pytest.mark.parametrize(
    "kwargs",
    [{}, {"strategy": "ghost"}, {"strategy": "materialise"}, {"method": "func"}],
    ids=["auto", "ghost", "materialise", "func"],
)
def test_trace_fisher_exact_matches_jacobian(name, kwargs):
    """trace_fisher(exact=True) == mean_i Tr(J_i^T Lambda_i J_i) from dense Jacobians."""
    make, make_x, _ = TINY[name]
    model, x = make(), make_x()
    ref = jacobian_trace_fisher(model, x)
    got = trace_fisher(model, x, exact=True, **kwargs)
    assert isinstance(got, float)
    assert got == pytest.approx(ref, rel=1e-10, abs=0)


@pytest.mark.parametrize("name", list(TINY))
def test_trace_fisher_exact_equals_enumerated_label_norms(name):
    """exact=True == sum_y p(y|x) ||g(x,y)||^2 with brute-force per-label gradients, per
    example (return_per_example) and in mean."""
    make, make_x, C = TINY[name]
    model, x = make(), make_x()
    grads, probs = brute_label_grads(model, x, C)
    ref = (probs * grads.pow(2).sum(-1)).sum(1)
    per = trace_fisher(model, x, exact=True, return_per_example=True)
    assert per.shape == (len(x),)
    torch.testing.assert_close(per, ref, rtol=1e-10, atol=0)


# =========================================================================== 3. sampling


@pytest.fixture(scope="module")
def mlp_enumerated():
    """MLP, K=8 inputs: exact mu and per-draw sigma of ||g(x, yhat)||^2 over
    (x uniform in the set, yhat ~ p(y|x)), from brute-force per-label norms."""
    model, x = make_mlp(), MLP_X(8, seed=20)
    grads, probs = brute_label_grads(model, x, 4)
    norms = grads.pow(2).sum(-1)  # (K, C)
    mu = (probs * norms).sum(1).mean().item()
    second = (probs * norms.pow(2)).sum(1).mean().item()
    sigma = math.sqrt(second - mu**2)
    return model, x, mu, sigma, grads, probs


def test_trace_fisher_sampled_converges(mlp_enumerated):
    """|est - mu| <= 4 sigma / sqrt(N) for N = 64, 512, 4096, with the bound shrinking
    like 1/sqrt(N) (mu, sigma from enumeration)."""
    model, x, mu, sigma, _, _ = mlp_enumerated
    assert sigma > 0
    bounds = []
    for n, seed in [(64, 1), (512, 2), (4096, 3)]:
        xs = x.repeat(n // len(x), 1)
        est = trace_fisher(model, xs, generator=seed)
        bound = 4 * sigma / math.sqrt(n)
        assert abs(est - mu) <= bound, (n, est, mu, bound)
        bounds.append(bound)
    assert bounds[0] > bounds[1] > bounds[2]
    assert bounds[2] < 0.05 * mu  # the largest N pins the value down to a few percent


def test_trace_fisher_sampled_per_example_values_are_label_norms(mlp_enumerated):
    """Each sampled per-example value is ||g(x_i, y)||^2 for some label y."""
    model, x, _, _, grads, _ = mlp_enumerated
    norms = grads.pow(2).sum(-1)
    per = trace_fisher(model, x, generator=0, return_per_example=True)
    dist = (per[:, None] - norms).abs() / norms
    assert (dist.min(1).values < 1e-10).all()


def test_trace_fisher_seeding():
    """Same seed -> same value (int or Generator); different seeds -> different values."""
    model, x = make_mlp(), MLP_X(32, seed=21)
    a = trace_fisher(model, x, generator=7)
    assert trace_fisher(model, x, generator=7) == a
    assert trace_fisher(model, x, generator=torch.Generator().manual_seed(7)) == a
    others = {trace_fisher(model, x, generator=s) for s in range(8, 12)}
    assert a not in others and len(others) > 1


# =========================================================================== 4. per-layer


def _case_linear_2d():
    return make_mlp(), MLP_X(5), _randint(4, 5, 1)


def _case_linear_3d():
    """Linear layers on a (B, T, D) input (sequence dimension)."""
    m = seeded(2, lambda: nn.Sequential(
        nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 5), nn.Tanh(), nn.Flatten(), nn.Linear(20, 3)
    ).double())  # fmt: skip
    return m, randn(5, 4, 3, seed=2), _randint(3, 5, 2)


def _case_linear_nobias():
    m = seeded(3, lambda: nn.Sequential(
        nn.Linear(6, 5, bias=False), nn.Tanh(), nn.Linear(5, 4, bias=False)
    ).double())  # fmt: skip
    return m, MLP_X(5, seed=3), _randint(4, 5, 3)


def _case_conv_variants():
    """Stride, padding, dilation, groups>1, depthwise, rectangular kernel, no bias."""
    m = seeded(4, lambda: nn.Sequential(
        nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2), nn.ReLU(),
        nn.Conv2d(6, 6, (2, 3), stride=(1, 2), padding=(1, 0), groups=6, bias=False), nn.Tanh(),
        nn.Conv2d(6, 4, 1, bias=False), nn.Tanh(),
        nn.Flatten(), nn.Linear(4 * 6 * 2, 3),
    ).double())  # fmt: skip
    return m, randn(4, 4, 9, 9, seed=4), _randint(3, 4, 4)


def _case_bn2d_eval():
    return make_cnn(), CNN_X(), _randint(3, 4, 5)


def _set_bn(bn: nn.modules.batchnorm._BatchNorm, seed: int):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(bn.num_features, generator=g, dtype=DT))
        bn.running_var.copy_(torch.rand(bn.num_features, generator=g, dtype=DT) + 0.5)
        bn.weight.copy_(torch.randn(bn.num_features, generator=g, dtype=DT))
        bn.bias.copy_(torch.randn(bn.num_features, generator=g, dtype=DT))


def _case_bn1d_3d():
    """BatchNorm1d (eval) on a (B, C, L) input, after a Conv1d (generic path)."""
    m = seeded(6, lambda: nn.Sequential(
        nn.Conv1d(2, 3, 3), nn.BatchNorm1d(3), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 5, 3)
    ).double())  # fmt: skip
    _set_bn(m[1], 6)
    return m.eval(), randn(4, 2, 7, seed=6), _randint(3, 4, 6)


def _case_bn1d_2d():
    """BatchNorm1d (eval) on a (B, C) input: the usual MLP-with-BN layout."""
    m = seeded(7, lambda: nn.Sequential(
        nn.Linear(6, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 4)
    ).double())  # fmt: skip
    _set_bn(m[1], 7)
    return m.eval(), MLP_X(5, seed=7), _randint(4, 5, 7)


def _case_scale_layernorm():
    """A custom scalar-parameter module and a LayerNorm (generic torch.func path)."""
    m = seeded(8, lambda: nn.Sequential(
        nn.Linear(6, 5), Scale(), nn.Tanh(), nn.LayerNorm(5), nn.Linear(5, 4)
    ).double())  # fmt: skip
    with torch.no_grad():
        m[3].weight.mul_(1.7).add_(0.1)
        m[3].bias.add_(0.2)
    return m, MLP_X(5, seed=8), _randint(4, 5, 8)


def _case_skipinit_block():
    """A module owning a parameter and a child Conv (SkipInit residual block)."""
    m = seeded(9, lambda: nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), SkipInitBlock(3), nn.Flatten(), nn.Linear(3 * 5 * 5, 3)
    ).double())  # fmt: skip
    return m, randn(4, 2, 5, 5, seed=9), _randint(3, 4, 9)


def _case_frozen():
    """Frozen parameters (requires_grad=False) are excluded from the norm."""
    m = make_cnn(seed=10)
    m[0].weight.requires_grad_(False)
    m[0].bias.requires_grad_(False)
    m[1].weight.requires_grad_(False)  # BN keeps a trainable bias only
    m[5].bias.requires_grad_(False)
    return m, CNN_X(4, seed=10), _randint(3, 4, 10)


def _case_frozen_generic():
    """Frozen parameters of modules on the generic torch.func path are excluded too."""
    m, x, y = _case_scale_layernorm()
    m[1].s.requires_grad_(False)
    m[3].weight.requires_grad_(False)
    return m, x, y


def _case_module_twice():
    return seeded(11, lambda: TwiceUsed().double()), MLP_X(5, seed=11), _randint(4, 5, 11)


def _case_shared_weight():
    return seeded(12, lambda: SharedWeight().double()), MLP_X(5, seed=12), _randint(4, 5, 12)


def _case_inplace_relu():
    """nn.ReLU(inplace=True) right after a Conv modifies the recorded conv output."""
    m = seeded(13, lambda: nn.Sequential(
        nn.Conv2d(2, 3, 3), nn.ReLU(inplace=True), nn.Conv2d(3, 2, 3),
        nn.Flatten(), nn.Linear(2 * 2 * 2, 3),
    ).double())  # fmt: skip
    return m, randn(4, 2, 6, 6, seed=13), _randint(3, 4, 13)


def _case_conv_same_and_circular():
    """Conv2d(padding="same") (odd and even kernels, dilation) and circular padding."""
    m = seeded(14, lambda: nn.Sequential(
        nn.Conv2d(2, 3, 3, padding="same"), nn.Tanh(),
        nn.Conv2d(3, 3, (2, 3), padding="same", dilation=2), nn.Tanh(),
        nn.Conv2d(3, 2, 3, padding=1, padding_mode="circular"), nn.Tanh(),
        nn.Flatten(), nn.Linear(2 * 5 * 5, 3),
    ).double())  # fmt: skip
    return m, randn(4, 2, 5, 5, seed=14), _randint(3, 4, 14)


def _case_functional_tied():
    return seeded(15, lambda: FunctionalTied().double()), randn(5, 4, seed=15), _randint(4, 5, 15)


def _case_simple_cnn():
    m = seeded(16, lambda: build_model("simple_cnn", num_classes=10).double())
    return m, randn(3, 3, 32, 32, seed=16), _randint(10, 3, 16)


def _case_vgg11():
    m = seeded(17, lambda: build_model("vgg11", num_classes=100).double())
    return m, randn(2, 3, 32, 32, seed=17), _randint(100, 2, 17)


BOTH = ("ghost", "materialise")
CASES = [
    ("linear_2d", _case_linear_2d, ("auto", *BOTH)),
    ("linear_3d", _case_linear_3d, ("auto", *BOTH)),
    ("linear_nobias", _case_linear_nobias, BOTH),
    ("conv_variants", _case_conv_variants, ("auto", *BOTH)),
    ("bn2d_eval", _case_bn2d_eval, BOTH),
    ("bn1d_3d_eval", _case_bn1d_3d, ("auto",)),
    ("bn1d_2d_eval", _case_bn1d_2d, ("auto",)),
    ("scale_layernorm", _case_scale_layernorm, ("auto",)),
    ("skipinit_block", _case_skipinit_block, ("auto",)),
    ("frozen_params", _case_frozen, BOTH),
    ("frozen_generic", _case_frozen_generic, ("auto",)),
    ("module_called_twice", _case_module_twice, ("auto",)),
    ("shared_weight", _case_shared_weight, ("auto",)),
    ("inplace_relu_after_conv", _case_inplace_relu, ("auto",)),
    ("conv_same_circular", _case_conv_same_and_circular, ("auto",)),
    ("functional_tied_weight", _case_functional_tied, ("auto",)),
    ("simple_cnn", _case_simple_cnn, ("auto", *BOTH)),
    ("vgg11", _case_vgg11, ("auto",)),
]


def _params():
    for name, make, strategies in CASES:
        for s in strategies:
            yield pytest.param(make, s, id=f"{name}-{s}")


@pytest.mark.parametrize("make, strategy", list(_params()))
def test_per_example_norms_match_brute_force(make, strategy):
    """per_example_grad_sq_norms == loop of per-example backward passes (sum p.grad**2)."""
    model, x, y = make()
    ref = brute_sq_norms(model, x, y)
    got = per_example_grad_sq_norms(model, x, y, strategy=strategy, chunk_size=3)
    assert got.shape == (len(x),) and got.dtype == DT
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=0)


@pytest.mark.parametrize(
    "make", [_case_conv_variants, _case_scale_layernorm, _case_frozen, _case_frozen_generic]
)
def test_per_example_norms_func_method_matches_brute_force(make):
    """method="func" (whole-model vmap(grad)) == brute-force loop."""
    model, x, y = make()
    ref = brute_sq_norms(model, x, y)
    got = per_example_grad_sq_norms(model, x, y, method="func")
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=0)


# =========================================================================== 5. Tr(F_B)


@pytest.fixture(scope="module")
def mlp_batch_setup():
    """MLP, 8 inputs cut into batches of 2; per batch the exact mean and variance of
    ||(g(x1,y1) + g(x2,y2)) / 2||^2 over all C^2 label pairs weighted p(y1|x1) p(y2|x2)."""
    model, x = make_mlp(seed=30), MLP_X(8, seed=30)
    grads, probs = brute_label_grads(model, x, 4)
    means, variances = [], []
    for b in range(len(x) // 2):
        i, j = 2 * b, 2 * b + 1
        vals, wts = [], []
        for y1, y2 in itertools.product(range(4), repeat=2):
            vals.append(((grads[i, y1] + grads[j, y2]) / 2).pow(2).sum())
            wts.append(probs[i, y1] * probs[j, y2])
        vals, wts = torch.stack(vals), torch.stack(wts)
        m = (wts * vals).sum()
        means.append(m)
        variances.append((wts * (vals - m) ** 2).sum())
    return model, x, grads, probs, torch.stack(means), torch.stack(variances)


def test_trace_fisher_batch_enumeration_reference_is_consistent(mlp_batch_setup):
    """Sanity of the reference: E[Tr(F_B)] = (Tr F_i + Tr F_j) / 4 since E_y g(x, y) = 0."""
    _, _, grads, probs, means, _ = mlp_batch_setup
    trf = (probs * grads.pow(2).sum(-1)).sum(1)
    torch.testing.assert_close(means, (trf[0::2] + trf[1::2]) / 4, rtol=1e-10, atol=0)


def test_trace_fisher_batch_mean_over_seeds_converges(mlp_batch_setup):
    """The mean of trace_fisher_batch(batch_size=2) over S seeds is within 4 sigma/sqrt(S)
    of the enumerated expectation (sigma exact; the empirical std agrees with it)."""
    model, x, _, _, means, variances = mlp_batch_setup
    S = 400
    vals = torch.tensor([trace_fisher_batch(model, x, batch_size=2, generator=s) for s in range(S)])
    expected = means.mean().item()
    sigma = math.sqrt(variances.sum().item()) / len(means)  # std of one call (mean of 4 batches)
    assert abs(vals.mean().item() - expected) <= 4 * sigma / math.sqrt(S)
    assert 0.75 < vals.std().item() / sigma < 1.25


def test_trace_fisher_batch_single_batch_value_is_a_label_pair(mlp_batch_setup):
    """One batch of 2: the value is ||(g(x1,y1)+g(x2,y2))/2||^2 for some label pair."""
    model, x, grads, _, _, _ = mlp_batch_setup
    cands = torch.stack(
        [((grads[0, a] + grads[1, b]) / 2).pow(2).sum() for a, b in itertools.product(range(4), repeat=2)]
    )
    for seed in range(5):
        v = trace_fisher_batch(model, x[:2], generator=seed)
        assert ((cands - v).abs() / cands).min() < 1e-10


def test_trace_fisher_batch_is_mean_over_consecutive_batches():
    """With batch_size set: the mean of single-batch calls sharing one generator stream;
    a short last batch is dropped, unless it is the only batch."""
    model, x = make_mlp(seed=31), MLP_X(11, seed=31)
    got = trace_fisher_batch(model, x, batch_size=3, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    parts = [trace_fisher_batch(model, x[k : k + 3], generator=g) for k in (0, 3, 6)]
    assert got == pytest.approx(sum(parts) / 3, rel=1e-12)
    # the short last batch (2 examples) is dropped
    assert got == pytest.approx(trace_fisher_batch(model, x[:9], batch_size=3, generator=5), rel=1e-12)
    # a batch larger than the data: the only (short) batch is kept
    assert trace_fisher_batch(model, x[:2], batch_size=5, generator=3) == pytest.approx(
        trace_fisher_batch(model, x[:2], generator=3), rel=1e-12
    )


def test_trace_fisher_batch_one_example_equals_sampled_trace_fisher():
    """B=1: Tr(F_B) = ||g(x, yhat)||^2, the same draw as trace_fisher with that seed."""
    model, x = make_mlp(seed=32), MLP_X(1, seed=32)
    for seed in range(3):
        assert trace_fisher_batch(model, x, generator=seed) == pytest.approx(
            trace_fisher(model, x, generator=seed), rel=1e-10
        )


# =========================================================================== 6. Tr(H)


@pytest.fixture(scope="module")
def mlp_hessian():
    model, x = make_mlp(seed=40), MLP_X(10, seed=40)
    y = _randint(4, 10, 40)
    H = dense_hessian(model, x, y)
    return model, x, y, H


@pytest.mark.parametrize("distribution", ["rademacher", "gaussian"])
def test_trace_hessian_against_dense_hessian(mlp_hessian, distribution):
    """Hutchinson vs the trace of the dense Hessian; error within 5 reported stderr, and
    at M=1000 within 4 sqrt(Var[z^T H z] / M) from the exact probe variance."""
    model, x, y, H = mlp_hessian
    trH = torch.trace(H).item()
    if distribution == "rademacher":
        var = 2 * (H.pow(2).sum() - H.diagonal().pow(2).sum()).item()
    else:
        var = 2 * H.pow(2).sum().item()
    for M in (10, 100, 1000):
        est = trace_hessian(model, x, y, num_probes=M, distribution=distribution, generator=M)
        assert math.isfinite(est.stderr) and est.stderr > 0
        assert abs(est.estimate - trH) <= 5 * est.stderr, (M, est, trH)
        if M == 1000:
            exact_se = math.sqrt(var / M)
            assert abs(est.estimate - trH) <= 4 * exact_se
            assert 0.8 < est.stderr / exact_se < 1.25  # stderr = std over probes / sqrt(M)


def test_trace_hessian_cnn_bn_against_dense_hessian():
    """The same on the BN CNN (eval mode, running statistics)."""
    model, x = make_cnn(seed=41), CNN_X(6, seed=41)
    y = _randint(3, 6, 41)
    H = dense_hessian(model, x, y)
    est = trace_hessian(model, x, y, num_probes=200, generator=1)
    var = 2 * (H.pow(2).sum() - H.diagonal().pow(2).sum()).item()
    assert abs(est.estimate - torch.trace(H).item()) <= 4 * math.sqrt(var / 200)


def test_trace_hessian_chunking_and_seeding(mlp_hessian):
    """chunk_size < N gives the same estimate as one chunk for the same seed; int seed ==
    Generator with that seed; different seeds differ."""
    model, x, y, _ = mlp_hessian
    one = trace_hessian(model, x, y, num_probes=20, generator=3)
    chunked = trace_hessian(model, x, y, num_probes=20, generator=3, chunk_size=3)
    assert chunked.estimate == pytest.approx(one.estimate, rel=1e-10)
    assert chunked.stderr == pytest.approx(one.stderr, rel=1e-10)
    gen = trace_hessian(model, x, y, num_probes=20, generator=torch.Generator().manual_seed(3))
    assert gen == one
    assert trace_hessian(model, x, y, num_probes=20, generator=4).estimate != one.estimate


def test_trace_hessian_rejects_bad_arguments(mlp_hessian):
    model, x, y, _ = mlp_hessian
    with pytest.raises(ValueError):
        trace_hessian(model, x, y, num_probes=0)
    with pytest.raises(ValueError):
        trace_hessian(model, x, y, distribution="uniform")


# =========================================================================== 7. gradients


@pytest.mark.parametrize("name", list(TINY))
def test_mean_gradient_matches_brute_force(name):
    """mean_gradient == mean of per-example gradients from a backward loop (eval mode);
    mean_gradient_sq_norm == its squared norm; chunking does not matter."""
    make, make_x, C = TINY[name]
    model, x = make(), make_x(7)
    y = _randint(C, 7, 50)
    model.eval()
    ref = brute_grads(model, x, y).mean(0)
    got = mean_gradient(model, x, y)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(mean_gradient(model, x, y, chunk_size=2), ref, rtol=1e-10, atol=1e-14)
    assert mean_gradient_sq_norm(model, x, y, chunk_size=3) == pytest.approx(
        ref.pow(2).sum().item(), rel=1e-10
    )


def test_gradient_cosine_matches_brute_force():
    """gradient_cosine == dot / norms of brute-force mean gradients; self-cosine is 1."""
    model, x = make_mlp(seed=51), MLP_X(9, seed=51)
    y = _randint(4, 9, 51)
    ga = brute_grads(model, x[:4], y[:4]).mean(0)
    gb = brute_grads(model, x[4:], y[4:]).mean(0)
    ref = (torch.dot(ga, gb) / (ga.norm() * gb.norm())).item()
    assert gradient_cosine(model, (x[:4], y[:4]), (x[4:], y[4:])) == pytest.approx(ref, rel=1e-10)
    assert gradient_cosine(model, (x[:4], y[:4]), (x[:4], y[:4])) == pytest.approx(1.0, abs=1e-12)
    assert gradient_cosine(model, (x[:4], y[:4]), (x[:4], y[:4]), chunk_size=3) == pytest.approx(1.0, abs=1e-12)


# =========================================================================== 8. side effects


def _train_mode_bn_model():
    """The BN CNN in train mode, except the last Linear left in eval mode; some .grad set."""
    model = make_cnn(seed=60).train()
    model[5].eval()
    model[0].weight.grad = randn(*model[0].weight.shape, seed=61)
    model[1].bias.grad = randn(3, seed=62)
    return model


MEASUREMENTS = {
    "trace_fisher": lambda m, x, y: trace_fisher(m, x, generator=0),
    "trace_fisher_exact": lambda m, x, y: trace_fisher(m, x, exact=True, chunk_size=2),
    "trace_fisher_func": lambda m, x, y: trace_fisher(m, x, generator=0, method="func"),
    "trace_fisher_batch": lambda m, x, y: trace_fisher_batch(m, x, batch_size=2, generator=0),
    "trace_hessian": lambda m, x, y: trace_hessian(m, x, y, num_probes=3, generator=0),
    "mean_gradient": lambda m, x, y: mean_gradient(m, x, y),
    "mean_gradient_sq_norm": lambda m, x, y: mean_gradient_sq_norm(m, x, y),
    "gradient_cosine": lambda m, x, y: gradient_cosine(m, (x[:2], y[:2]), (x[2:], y[2:])),
}


@pytest.mark.parametrize("name", list(MEASUREMENTS))
def test_measurements_have_no_side_effects(name):
    """Modes of every module, parameters, buffers (BN running stats), .grad fields and the
    global RNG are all unchanged by a measurement given a seed."""
    model = _train_mode_bn_model()
    x, y = CNN_X(4, seed=63), _randint(3, 4, 63)
    flags = [m.training for m in model.modules()]
    state = copy.deepcopy(model.state_dict())
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    rng = torch.get_rng_state()

    MEASUREMENTS[name](model, x, y)

    assert [m.training for m in model.modules()] == flags
    after = model.state_dict()
    for k, v in state.items():
        assert torch.equal(after[k], v), k
    for p, g in zip(model.parameters(), grads):
        if g is None:
            assert p.grad is None
        else:
            assert torch.equal(p.grad, g)
    assert torch.equal(torch.get_rng_state(), rng)


@pytest.mark.parametrize("name", list(MEASUREMENTS))
def test_measurements_free_their_activations(name):
    """No activation outlives a measurement: every tensor a layer returned is freed once
    the call returns, even after a collection (a reference cycle through the autograd
    graph, e.g. from tensor hooks, is invisible to the garbage collector and leaks the
    whole forward pass on every call)."""
    import gc
    import weakref

    model = _train_mode_bn_model()
    x, y = CNN_X(4, seed=64), _randint(3, 4, 64)
    outputs: list[weakref.ref] = []
    handles = [
        m.register_forward_hook(lambda _m, _a, out: outputs.append(weakref.ref(out)))
        for m in model.modules()
        if list(m.parameters(recurse=False))
    ]
    MEASUREMENTS[name](model, x, y)
    for h in handles:
        h.remove()
    gc.collect()
    assert outputs, "no layer ran"
    alive = sum(r() is not None for r in outputs)
    assert alive == 0, f"{alive} of {len(outputs)} layer outputs still alive"


def test_eval_mode_restores_each_flag():
    model = _train_mode_bn_model()
    flags = [m.training for m in model.modules()]
    with eval_mode(model) as m:
        assert m is model
        assert not any(mod.training for mod in model.modules())
    assert [m.training for m in model.modules()] == flags


# =========================================================================== 9. BN train mode


def test_per_example_norms_reject_batchnorm_in_train_mode():
    """Per-example gradients are undefined with batch statistics: ValueError; trace_fisher
    switches to eval mode itself and equals the eval-mode Jacobian reference."""
    model = make_cnn(seed=70).train()
    x = CNN_X(4, seed=70)
    with pytest.raises(ValueError, match="BatchNorm"):
        per_example_grad_sq_norms(copy.deepcopy(model), x, _randint(3, 4, 70))
    got = trace_fisher(model, x, exact=True)
    assert model.training
    assert got == pytest.approx(jacobian_trace_fisher(copy.deepcopy(model), x), rel=1e-10)


# =========================================================================== 10. chunking


@pytest.mark.parametrize("name", list(TINY))
def test_trace_fisher_chunking(name):
    """exact=True: chunk_size 3 == chunk_size 1000 (1e-12); sampled: same seed, different
    chunking gives a valid draw; return_per_example has shape (N,) and mean == scalar."""
    make, make_x, _ = TINY[name]
    model, x = make(), make_x(7)
    small = trace_fisher(model, x, exact=True, chunk_size=3)
    big = trace_fisher(model, x, exact=True, chunk_size=1000)
    assert small == pytest.approx(big, rel=1e-12)
    per = trace_fisher(model, x, exact=True, chunk_size=3, return_per_example=True)
    assert per.shape == (len(x),) and per.dtype == DT
    assert per.mean().item() == pytest.approx(big, rel=1e-12)
    per_s = trace_fisher(model, x, generator=0, chunk_size=2, return_per_example=True)
    assert per_s.shape == (len(x),)
    assert per_s.mean().item() == pytest.approx(trace_fisher(model, x, generator=0, chunk_size=2), rel=1e-12)

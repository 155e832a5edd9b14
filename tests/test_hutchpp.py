"""Tests for the trace estimators of ``fisherlab.curvature``: Hutchinson and Hutch++
(Meyer, Musco, Musco & Woodruff, SOSA 2021) on explicit matrices, and
``trace_hessian(method="hutchpp")`` against the dense Hessian of small networks.

References are computed without the code under test: dense matrices with a known
spectrum, dense Hessians from ``torch.func.hessian`` over the flattened parameters, and
a copy of the original Hutchinson loop of ``trace_hessian`` (the default must stay
bit-identical). The statistical tests run each estimator over many fixed seeds and
judge the mean by its measured standard error (4 s.e.). Float64 throughout. Run with
``-s`` to see the measured variances.
"""

from __future__ import annotations

import copy
import gc
import math
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, hessian

from fisherlab.curvature import (
    _probe,
    hessian_matmat,
    hutchinson_trace,
    hutchpp_trace,
    trace_hessian,
    trainable_parameters,
)

DT = torch.float64
M = 30  # the paper's number of probes
SEEDS = range(500)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# =========================================================================== references


def spectral_matrix(eigenvalues: torch.Tensor, seed: int) -> torch.Tensor:
    """U diag(eigenvalues) U^T with U a random orthogonal matrix."""
    d = len(eigenvalues)
    U, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=DT))
    return (U * eigenvalues) @ U.T


def decaying_psd(d: int = 200) -> torch.Tensor:
    """PSD, eigenvalues 1/i, i = 1..d (polynomial decay)."""
    return spectral_matrix(1.0 / torch.arange(1, d + 1, dtype=DT), seed=0)


def dense_hessian(model: nn.Module, x, y) -> torch.Tensor:
    """(P, P) Hessian of the mean CE w.r.t. the flattened trainable parameters, eval mode."""
    model.eval()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    names, shapes, sizes = [n for n, _ in named], [p.shape for _, p in named], [p.numel() for _, p in named]
    buffers = {n: b.detach() for n, b in model.named_buffers()}
    flat = torch.cat([p.detach().reshape(-1) for _, p in named])

    def loss(f):
        params = {n: v.reshape(s) for n, v, s in zip(names, f.split(sizes), shapes)}
        return F.cross_entropy(functional_call(model, (params, buffers), (x,)), y)

    return hessian(loss)(flat)


def mlp_problem(train_steps: int):
    """MLP 6-8-4 (tanh), 64 examples labelled by a linear teacher, after ``train_steps``
    full-batch GD steps (lr 0.5): (model, x, y)."""
    g = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4)).to(DT)
    x = torch.randn(64, 6, generator=g, dtype=DT)
    y = (x @ torch.randn(6, 4, generator=g, dtype=DT)).argmax(1)
    for _ in range(train_steps):
        grads = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
        with torch.no_grad():
            for p, g in zip(model.parameters(), grads):
                p -= 0.5 * g
    return model, x, y


def bn_cnn_problem():
    """Conv - BN (non-trivial running statistics) - ReLU - Linear; measured in eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        m = nn.Sequential(
            nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 16, 3)
        ).to(DT)
    with torch.no_grad():
        m[1].running_mean.copy_(torch.tensor([0.3, -0.2, 0.1]))
        m[1].running_var.copy_(torch.tensor([0.5, 2.0, 1.3]))
        m[1].weight.copy_(torch.tensor([1.5, 0.7, -0.8]))
    g = torch.Generator().manual_seed(2)
    return m, torch.randn(7, 2, 4, 4, generator=g, dtype=DT), torch.randint(0, 3, (7,), generator=g)


@pytest.fixture(scope="module")
def psd() -> torch.Tensor:
    return decaying_psd()


@pytest.fixture(scope="module")
def trained_mlp():
    model, x, y = mlp_problem(train_steps=200)
    return model, x, y, dense_hessian(model, x, y)


def hutchinson_rademacher_variance(A: torch.Tensor, m: int) -> float:
    """Exact Var of Hutchinson with m Rademacher probes: 2 (||A||_F^2 - sum A_ii^2) / m."""
    return 2 * (A.pow(2).sum() - A.diagonal().pow(2).sum()).item() / m


_RUNS: dict = {}


def over_seeds(estimator, A: torch.Tensor, distribution: str = "rademacher"):
    """(estimates, stderrs) of ``estimator`` on A with budget M, one run per seed
    (memoised per matrix object, which module fixtures keep alive: the calibration test
    reuses the runs of the others)."""
    key = (estimator.__name__, distribution, id(A))
    if key not in _RUNS:
        runs = [estimator(lambda V: A @ V, A.shape[0], M, distribution=distribution, generator=s) for s in SEEDS]
        _RUNS[key] = (torch.tensor([r.estimate for r in runs], dtype=DT),
                      torch.tensor([r.stderr for r in runs], dtype=DT))  # fmt: skip
    return _RUNS[key]


def check_unbiased(est: torch.Tensor, truth: float, label: str) -> float:
    """|mean - tr(A)| <= 4 measured standard errors of the mean; returns the variance."""
    se = est.std().item() / math.sqrt(len(est))
    assert abs(est.mean().item() - truth) <= 4 * se, (label, est.mean().item(), truth, se)
    return est.var().item()


def compare(A: torch.Tensor, label: str, distribution: str = "rademacher") -> tuple[float, float]:
    truth = torch.trace(A).item()
    var_h = check_unbiased(over_seeds(hutchinson_trace, A, distribution)[0], truth, f"{label} hutchinson")
    var_pp = check_unbiased(over_seeds(hutchpp_trace, A, distribution)[0], truth, f"{label} hutch++")
    print(f"\n[{label}, {distribution}, M={M}, {len(SEEDS)} seeds] tr = {truth:.6g}: "
          f"Var Hutchinson = {var_h:.4g}, Var Hutch++ = {var_pp:.4g}, ratio = {var_pp / var_h:.4f}")  # fmt: skip
    return var_h, var_pp


# =========================================================================== statistics


@pytest.mark.parametrize("distribution", ["rademacher", "gaussian"])
def test_dense_psd_decaying_spectrum(psd, distribution):
    """200 x 200 PSD, eigenvalues 1/i: both unbiased; Var Hutch++ <= Var Hutchinson / 2;
    Hutchinson's measured variance matches its closed form."""
    A = psd
    var_h, var_pp = compare(A, "dense 200x200 PSD, eigenvalues 1/i", distribution)
    assert var_pp <= 0.5 * var_h
    exact = hutchinson_rademacher_variance(A, M) if distribution == "rademacher" else 2 * A.pow(2).sum().item() / M
    assert 0.85 < var_h / exact < 1.15


def test_network_hessian_trained(trained_mlp):
    """The exact Hessian (92 x 92, indefinite) of a small trained network: both unbiased;
    Var Hutch++ <= Var Hutchinson / 2 (a few outlier eigenvalues carry most of ||H||_F)."""
    _, _, _, H = trained_mlp
    var_h, var_pp = compare(H, "MLP 6-8-4 exact Hessian after 200 GD steps")
    assert var_pp <= 0.5 * var_h


def test_network_hessian_at_initialisation():
    """At initialisation the spectrum has no outliers yet: both stay unbiased, but
    Hutch++ has no variance advantage there (printed, not asserted)."""
    model, x, y = mlp_problem(train_steps=0)
    compare(dense_hessian(model, x, y), "MLP 6-8-4 exact Hessian at initialisation")


@pytest.mark.parametrize("estimator", [hutchinson_trace, hutchpp_trace])
def test_standard_error_is_calibrated(psd, estimator):
    """E[stderr^2] == Var(estimate): the mean of stderr^2 over the seeds is within 25% of
    the variance of the estimates (for Hutch++: the deflated probes' spread given Q)."""
    est, se = over_seeds(estimator, psd)
    assert 0.75 < se.pow(2).mean().item() / est.var().item() < 1.25


# =========================================================================== exactness, budget


def test_hutchpp_exact_on_low_rank_and_small_matrices():
    """rank(A) = 5 <= k = 10: Q spans range(A) and the estimate is tr(A) (stderr ~ 0);
    likewise when k >= dim."""
    lam = torch.zeros(200, dtype=DT)
    lam[:5] = torch.tensor([5.0, -3.0, 2.0, 1.0, 0.5])
    low = spectral_matrix(lam, seed=1)
    small = spectral_matrix(torch.tensor([2.0, -1.0, 0.3, 4.0, 1.5], dtype=DT), seed=2)
    for A in (low, small):
        for seed in range(3):
            est = hutchpp_trace(lambda V: A @ V, A.shape[0], M, generator=seed)
            assert est.estimate == pytest.approx(torch.trace(A).item(), abs=1e-10)
            assert est.stderr < 1e-10
    # Hutchinson is not exact on the same matrix (the comparison is not vacuous)
    assert abs(hutchinson_trace(lambda V: low @ V, 200, M, generator=0).estimate - 5.5) > 1e-3


@pytest.mark.parametrize("budget", [*range(1, 13), 30, 31, 32])
def test_hutchpp_budget_and_rounding(psd, budget):
    """Exactly M products in all: floor(M/3) for the sketch, then floor(M/3) + (M - 2
    floor(M/3)) in one call (the leftover one or two go to the deflated Hutchinson part);
    M < 3 is plain Hutchinson (one call)."""
    A = psd
    calls = []

    def matmat(V):
        calls.append(V.shape[1])
        return A @ V

    est = hutchpp_trace(matmat, 200, budget, generator=0)
    k = budget // 3
    assert sum(calls) == budget
    assert calls == ([k, k + budget - 2 * k] if k else [budget])
    assert math.isfinite(est.estimate)
    assert math.isfinite(est.stderr) == (budget - 2 * k >= 2)


def test_estimators_reject_bad_arguments():
    A = decaying_psd(10)
    for estimator in (hutchinson_trace, hutchpp_trace):
        with pytest.raises(ValueError):
            estimator(lambda V: A @ V, 10, 0)
        with pytest.raises(ValueError, match="distribution"):
            estimator(lambda V: A @ V, 10, 6, distribution="uniform")


# =========================================================================== trace_hessian


def _hutchpp_seed(seed: int) -> int:
    """The seed trace_hessian(method='hutchpp') gives hutchpp_trace (see its docstring)."""
    return torch.randint(0, 2**62, (1,), generator=torch.Generator().manual_seed(seed)).item()


@pytest.mark.parametrize("problem", ["trained_mlp", "bn_cnn"])
@pytest.mark.parametrize("distribution", ["rademacher", "gaussian"])
def test_trace_hessian_hutchpp_is_hutchpp_on_the_dense_hessian(request, problem, distribution):
    """trace_hessian(method='hutchpp') == hutchpp_trace on the dense torch.func Hessian
    with the same probes (1e-10), chunked or not; hessian_matmat == H @ V."""
    if problem == "trained_mlp":
        model, x, y, H = request.getfixturevalue("trained_mlp")
    else:
        model, x, y = bn_cnn_problem()
        H = dense_hessian(model, x, y)
    V = torch.randn(H.shape[0], 4, generator=torch.Generator().manual_seed(5), dtype=DT)
    matmat, dim = hessian_matmat(model, x, y, chunk_size=3)
    assert dim == H.shape[0]
    torch.testing.assert_close(matmat(V), H @ V, rtol=0, atol=1e-12)
    for seed in range(2):
        ref = hutchpp_trace(lambda W: H @ W, dim, M, distribution=distribution, generator=_hutchpp_seed(seed))
        for chunk in (1000, 16 if problem == "trained_mlp" else 3):
            got = trace_hessian(model, x, y, num_probes=M, distribution=distribution, generator=seed,
                                chunk_size=chunk, method="hutchpp")  # fmt: skip
            assert got.estimate == pytest.approx(ref.estimate, rel=1e-10)
            assert got.stderr == pytest.approx(ref.stderr, rel=1e-8)
    same = trace_hessian(model, x, y, num_probes=M, generator=torch.Generator().manual_seed(0), method="hutchpp")
    assert same == trace_hessian(model, x, y, num_probes=M, generator=0, method="hutchpp")


def legacy_trace_hessian(model, inputs, targets, num_probes, distribution, generator, chunk_size):
    """A copy of trace_hessian's loop before Hutch++ was added (the default must match it
    bit for bit)."""
    gen = torch.Generator().manual_seed(generator)
    seeds = torch.randint(0, 2**62, (num_probes,), generator=gen).tolist()
    params = trainable_parameters(model)
    quad = torch.zeros(num_probes, dtype=torch.float64)
    n = len(inputs)
    model.eval()
    for xc, yc in zip(inputs.split(chunk_size), targets.split(chunk_size)):
        loss = F.cross_entropy(model(xc), yc, reduction="sum") / n
        grads = torch.autograd.grad(loss, params, create_graph=True)
        for m, seed in enumerate(seeds):
            z = _probe(params, seed, distribution)
            hz = torch.autograd.grad(grads, params, grad_outputs=z, retain_graph=True)
            quad[m] += sum((zi * hi).sum() for zi, hi in zip(z, hz)).item()
    return quad.mean().item(), quad.std().item() / math.sqrt(num_probes)


@pytest.mark.parametrize("distribution", ["rademacher", "gaussian"])
def test_default_method_is_bit_identical_to_the_original_loop(trained_mlp, distribution):
    model, x, y, _ = trained_mlp
    for chunk in (1000, 16):
        ref = legacy_trace_hessian(copy.deepcopy(model), x, y, 30, distribution, 4, chunk)
        got = trace_hessian(model, x, y, num_probes=30, distribution=distribution, generator=4, chunk_size=chunk)
        assert tuple(got) == ref
        assert trace_hessian(model, x, y, num_probes=30, distribution=distribution, generator=4,
                             chunk_size=chunk, method="hutchinson") == got  # fmt: skip


def test_trace_hessian_rejects_unknown_method(trained_mlp):
    model, x, y, _ = trained_mlp
    with pytest.raises(ValueError, match="hutchpp"):
        trace_hessian(model, x, y, method="hutch")


def test_hutchpp_has_no_side_effects_and_frees_activations():
    """Module modes, parameters, buffers, .grad fields and the global RNG are unchanged
    (seeded); every layer output is freed after the call."""
    model, x, y = bn_cnn_problem()
    model.train()
    model[4].eval()
    model[0].weight.grad = torch.ones_like(model[0].weight)
    flags = [m.training for m in model.modules()]
    state = copy.deepcopy(model.state_dict())
    rng = torch.get_rng_state()
    outputs = []
    handles = [m.register_forward_hook(lambda _m, _a, out: outputs.append(weakref.ref(out)))
               for m in model.modules() if list(m.parameters(recurse=False))]  # fmt: skip

    trace_hessian(model, x, y, num_probes=7, generator=0, chunk_size=4, method="hutchpp")

    for h in handles:
        h.remove()
    assert [m.training for m in model.modules()] == flags
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert torch.equal(model[0].weight.grad, torch.ones_like(model[0].weight))
    assert all(p.grad is None for n, p in model.named_parameters() if n != "0.weight")
    assert torch.equal(torch.get_rng_state(), rng)
    gc.collect()
    assert outputs and all(r() is None for r in outputs)

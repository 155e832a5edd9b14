"""Independent cross-checks of the curvature measurements against other libraries
(issue 22, part 6).

- Tr(F) (Eq. 2) per example against BackPACK's ``BatchL2Grad`` extension
  (backpack-for-pytorch 1.7.1, tested with torch 2.14.1): the same labels, sampled from
  the model with the same generator, then ||g(x_i, yhat_i)||^2 from BackPACK. BackPACK's
  per-example gradients are those of the *reduced* loss: with
  ``CrossEntropyLoss(reduction="sum")`` ``batch_l2`` is ||g_i||^2 itself, with
  ``reduction="mean"`` it is ||g_i / N||^2, so N^2 times it is ||g_i||^2.
- Tr(H) (Supplement B) against curvlinops' ``HessianLinearOperator``
  (curvlinops-for-pytorch 3.0.1): the trace of the dense Hessian that curvlinops
  builds (its operator applied to the identity) against fisherlab's
  :func:`hessian_matmat` on the identity, Hutch++ with k >= dim (exact) and the
  Hutchinson estimate within 5 of its standard errors; for the cross-entropy and for the
  Gaussian likelihood (curvlinops' ``MSELoss(reduction="sum")`` / (2 sigma^2 N)).

Both libraries are test dependencies, installed in CI; ``importorskip`` only guards a
checkout without them. Models are small and in float64, so agreement is to rounding.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from fisherlab import Categorical, Gaussian, per_example_grad_sq_norms, trace_fisher, trace_hessian
from fisherlab.curvature import hessian_matmat

backpack = pytest.importorskip("backpack")
curvlinops = pytest.importorskip("curvlinops")

DT = torch.float64
pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing")  # BackPACK's hooks on a no-grad input


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def conv_net(seed: int) -> nn.Module:
    """Convolutions of stride 1 and 2 with padding (the closed forms' geometries), ReLU,
    max pooling, dense layers."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(),
        nn.Conv2d(4, 3, 3, stride=2, padding=1), nn.Tanh(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(3 * 2 * 2, 6), nn.Sigmoid(), nn.Linear(6, 5),
    ).to(DT)  # fmt: skip


def small_conv_net(seed: int) -> nn.Module:
    """112 parameters: a dense Hessian in a second."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 2, 3, padding=1), nn.ReLU(), nn.Conv2d(2, 2, 3, stride=2, padding=1), nn.Tanh(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2 * 2 * 2, 4),
    ).to(DT)  # fmt: skip


def _x(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 2, 8, 8, generator=_gen(seed), dtype=DT)


def backpack_sq_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor, reduction: str) -> torch.Tensor:
    """sum over the parameters of BackPACK's batch_l2: per-example squared gradient norms
    of the reduced cross-entropy."""
    from backpack import backpack as bp, extend
    from backpack.extensions import BatchL2Grad

    model = extend(copy.deepcopy(model))
    loss = extend(nn.CrossEntropyLoss(reduction=reduction))(model(x), y)
    with bp(BatchL2Grad()):
        loss.backward()
    return sum(p.batch_l2 for p in model.parameters())


@pytest.mark.parametrize("strategy", ["auto", "ghost", "materialise"])
def test_trace_fisher_against_backpack_batch_l2(strategy):
    model, x = conv_net(0), _x(9, 0)
    with torch.no_grad():
        yhat = Categorical().sample(model.eval()(x), _gen(1))
    ours = trace_fisher(model, x, generator=1, strategy=strategy, return_per_example=True)
    torch.testing.assert_close(ours, backpack_sq_norms(model, x, yhat, "sum"), rtol=1e-10, atol=0)
    # reduction="mean": BackPACK's per-example gradients are g_i / N
    torch.testing.assert_close(ours, backpack_sq_norms(model, x, yhat, "mean") * len(x) ** 2, rtol=1e-10, atol=0)
    assert trace_fisher(model, x, generator=1, strategy=strategy) == pytest.approx(
        backpack_sq_norms(model, x, yhat, "sum").mean().item(), rel=1e-10)  # fmt: skip


def test_per_example_norms_against_backpack_in_chunks():
    model, x = conv_net(2), _x(11, 2)
    y = torch.randint(0, 5, (11,), generator=_gen(2))
    ref = backpack_sq_norms(model, x, y, "sum")
    torch.testing.assert_close(per_example_grad_sq_norms(model, x, y, chunk_size=4), ref, rtol=1e-10, atol=0)
    torch.testing.assert_close(per_example_grad_sq_norms(model, x, y, method="func"), ref, rtol=1e-10, atol=0)


def curvlinops_dense_hessian(model, loss_func, batches) -> torch.Tensor:
    params = [p for p in model.parameters() if p.requires_grad]
    H = curvlinops.HessianLinearOperator(model, loss_func, params, batches)
    dim = sum(p.numel() for p in params)
    return H @ torch.eye(dim, dtype=DT)


def test_trace_hessian_against_curvlinops():
    """Cross-entropy, mean over 10 examples in batches of 4, 4, 2 (curvlinops' mean
    reduction weights the batches by their sizes, as fisherlab does)."""
    model, x = small_conv_net(3).eval(), _x(10, 3)
    y = torch.randint(0, 4, (10,), generator=_gen(3))
    batches = [(x[:4], y[:4]), (x[4:8], y[4:8]), (x[8:], y[8:])]
    H = curvlinops_dense_hessian(model, nn.CrossEntropyLoss(), batches)
    trace = torch.trace(H).item()
    matmat, dim = hessian_matmat(model, x, y)
    torch.testing.assert_close(matmat(torch.eye(dim, dtype=DT)), H, rtol=1e-8, atol=1e-11)
    matmat, _ = hessian_matmat(model, batches)
    assert torch.trace(matmat(torch.eye(dim, dtype=DT))).item() == pytest.approx(trace, rel=1e-9)
    exact = trace_hessian(model, batches, num_probes=3 * dim + 3, method="hutchpp", generator=0)
    assert exact == pytest.approx(trace, rel=1e-9)
    est = trace_hessian(model, x, y, num_probes=100, generator=1)
    assert abs(est - trace) <= 5 * est.stderr


def test_gaussian_trace_hessian_against_curvlinops_mse():
    """Gaussian(sigma): loss_i = ||y_i - f_i||^2 / (2 sigma^2), so the Hessian of the mean
    is curvlinops' MSELoss(reduction="sum") Hessian / (2 sigma^2 N)."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).to(DT)
    x = torch.randn(7, 3, generator=_gen(4), dtype=DT)
    y = torch.randn(7, 2, generator=_gen(5), dtype=DT)
    sigma = 0.6
    H = curvlinops_dense_hessian(model, nn.MSELoss(reduction="sum"), [(x, y)]) / (2 * sigma**2 * 7)
    matmat, dim = hessian_matmat(model, x, y, likelihood=Gaussian(sigma))
    torch.testing.assert_close(matmat(torch.eye(dim, dtype=DT)), H, rtol=1e-9, atol=1e-12)
    exact = trace_hessian(model, (x, y), likelihood=Gaussian(sigma), num_probes=3 * dim + 3, method="hutchpp")
    assert exact == pytest.approx(torch.trace(H).item(), rel=1e-9)

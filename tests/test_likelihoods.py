"""The likelihoods p(y | f(x)) of :mod:`fisherlab.likelihoods`: their per-example losses
against the formulas, their samplers' moments, the exact enumeration's second moment,
and name lookup with its errors. (The measurements built on them are tested in
tests/test_measurement_api.py and tests/test_crosscheck.py.)"""

from __future__ import annotations

import math

import pytest
import torch

from fisherlab import Categorical, Gaussian, Likelihood, get_likelihood

DT = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_categorical_loss_is_cross_entropy_summed_over_positions():
    f = torch.randn(4, 5, generator=_gen(0), dtype=DT)
    y = torch.tensor([0, 4, 2, 2])
    torch.testing.assert_close(Categorical().loss(f, y), -f.log_softmax(-1)[torch.arange(4), y], rtol=1e-14, atol=0)
    f3 = torch.randn(2, 3, 5, generator=_gen(1), dtype=DT)
    y3 = torch.randint(0, 5, (2, 3), generator=_gen(1))
    ref = -f3.log_softmax(-1).gather(-1, y3.unsqueeze(-1)).squeeze(-1).sum(1)
    torch.testing.assert_close(Categorical().loss(f3, y3), ref, rtol=1e-14, atol=0)


def test_categorical_sample_frequencies_and_enumeration():
    f = torch.tensor([[0.0, 1.0, -1.0]], dtype=DT).expand(20000, 3)
    p = f[0].softmax(-1)
    y = Categorical().sample(f, _gen(2))
    freq = torch.bincount(y, minlength=3).to(DT) / len(y)
    assert (freq - p).abs().max() <= 4 * math.sqrt(p.max() / len(y))
    pairs = Categorical().enumerate(f[:2])
    assert [t.tolist() for t, _ in pairs] == [[0, 0], [1, 1], [2, 2]]
    torch.testing.assert_close(torch.stack([w for _, w in pairs], 1), p.expand(2, 3))
    assert Categorical().sample(f[:3].to(torch.bfloat16), _gen(3)).dtype == torch.long  # sampled in fp32
    with pytest.raises(FloatingPointError, match="diverged"):
        Categorical().sample(torch.tensor([[float("nan"), 0.0]]))


def test_gaussian_loss_sample_and_enumeration():
    g = Gaussian(0.5)
    f = torch.randn(3, 2, generator=_gen(4), dtype=DT)
    y = torch.randn(3, 2, generator=_gen(5), dtype=DT)
    torch.testing.assert_close(g.loss(f, y), ((f - y) ** 2).sum(1) / (2 * 0.25), rtol=1e-14, atol=0)
    many = g.sample(f[:1].expand(20000, 2), _gen(6)) - f[:1]
    assert many.mean(0).abs().max() < 4 * 0.5 / math.sqrt(20000)
    assert (many.std(0) / 0.5 - 1).abs().max() < 0.03
    # sum_k (f - y_k)(f - y_k)^T = sigma^2 I: the second moment of f - yhat
    d = torch.stack([(f - yk) for yk, w in g.enumerate(f)], 0)  # (K, N, 2)
    assert all(w is None for _, w in g.enumerate(f))
    torch.testing.assert_close(torch.einsum("kni,knj->nij", d, d), 0.25 * torch.eye(2, dtype=DT).expand(3, 2, 2))


def test_get_likelihood_names_objects_and_errors():
    assert isinstance(get_likelihood(None), Categorical)
    assert isinstance(get_likelihood("cross_entropy"), Categorical)
    assert isinstance(get_likelihood("MSE"), Gaussian)
    g = Gaussian(2.0)
    assert get_likelihood(g) is g and isinstance(g, Likelihood) and repr(g) == "Gaussian(sigma=2.0)"
    with pytest.raises(ValueError, match="unknown likelihood 'poisson'"):
        get_likelihood("poisson")
    with pytest.raises(TypeError, match="loss.*sample"):
        get_likelihood(42)
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="sigma"):
            Gaussian(bad)

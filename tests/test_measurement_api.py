"""The measurements for any model, loss and data (issue 22, part 1): what ``data`` may be
(tensor, (inputs, targets), mapping, DataLoader), ``likelihood=`` (the Gaussian against
its dense float64 Fisher), ``output_fn=`` and dict outputs, sequence outputs with
``positions=`` against brute-force loops, ``per_layer=``, the :class:`Estimate` result
and the errors for wrong input.

Every reference here is computed independently of fisherlab's per-example engine: one
ordinary backward per example (per position, per label) or dense torch.func Jacobians,
in float64.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import io
import json
import math
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from fisherlab import (
    Categorical,
    Estimate,
    Gaussian,
    HutchinsonEstimate,
    per_example_grad_sq_norms,
    trace_fisher,
    trace_fisher_batch,
    trace_hessian,
)
from fisherlab.curvature import hessian_matmat

DT = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make_mlp(seed: int = 0, out: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, out)).to(DT)


def mlp_x(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 4, generator=_gen(seed), dtype=DT)


class TokenModel(nn.Module):
    """A tiny causal sequence model in Hugging Face style: ``model(input_ids=...,
    attention_mask=...)`` returns per-position logits (B, T, C) in a dict, an object with
    ``.logits``, a tuple or a bare tensor. Positions interact (a causal running mean), so
    the gradient of one position's loss is not that of one position's input."""

    def __init__(self, vocab: int = 7, dim: int = 5, classes: int = 4, returns: str = "dict", seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.emb = nn.Embedding(vocab, dim)
        self.mix = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, classes)
        self.returns = returns
        self.to(DT)

    def forward(self, input_ids, attention_mask=None):
        h = self.emb(input_ids)
        if attention_mask is not None:
            h = h * attention_mask.unsqueeze(-1).to(h.dtype)
        steps = torch.arange(1, h.shape[1] + 1, dtype=h.dtype).view(1, -1, 1)
        h = torch.tanh(self.mix(h.cumsum(1) / steps))
        logits = self.head(h)
        if self.returns == "dict":
            return {"logits": logits, "hidden": h}
        if self.returns == "object":
            return Output(logits, h)
        if self.returns == "tuple":
            return logits, h
        return logits


@dataclasses.dataclass
class Output:
    logits: torch.Tensor
    hidden: torch.Tensor


class FloatSeqModel(nn.Module):
    """(B, T, D) float inputs -> (B, T, C) logits, positions mixed causally."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.inp = nn.Linear(3, 5)
        self.head = nn.Linear(5, 4)
        self.to(DT)

    def forward(self, x):
        h = torch.tanh(self.inp(x)).cumsum(1)
        return self.head(h)


def _ids(b: int, t: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 7, (b, t), generator=_gen(seed))


def _flat_grad_sq(model: nn.Module, loss: torch.Tensor) -> float:
    grads = torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad], allow_unused=True)
    return sum(g.pow(2).sum() for g in grads if g is not None).item()


def brute_position_sq(model, call, n, targets) -> torch.Tensor:
    """||d loss(x_b, y_{b,t}) / d theta||^2 per (b, t): one backward per position of the
    cross-entropy at that position alone (``call(b)``: the logits of example b, (1, T, C))."""
    out = torch.zeros(targets.shape, dtype=DT)
    for b in range(n):
        for t in range(targets.shape[1]):
            logp = call(b).log_softmax(-1)
            out[b, t] = _flat_grad_sq(model, -logp[0, t, targets[b, t]])
    return out


def brute_position_exact(model, call, n, T) -> torch.Tensor:
    """sum_c p(c | x_b, t) ||d loss(x_b, c at t) / d theta||^2 per (b, t)."""
    out = torch.zeros(n, T, dtype=DT)
    for b in range(n):
        for t in range(T):
            probs = call(b).detach().softmax(-1)[0, t]
            for c in range(probs.shape[0]):
                logp = call(b).log_softmax(-1)
                out[b, t] += probs[c] * _flat_grad_sq(model, -logp[0, t, c])
    return out


# =========================================================================== Estimate


def test_estimate_is_a_float_with_stderr():
    e = Estimate(1.25, 0.5, 8)
    assert isinstance(e, float) and float(e) == 1.25 and e.value == 1.25 and e.estimate == 1.25
    assert (e + 1, e * 2, e / 5, -e) == (2.25, 2.5, 0.25, -1.25)
    assert e > 1 and e == 1.25 and math.isfinite(e) and f"{e:.3g}" == "1.25"
    assert repr(e) == "1.25" and str(e) == "1.25"
    assert (e.stderr, e.num_examples) == (0.5, 8)
    value, stderr = e  # the former HutchinsonEstimate tuple unpacks
    assert (value, stderr) == (1.25, 0.5) and HutchinsonEstimate is Estimate
    assert e.describe() == "1.25 ± 0.5 (8 examples)"
    assert torch.tensor([e, e]).tolist() == [1.25, 1.25]


def test_estimate_serialises_as_a_number():
    e = Estimate(0.1 + 0.2, 0.01, 3)
    buf = io.StringIO()
    csv.writer(buf).writerow([e])
    assert buf.getvalue().strip() == repr(0.1 + 0.2)
    assert json.loads(json.dumps({"v": e}))["v"] == 0.1 + 0.2
    for back in (pickle.loads(pickle.dumps(e)), copy.deepcopy(e)):
        assert type(back) is Estimate and (float(back), back.stderr, back.num_examples) == (float(e), 0.01, 3)


def test_estimate_loads_with_weights_only(tmp_path):
    torch.save({"rows": [{"trace_fisher": Estimate(2.0, 0.1, 4)}]}, tmp_path / "c.pt")
    back = torch.load(tmp_path / "c.pt", weights_only=True)["rows"][0]["trace_fisher"]
    assert back == 2.0 and back.stderr == 0.1


def test_every_trace_returns_an_estimate():
    model, x = make_mlp(1), mlp_x(6, 1)
    y = torch.randint(0, 3, (6,), generator=_gen(1))
    tf = trace_fisher(model, x, generator=0)
    ex = trace_fisher(model, x, exact=True)
    per = trace_fisher(model, x, generator=0, return_per_example=True)
    assert isinstance(tf, Estimate) and tf.num_examples == 6
    assert tf.stderr == pytest.approx(per.std().item() / math.sqrt(6), rel=1e-12)
    assert isinstance(ex, Estimate) and ex.stderr == 0.0
    fb = trace_fisher_batch(model, x, batch_size=2, generator=0)
    assert isinstance(fb, Estimate) and fb.num_examples == 6 and fb.stderr > 0
    assert math.isnan(trace_fisher_batch(model, x, generator=0).stderr)  # one batch: no spread
    th = trace_hessian(model, x, y, num_probes=4, generator=0)
    assert isinstance(th, Estimate) and th.num_examples == 6 and th.stderr > 0


# =========================================================================== data forms


def test_dataloader_is_the_example_weighted_mean():
    """13 examples in batches of 5, 5, 3: the same labels as chunks of 5 of one tensor, and
    with exact=True the mean over all 13 examples."""
    model, x = make_mlp(2), mlp_x(13, 2)
    y = torch.randint(0, 3, (13,), generator=_gen(2))
    loader = DataLoader(TensorDataset(x, y), batch_size=5)
    assert trace_fisher(model, loader, generator=3) == pytest.approx(
        trace_fisher(model, x, generator=3, chunk_size=5), rel=1e-13)  # fmt: skip
    got = trace_fisher(model, loader, exact=True)
    assert got == pytest.approx(trace_fisher(model, x, exact=True), rel=1e-13) and got.num_examples == 13
    per = trace_fisher(model, x, exact=True, return_per_example=True)
    means = [per[k : k + 5].mean() for k in (0, 5, 10)]
    assert got == pytest.approx(((5 * means[0] + 5 * means[1] + 3 * means[2]) / 13).item(), rel=1e-13)
    # inputs-only loaders (batches [x]), a list of pairs, a generator, (x, y) and [x, y]
    only_x = DataLoader(TensorDataset(x), batch_size=4)
    pairs = [(x[:7], y[:7]), (x[7:], y[7:])]
    for data in (only_x, pairs, iter(pairs), (x, y), [x, y], (x,)):
        assert trace_fisher(model, data, exact=True) == pytest.approx(float(got), rel=1e-13)
    # per-example norms and Tr(H) from the loader: the same as from the tensors
    torch.testing.assert_close(per_example_grad_sq_norms(model, loader), per_example_grad_sq_norms(model, x, y),
                               rtol=1e-13, atol=0)  # fmt: skip
    assert trace_hessian(model, loader, num_probes=5, generator=1) == pytest.approx(
        trace_hessian(model, x, y, num_probes=5, generator=1), rel=1e-10)  # fmt: skip
    assert trace_hessian(model, loader, num_probes=7, generator=1, method="hutchpp") == pytest.approx(
        trace_hessian(model, x, y, num_probes=7, generator=1, method="hutchpp"), rel=1e-10)  # fmt: skip


def test_trace_fisher_batch_over_a_loader():
    """Each batch of the loader is one B: the size-weighted mean of single-batch calls
    sharing the generator."""
    model, x = make_mlp(3), mlp_x(13, 3)
    loader = DataLoader(TensorDataset(x), batch_size=5)
    got = trace_fisher_batch(model, loader, generator=4)
    g = _gen(4)
    parts = [trace_fisher_batch(model, x[k : k + 5], generator=g) for k in (0, 5, 10)]
    assert got == pytest.approx((5 * parts[0] + 5 * parts[1] + 3 * parts[2]) / 13, rel=1e-12)
    assert got.num_examples == 13
    with pytest.raises(ValueError, match="batch_size"):
        trace_fisher_batch(model, loader, batch_size=2)


class DictDataset(Dataset):
    def __init__(self, ids, labels):
        self.ids, self.labels = ids, labels

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]), "labels": self.labels[i]}


def test_mapping_batches_are_keyword_inputs_and_labels_are_targets():
    """A dict batch is model(**batch) without its "labels", which are the targets."""
    model = TokenModel(returns="dict", seed=4)
    ids, labels = _ids(5, 3, 4), _ids(5, 3, 5) % 4
    loader = DataLoader(DictDataset(ids, labels), batch_size=2)
    single = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    ref = trace_fisher(model, single, exact=True)
    assert trace_fisher(model, loader, exact=True) == pytest.approx(float(ref), rel=1e-13)
    assert trace_fisher(model, {**single, "labels": labels}, exact=True) == pytest.approx(float(ref), rel=1e-13)
    assert trace_fisher(model, ({**single, "labels": labels}, labels), exact=True) == pytest.approx(float(ref), rel=1e-13)
    for method in ("func", "loop"):  # vmap over a mapping's batched tensors; a backward per example
        assert trace_fisher(model, single, exact=True, method=method) == pytest.approx(float(ref), rel=1e-12)
    torch.testing.assert_close(per_example_grad_sq_norms(model, loader),
                               per_example_grad_sq_norms(model, single, labels), rtol=1e-13, atol=0)  # fmt: skip
    assert trace_hessian(model, loader, num_probes=3, generator=0) == pytest.approx(
        trace_hessian(model, single, labels, num_probes=3, generator=0), rel=1e-10)  # fmt: skip
    # batch_fn maps any other batch structure to (inputs, targets)
    odd = [{"x": {"input_ids": ids[:3]}, "y": labels[:3]}, {"x": {"input_ids": ids[3:]}, "y": labels[3:]}]
    got = per_example_grad_sq_norms(model, odd, batch_fn=lambda b: (b["x"], b["y"]))
    torch.testing.assert_close(got, per_example_grad_sq_norms(model, {"input_ids": ids}, labels),
                               rtol=1e-13, atol=0)  # fmt: skip


@pytest.mark.parametrize("returns", ["dict", "object", "tuple"])
def test_model_outputs_and_output_fn(returns):
    """A dict with "logits" or an object with .logits is read by default; a tuple needs
    output_fn; the values equal the model returning the tensor itself."""
    ids = _ids(3, 4, 6)
    ref = trace_fisher(TokenModel(returns="tensor", seed=6), ids, exact=True)
    model = TokenModel(returns=returns, seed=6)
    if returns == "tuple":
        with pytest.raises(TypeError, match="output_fn"):
            trace_fisher(model, ids, exact=True)
        got = trace_fisher(model, ids, exact=True, output_fn=lambda out: out[0])
    else:
        got = trace_fisher(model, ids, exact=True)
    assert got == pytest.approx(float(ref), rel=1e-13)
    with pytest.raises(TypeError, match="output_fn must return a tensor"):
        trace_fisher(model, ids, output_fn=lambda out: "nope")


def test_dict_output_without_logits_asks_for_output_fn():
    class NoLogits(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3).to(DT)

        def forward(self, x):
            return {"scores": self.fc(x)}

    with pytest.raises(TypeError, match=r"keys \['scores'\].*output_fn"):
        trace_fisher(NoLogits(), mlp_x(2))
    assert trace_fisher(NoLogits(), mlp_x(2), generator=0, output_fn=lambda o: o["scores"]) > 0


# =========================================================================== sequences


@pytest.mark.parametrize("method", ["auto", "func", "loop"])
def test_sequence_positions_against_a_brute_force_loop(method):
    """(B, T, C) logits: every position is an example, ||d loss_t / d theta||^2 of the loss
    at position t alone; sampled labels, exact expectation and true targets, token ids
    (gradients w.r.t. layer outputs) and float inputs (w.r.t. the input)."""
    for model, x in ((TokenModel(returns="tensor", seed=7), _ids(3, 4, 7)),
                     (FloatSeqModel(seed=7), torch.randn(3, 4, 3, generator=_gen(7), dtype=DT))):  # fmt: skip
        call = lambda b: model(x[b : b + 1])  # noqa: E731
        with torch.no_grad():
            yhat = Categorical().sample(model(x), _gen(8))
        ref = brute_position_sq(model, call, 3, yhat)
        per = trace_fisher(model, x, generator=8, return_per_example=True, method=method)
        assert per.shape == (3, 4)
        torch.testing.assert_close(per, ref, rtol=1e-10, atol=0)
        got = trace_fisher(model, x, generator=8, method=method)
        assert got == pytest.approx(ref.mean().item(), rel=1e-10) and got.num_examples == 12
        exact = trace_fisher(model, x, exact=True, method=method, chunk_size=2)
        assert exact == pytest.approx(brute_position_exact(model, call, 3, 4).mean().item(), rel=1e-10)
        y = torch.randint(0, 4, (3, 4), generator=_gen(9))
        torch.testing.assert_close(per_example_grad_sq_norms(model, x, y, method=method),
                                   brute_position_sq(model, call, 3, y), rtol=1e-10, atol=0)  # fmt: skip


def test_sequence_positions_as_one_example():
    """positions="sequence": the loss of a sequence is summed over its positions."""
    model, ids = TokenModel(returns="tensor", seed=10), _ids(3, 4, 10)
    y = torch.randint(0, 4, (3, 4), generator=_gen(10))
    ref = torch.tensor([
        _flat_grad_sq(model, F.cross_entropy(model(ids[b : b + 1])[0], y[b], reduction="sum")) for b in range(3)
    ], dtype=DT)  # fmt: skip
    got = per_example_grad_sq_norms(model, ids, y, positions="sequence")
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=0)
    with torch.no_grad():
        yhat = Categorical().sample(model(ids), _gen(11))
    tf = trace_fisher(model, ids, generator=11, positions="sequence")
    assert tf == pytest.approx(per_example_grad_sq_norms(model, ids, yhat, positions="sequence").mean().item(),
                               rel=1e-12) and tf.num_examples == 3  # fmt: skip


def test_trace_fisher_batch_and_trace_hessian_on_sequences():
    """Tr(F_B) of a batch of sequences: the squared norm of the gradient of the mean loss
    over its B*T positions; Tr(H): the Hessian of that mean (dense torch.func reference)."""
    model, ids = TokenModel(returns="dict", seed=12), _ids(2, 3, 12)
    with torch.no_grad():
        yhat = Categorical().sample(model(ids)["logits"], _gen(13))
    logits = model(ids)["logits"]
    ref = _flat_grad_sq(model, F.cross_entropy(logits.reshape(-1, 4), yhat.reshape(-1)))
    assert trace_fisher_batch(model, ids, generator=13) == pytest.approx(ref, rel=1e-10)

    y = torch.randint(0, 4, (2, 3), generator=_gen(14))
    names = [n for n, _ in model.named_parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    shapes = [p.shape for p in model.parameters()]

    def mean_loss(flat):
        parts = dict(zip(names, [c.reshape(s) for c, s in zip(flat.split([s.numel() for s in shapes]), shapes)]))
        out = torch.func.functional_call(model, parts, (ids,))["logits"]
        return F.cross_entropy(out.reshape(-1, 4), y.reshape(-1))

    H = torch.func.hessian(mean_loss)(flat0)
    matmat, dim = hessian_matmat(model, ids, y)
    torch.testing.assert_close(matmat(torch.eye(dim, dtype=DT)), H, rtol=1e-9, atol=1e-12)
    got = trace_hessian(model, ids, y, num_probes=3 * dim + 3, method="hutchpp", generator=0)  # k >= dim: exact
    assert got == pytest.approx(torch.trace(H).item(), rel=1e-9) and got.num_examples == 6


# =========================================================================== likelihoods


def _jacobian_sq(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """||J_i||_F^2 per example, J_i = d f(x_i) / d theta, from dense torch.func Jacobians."""
    params = {n: p.detach() for n, p in model.named_parameters()}

    def f(p, xi):
        return torch.func.functional_call(model, p, (xi.unsqueeze(0),))[0]

    out = []
    for i in range(len(x)):
        jac = torch.func.jacrev(f)(params, x[i])
        out.append(sum(j.pow(2).sum() for j in jac.values()))
    return torch.stack(out)


def test_gaussian_exact_trace_is_the_jacobian_norm():
    """Gaussian(sigma): Tr(F) = mean_i ||J_i||_F^2 / sigma^2 (E[eps eps^T] = I)."""
    model, x = make_mlp(15, out=2), mlp_x(5, 15)
    jsq = _jacobian_sq(model, x)
    for sigma in (1.0, 0.3):
        per = trace_fisher(model, x, likelihood=Gaussian(sigma), exact=True, return_per_example=True)
        torch.testing.assert_close(per, jsq / sigma**2, rtol=1e-10, atol=0)
        per = trace_fisher(model, x, likelihood=Gaussian(sigma), exact=True, return_per_example=True, method="func")
        torch.testing.assert_close(per, jsq / sigma**2, rtol=1e-10, atol=0)
    assert trace_fisher(model, x, likelihood="gaussian", exact=True) == pytest.approx(jsq.mean().item(), rel=1e-10)


def test_gaussian_sampled_trace_against_brute_force_and_its_mean():
    """One draw yhat = f + sigma eps: ||J^T (f - yhat)||^2 / sigma^4 per example (brute
    force); the mean over S seeds converges to mean_i ||J_i||^2 / sigma^2 within 4
    standard errors, with Var_i = 2 ||J_i J_i^T||_F^2 / sigma^4 exact."""
    model, x, sigma = make_mlp(16, out=2), mlp_x(6, 16), 0.5
    lik = Gaussian(sigma)
    with torch.no_grad():
        yhat = lik.sample(model(x), _gen(17))
    ref = torch.tensor([_flat_grad_sq(model, lik.loss(model(x[i : i + 1]), yhat[i : i + 1]).sum())
                        for i in range(6)], dtype=DT)  # fmt: skip
    got = trace_fisher(model, x, likelihood=lik, generator=17, return_per_example=True)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=0)

    params = {n: p.detach() for n, p in model.named_parameters()}
    var = 0.0
    for i in range(6):
        jac = torch.func.jacrev(lambda p: torch.func.functional_call(model, p, (x[i : i + 1],))[0])(params)
        J = torch.cat([j.reshape(2, -1) for j in jac.values()], 1)
        var += 2 * (J @ J.T).pow(2).sum() / sigma**4
    exact = (_jacobian_sq(model, x) / sigma**2).mean().item()
    S = 300
    vals = torch.tensor([float(trace_fisher(model, x, likelihood=lik, generator=s)) for s in range(S)])
    sd = math.sqrt(var) / 6  # std of one call's mean over the 6 examples
    assert abs(vals.mean().item() - exact) <= 4 * sd / math.sqrt(S)
    assert 0.75 < vals.std().item() / sd < 1.25


class Laplace:
    """A user's own likelihood, two methods only: p(y|f) = exp(-|y - f|) / 2."""

    def loss(self, output, target):
        return (output - target).abs().sum(1)

    def sample(self, output, generator=None):
        u = torch.rand(output.shape, generator=generator, dtype=output.dtype) - 0.5
        return output.detach() - u.sign() * torch.log1p(-2 * u.abs())


def test_a_users_own_likelihood():
    """Any object with loss and sample: g = J^T sign(f - yhat), against brute force."""
    model, x = make_mlp(18, out=2), mlp_x(4, 18)
    with torch.no_grad():
        yhat = Laplace().sample(model(x), _gen(19))
    ref = torch.tensor([_flat_grad_sq(model, (model(x[i : i + 1]) - yhat[i : i + 1]).abs().sum()) for i in range(4)],
                       dtype=DT)  # fmt: skip
    per = trace_fisher(model, x, likelihood=Laplace(), generator=19, return_per_example=True)
    torch.testing.assert_close(per, ref, rtol=1e-10, atol=0)
    with pytest.raises(ValueError, match="enumerate"):
        trace_fisher(model, x, likelihood=Laplace(), exact=True)


def test_gaussian_hessian_is_dense_reference():
    """trace_hessian(likelihood=Gaussian(sigma)): H of mean_i ||y_i - f_i||^2 / (2 sigma^2)."""
    model, x, sigma = make_mlp(20, out=2), mlp_x(5, 20), 0.7
    y = torch.randn(5, 2, generator=_gen(20), dtype=DT)
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def mean_loss(flat):
        parts = dict(zip(names, [c.reshape(s) for c, s in zip(flat.split([s.numel() for s in shapes]), shapes)]))
        return (torch.func.functional_call(model, parts, (x,)) - y).pow(2).sum() / (2 * sigma**2 * 5)

    H = torch.func.hessian(mean_loss)(flat0)
    dim = len(flat0)
    got = trace_hessian(model, (x, y), likelihood=Gaussian(sigma), num_probes=3 * dim + 3, method="hutchpp",
                        generator=1)  # fmt: skip
    assert got == pytest.approx(torch.trace(H).item(), rel=1e-9)


# =========================================================================== per layer


@pytest.mark.parametrize("exact", [False, True])
def test_per_layer_sums_to_the_total(exact):
    model, x = make_mlp(21), mlp_x(7, 21)
    layers = trace_fisher(model, x, generator=22, exact=exact, per_layer=True, chunk_size=3)
    total = trace_fisher(model, x, generator=22, exact=exact, chunk_size=3)
    assert list(layers) == ["0", "2"] and all(isinstance(v, Estimate) for v in layers.values())
    assert sum(layers.values()) == pytest.approx(float(total), rel=1e-12)
    func = trace_fisher(model, x, generator=22, exact=exact, per_layer=True, chunk_size=3, method="func")
    for name in layers:
        assert layers[name] == pytest.approx(float(func[name]), rel=1e-10)
    # a layer's own value: the brute-force norm of its parameters' gradients alone
    if exact:
        ref = 0.0
        for i in range(7):
            probs = model(x[i : i + 1]).detach().softmax(-1)[0]
            for c in range(3):
                loss = F.cross_entropy(model(x[i : i + 1]), torch.tensor([c]))
                ref += probs[c].item() * sum(g.pow(2).sum().item() for g in torch.autograd.grad(loss, list(model[2].parameters())))
        assert layers["2"] == pytest.approx(ref / 7, rel=1e-10)


def test_per_layer_on_sequences_and_token_models():
    model, ids = TokenModel(returns="dict", seed=23), _ids(2, 3, 23)
    layers = trace_fisher(model, ids, exact=True, per_layer=True)
    assert list(layers) == ["emb", "mix", "head"]
    assert sum(layers.values()) == pytest.approx(float(trace_fisher(model, ids, exact=True)), rel=1e-12)
    per = trace_fisher(model, ids, exact=True, per_layer=True, return_per_example=True)
    assert per["head"].shape == (2, 3)


# =========================================================================== errors


def test_wrong_data_is_a_clear_error():
    model, x = make_mlp(24), mlp_x(4, 24)
    accepted = "tensor of inputs, a mapping"
    for bad in (3, "x", None, 2.5):
        with pytest.raises(TypeError, match=accepted):
            trace_fisher(model, bad)
    with pytest.raises(TypeError, match="a batch must be"):
        trace_fisher(model, [1, 2, 3])
    with pytest.raises(TypeError, match="a batch must be"):
        trace_fisher(model, [(x, x, x)])
    with pytest.raises(ValueError, match="empty"):
        trace_fisher(model, [])
    with pytest.raises(ValueError, match="0-dim"):
        trace_fisher(model, torch.tensor(1.0))
    with pytest.raises(ValueError, match="needs targets"):
        per_example_grad_sq_norms(model, x)
    with pytest.raises(ValueError, match="targets"):
        trace_hessian(model, x)
    with pytest.raises(ValueError, match="3 rows for 4 examples"):
        per_example_grad_sq_norms(model, x, torch.zeros(3, dtype=torch.long))
    with pytest.raises(TypeError, match="single batch"):
        per_example_grad_sq_norms(model, [(x, x)], torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="positions"):
        trace_fisher(model, x, positions="tokens")
    with pytest.raises(ValueError, match="chunk_size"):
        trace_fisher(model, x, chunk_size=0)
    with pytest.raises(ValueError, match="method"):
        trace_fisher(model, x, method="vmap")
    with pytest.raises(ValueError, match="unknown likelihood"):
        trace_fisher(model, x, likelihood="poisson")
    with pytest.raises(TypeError, match="loss.*sample"):
        trace_fisher(model, x, likelihood=object())
    with pytest.raises(ValueError, match="sigma"):
        Gaussian(0.0)
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        trace_fisher(nn.Linear(4, 1).to(DT), x, output_fn=lambda o: o[:, 0])


def test_bad_likelihood_loss_shape_is_named():
    class Scalar(Gaussian):
        def loss(self, output, target):
            return super().loss(output, target).sum()

    with pytest.raises(ValueError, match="one value per example"):
        trace_fisher(make_mlp(25), mlp_x(3, 25), likelihood=Scalar(), generator=0)


# =========================================================================== Hugging Face


def test_hugging_face_causal_lm_against_brute_force():
    """A tiny randomly initialised GPT-2 (tied embeddings: the whole-model torch.func path)
    called as model(**batch); its ModelOutput's logits are read by default."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(vocab_size=11, n_positions=8, n_embd=8, n_layer=1, n_head=2,
                                  attn_pdrop=0.0, embd_pdrop=0.0, resid_pdrop=0.0)  # fmt: skip
    torch.manual_seed(26)
    model = transformers.GPT2LMHeadModel(cfg).to(DT)
    ids = torch.randint(0, 11, (2, 3), generator=_gen(26))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    call = lambda b: model(input_ids=ids[b : b + 1], attention_mask=batch["attention_mask"][b : b + 1]).logits  # noqa: E731
    with torch.no_grad():
        yhat = Categorical().sample(model(**batch).logits, _gen(27))
    per = trace_fisher(model, batch, generator=27, return_per_example=True)
    torch.testing.assert_close(per, brute_position_sq(model, call, 2, yhat), rtol=1e-9, atol=0)
    layers = trace_fisher(model, batch, generator=27, per_layer=True)
    assert sum(layers.values()) == pytest.approx(per.mean().item(), rel=1e-10)

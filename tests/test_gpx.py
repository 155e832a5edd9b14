"""GPx's two readings (``fisherlab.penalties.InputGradientPenalty``, ``reduction``) against
independent references, all in float64 on tiny models:

* ``per_example`` (default): a brute-force loop over the examples, each one forwarded
  alone and differentiated with ``torch.autograd.grad`` with respect to its own input,
  penalty ``(1/B) sum_i ||d l_i / d x_i||^2``;
* ``batch_mean``: the formula ``||d/dX CE_mean(f(X), Y)||^2`` with a hand-written
  cross-entropy, and ``(1/B^2) sum_i ||d l_i / d x_i||^2`` from the loop;
* the gradient of ``CE + alpha * penalty`` with respect to the parameters: autograd of the
  reference objective, and central finite differences of it, for both readings;
* the config key ``gpx_reduction``: schema default and refusal, and that it reaches every
  GPx run's ``TrainConfig`` (and so the run identity) and no other run's.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml
from snakemake.utils import validate
from torch import nn
from torch.func import functional_call

from fisherlab.runs.identity import run_identity
from fisherlab.penalties import InputGradientPenalty, build_regularizer
from fisherlab.plan import build_plan
from fisherlab.training.train_config import GPX_REDUCTIONS, TrainConfig

DT = torch.float64
C = 4
ALPHA = 3.0
REPO = Path(__file__).resolve().parents[1]
SCHEMA = str(REPO / "workflow/schemas/config.schema.yaml")


def make_model(kind: str) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        if kind == "mlp":
            return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, C)).to(DT)
        if kind == "cnn":
            return nn.Sequential(nn.Conv2d(2, 3, 3), nn.Softplus(), nn.Flatten(), nn.Linear(27, C)).to(DT)
        if kind == "bn":  # BatchNorm: eval mode in "bn_eval", training mode in "bn_train"
            return nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, C)).to(DT)
    raise AssertionError(kind)


SHAPES = {"mlp": (5,), "cnn": (2, 5, 5), "bn": (5,)}


def setup(kind: str, B: int = 6, seed: int = 1):
    model = make_model("bn" if kind.startswith("bn") else kind)
    if kind == "bn_eval":
        with torch.no_grad():  # non-trivial running statistics
            model[1].running_mean.uniform_(-0.5, 0.5)
            model[1].running_var.uniform_(0.5, 2.0)
        model.eval()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, *SHAPES[kind.split("_")[0]], generator=g, dtype=DT)
    y = torch.randint(0, C, (B,), generator=g)
    return model, x, y


def ce(z, y, reduction="mean"):
    nll = torch.logsumexp(z, dim=1) - z.gather(1, y[:, None]).squeeze(1)
    return nll.mean() if reduction == "mean" else nll.sum()


def params_of(model):
    return {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}


def per_example_input_grads(model, params, x, y, create_graph=True):
    """Brute force: each example alone through the model, d l(x_i, y_i) / d x_i."""
    rows = []
    for i in range(len(x)):
        xi = x[i : i + 1].detach().clone().requires_grad_(True)
        li = ce(functional_call(model, params, (xi,)), y[i : i + 1])
        rows.append(torch.autograd.grad(li, xi, create_graph=create_graph)[0][0])
    return rows


def ref_penalty(reduction, model, params, x, y, create_graph=True):
    """The penalty (without alpha) from the independent references."""
    if reduction == "per_example":
        rows = per_example_input_grads(model, params, x, y, create_graph)
        return sum(r.pow(2).sum() for r in rows) / len(x)
    xx = x.detach().clone().requires_grad_(True)
    gx = torch.autograd.grad(ce(functional_call(model, params, (xx,)), y), xx, create_graph=create_graph)[0]
    return gx.pow(2).sum()


def ref_objective(reduction, model, params, x, y, create_graph=True):
    data = ce(functional_call(model, params, (x,)), y)
    return data + ALPHA * ref_penalty(reduction, model, params, x, y, create_graph)


def code_backward(model, x, y, **kwargs):
    for p in model.parameters():
        p.grad = None
    reg = build_regularizer("gpx", alpha=ALPHA, every=1, **kwargs)
    out = reg.backward(model, x, y, step=0, epoch=0)
    return out, [p.grad.detach().clone() for p in model.parameters()]


# ===================================================================== the penalty itself


@pytest.mark.parametrize("kind", ["mlp", "cnn", "bn_eval"])
def test_per_example_penalty_is_the_brute_force_loop_and_the_default(kind):
    model, x, y = setup(kind)
    rows = per_example_input_grads(model, params_of(model), x, y, create_graph=False)
    expected = sum(r.pow(2).sum() for r in rows) / len(x)
    default, _ = code_backward(model, x, y)
    explicit, _ = code_backward(model, x, y, reduction="per_example")
    torch.testing.assert_close(default.penalty, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(explicit.penalty, expected, rtol=1e-12, atol=0)
    assert InputGradientPenalty(alpha=1.0).reduction == "per_example" == GPX_REDUCTIONS[0]


@pytest.mark.parametrize("kind", ["mlp", "cnn", "bn_eval"])
def test_batch_mean_penalty_is_the_input_gradient_of_the_mean_loss(kind):
    model, x, y = setup(kind)
    params = params_of(model)
    out, _ = code_backward(model, x, y, reduction="batch_mean")
    formula = ref_penalty("batch_mean", model, params, x, y, create_graph=False)
    torch.testing.assert_close(out.penalty, formula, rtol=1e-12, atol=0)
    # the same from the loop: (1/B^2) sum_i ||d l_i / d x_i||^2, B times weaker than per_example
    rows = per_example_input_grads(model, params, x, y, create_graph=False)
    torch.testing.assert_close(out.penalty, sum(r.pow(2).sum() for r in rows) / len(x) ** 2, rtol=1e-12, atol=0)


def test_with_batchnorm_in_training_mode_per_example_is_b_times_batch_mean():
    """Train-mode BN couples the examples; both readings then take the input gradient of
    the batch's loss (the docstring), so they differ by exactly B, penalty and gradient."""
    model, x, y = setup("bn_train", B=5)
    pe, g_pe = code_backward(model, x, y, reduction="per_example")
    bm, g_bm = code_backward(model, x, y, reduction="batch_mean")
    torch.testing.assert_close(pe.penalty, len(x) * bm.penalty, rtol=1e-12, atol=0)
    plain = [g.detach().clone() for g in torch.autograd.grad(ce(model(x), y), list(model.parameters()))]
    for a, b, c in zip(g_pe, g_bm, plain):  # penalty gradients: (a - c) = B (b - c)
        torch.testing.assert_close(a - c, len(x) * (b - c), rtol=1e-9, atol=1e-12)
    # and the coupling is real: row i is not the loop's d l_i / d x_i of a lone example
    assert not torch.allclose(
        pe.penalty, sum(r.pow(2).sum() for r in _rows_in_batch(model, x, y)) / len(x), rtol=1e-6
    )


def _rows_in_batch(model, x, y):
    """d l_i / d x_i with the other examples in the batch (the exact diagonal, B passes)."""
    xx = x.detach().clone().requires_grad_(True)
    z = model(xx)
    nll = torch.logsumexp(z, 1) - z.gather(1, y[:, None]).squeeze(1)
    return [torch.autograd.grad(nll[i], xx, retain_graph=True)[0][i] for i in range(len(x))]


# ===================================================================== the parameter gradient


@pytest.mark.parametrize("kind", ["mlp", "cnn", "bn_eval"])
@pytest.mark.parametrize("reduction", GPX_REDUCTIONS)
def test_parameter_gradient_matches_the_reference_objective(reduction, kind):
    model, x, y = setup(kind)
    _, got = code_backward(model, x, y, reduction=reduction)
    params = params_of(model)
    expected = torch.autograd.grad(ref_objective(reduction, model, params, x, y), list(params.values()))
    plain = torch.autograd.grad(ce(model(x), y), list(model.parameters()))
    for g, e, p in zip(got, expected, plain):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)
    assert max((g - p).abs().max().item() for g, p in zip(got, plain)) > 1e-4  # the penalty moves it


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("reduction", GPX_REDUCTIONS)
def test_parameter_gradient_matches_finite_differences(reduction, kind):
    """Central differences of the reference objective along random directions."""
    model, x, y = setup(kind, B=5, seed=4)
    _, got = code_backward(model, x, y, reduction=reduction)
    base, h = params_of(model), 1e-5
    g = torch.Generator().manual_seed(7)
    for _ in range(3):
        d = {n: torch.randn(p.shape, generator=g, dtype=DT) for n, p in base.items()}
        at = lambda s: {n: (base[n] + s * h * d[n]).detach() for n in base}  # noqa: E731
        fd = (ref_objective(reduction, model, at(1), x, y, False) - ref_objective(reduction, model, at(-1), x, y, False))
        fd = fd.item() / (2 * h)
        analytic = sum((gi * di).sum() for gi, di in zip(got, d.values())).item()
        assert abs(fd - analytic) <= 1e-6 * max(abs(analytic), 1e-3), (fd, analytic)


# ===================================================================== bad input


@pytest.mark.parametrize("bad", ["mean", "sum", "per-example", None, 1])
def test_an_unknown_reduction_is_refused_naming_the_accepted_ones(bad):
    with pytest.raises(ValueError, match="reduction must be one of .*per_example.*batch_mean"):
        build_regularizer("gpx", alpha=1.0, reduction=bad)
    with pytest.raises(ValueError, match="regularizer_kwargs\\['reduction'\\] of gpx must be one of"):
        TrainConfig(regularizer="gpx", regularizer_kwargs={"alpha": 1.0, "reduction": bad})
    with pytest.raises(TypeError, match="reduction"):  # only GPx takes it
        build_regularizer("gp", alpha=1.0, reduction="per_example")


# ===================================================================== the config key


def load(**top) -> dict:
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg.update(top)
    validate(cfg, SCHEMA, set_default=True)
    return cfg


def test_the_schema_default_is_the_librarys_and_other_values_are_schema_errors():
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg.pop("gpx_reduction")
    validate(cfg, SCHEMA, set_default=True)
    assert cfg["gpx_reduction"] == GPX_REDUCTIONS[0] == "per_example"
    assert yaml.safe_load(Path(SCHEMA).read_text())["properties"]["gpx_reduction"]["enum"] == list(GPX_REDUCTIONS)
    bad = copy.deepcopy(cfg)
    bad["gpx_reduction"] = "mean"
    with pytest.raises(Exception, match="(?i)validat|schema"):
        validate(bad, SCHEMA)


@pytest.mark.parametrize("reduction", GPX_REDUCTIONS)
def test_the_key_reaches_every_gpx_run_and_its_identity(reduction):
    plan = build_plan(load(gpx_reduction=reduction))
    gpx = [r for r in plan.runs.values() if r.regularizer == "gpx"]
    assert {r.family for r in gpx} == {"fisher_penalty", "noisy"}  # Tables 1, 3-6 and the noisy grids
    assert all(r.reg_kwargs["reduction"] == reduction for r in gpx)
    assert not [r for r in plan.runs.values() if r.regularizer != "gpx" and "reduction" in r.reg_kwargs]
    read = lambda name: {"key": name, "value": 0.1, "source": "test"}  # noqa: E731
    cfg, _ = gpx[0].resolve(read)
    assert cfg.regularizer_kwargs["reduction"] == reduction
    other = GPX_REDUCTIONS[1 - GPX_REDUCTIONS.index(reduction)]
    changed = TrainConfig(**{**cfg.to_dict(), "regularizer_kwargs": {**cfg.regularizer_kwargs, "reduction": other}})
    assert run_identity(cfg.to_dict())["digest"] != run_identity(changed.to_dict())["digest"]

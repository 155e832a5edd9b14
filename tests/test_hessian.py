"""Tr(H) as its own module (fisherlab.hessian, issue 23 item 3): one spec whose defaults
the schema and trace_hessian share, the renamed config keys refused with their new
names, one owner of the result files' names, and the job checked against a dense
float64 Hessian of a tiny registered model."""

from __future__ import annotations

import ast
import copy
import dataclasses
import inspect
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torch.func import functional_call

from fisherlab import trace_hessian
from fisherlab.config_guard import ConfigError, validate_config
from fisherlab.data import make_synthetic, save_dataset
from fisherlab.experiment import load_data
from fisherlab.hessian import (
    DISTRIBUTIONS,
    HESSIAN_JSON,
    METHODS,
    RENAMED,
    SNAPSHOT_HESSIAN,
    HessianSpec,
    trace_hessian_of_run,
    trace_hessian_of_weights,
)
from fisherlab.models import MODELS, register
from fisherlab.plan import RunSpec

from helpers import REPO, SCHEMA, SCHEMA_PATH

BLOCK = SCHEMA["properties"]["hessian"]["properties"]


# =========================================================================== one set of defaults


def test_the_schema_block_is_the_spec_with_its_defaults():
    fields = {f.name: f.default for f in dataclasses.fields(HessianSpec)}
    assert {k: v["default"] for k, v in BLOCK.items()} == fields
    assert tuple(BLOCK["distribution"]["enum"]) == DISTRIBUTIONS
    assert tuple(BLOCK["method"]["enum"]) == METHODS
    assert HessianSpec.from_config({}) == HessianSpec() == HessianSpec.from_config(None)


def test_trace_hessian_takes_its_defaults_from_the_spec():
    params = inspect.signature(trace_hessian).parameters
    spec = HessianSpec()
    for name in ("num_probes", "distribution", "method"):
        assert params[name].default == getattr(spec, name), name


def test_the_config_block_becomes_the_spec():
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    validate_config(cfg, SCHEMA_PATH)
    spec = HessianSpec.from_config(cfg["hessian"])
    assert spec == HessianSpec(num_probes=30, distribution="gaussian", method="hutchinson", examples=1000)
    assert spec.to_dict() == cfg["hessian"]


@pytest.mark.parametrize("kwargs, error, message", [
    ({"num_probes": 0}, ValueError, "num_probes must be >= 1, got 0"),
    ({"num_probes": 2.0}, TypeError, "num_probes must be an int"),
    ({"num_probes": True}, TypeError, "num_probes must be an int"),
    ({"examples": -3}, ValueError, "examples must be >= 1"),
    ({"distribution": 4}, ValueError, r"distribution must be one of \['rademacher', 'gaussian'\], got 4"),
    ({"method": "hutch"}, ValueError, r"method must be one of \['hutchinson', 'hutchpp'\]"),
])  # fmt: skip
def test_a_bad_spec_names_the_field_and_what_it_accepts(kwargs, error, message):
    with pytest.raises(error, match=message):
        HessianSpec(**kwargs)


def test_the_spec_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        HessianSpec().num_probes = 3


# =========================================================================== renamed keys


@pytest.mark.parametrize("block, key, message", [
    ("hessian", {"probes": 4}, "hessian.probes was renamed hessian.distribution"),
    ("hessian", {"queries": 4}, "hessian.queries was renamed hessian.num_probes"),
    ("miniature", {"hessian_queries": 3}, "miniature.hessian_queries was renamed miniature.hessian_num_probes"),
])  # fmt: skip
def test_an_old_key_is_refused_naming_the_new_one(block, key, message):
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg.setdefault(block, {}).update(key)
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_config(copy.deepcopy(cfg), SCHEMA_PATH)


def test_both_old_keys_are_named_at_once_and_by_the_spec_too():
    old = {"queries": 4, "probes": "gaussian"}
    with pytest.raises(ValueError, match="hessian.queries was renamed hessian.num_probes; "
                                         "hessian.probes was renamed hessian.distribution"):  # fmt: skip
        HessianSpec.from_config(old)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['probs'\]; accepted: \['num_probes', 'distribution'"):
        HessianSpec.from_config({"probs": 4})
    assert set(RENAMED.values()) >= {"hessian.num_probes", "hessian.distribution"}
    assert "hessian_num_probes" in SCHEMA["properties"]["miniature"]["properties"]


# =========================================================================== one owner of the file names


def _string_literals(path: Path) -> set[str]:
    """The string constants of a Python file, docstrings excepted."""
    tree = ast.parse(path.read_text())
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef)) and n.body
            and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}  # fmt: skip
    return {n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs}  # fmt: skip


def test_the_result_files_are_named_in_one_place():
    names = (HESSIAN_JSON, SNAPSHOT_HESSIAN)
    owner = REPO / "src/fisherlab/hessian/spec.py"
    assert set(names) <= _string_literals(owner)
    code = [*REPO.glob("src/fisherlab/**/*.py"), *REPO.glob("workflow/scripts/*.py")]
    named = [str(p.relative_to(REPO)) for p in code if p != owner and any(
        s.endswith(n) for s in _string_literals(p) for n in names)]  # fmt: skip
    assert named == [], named
    quoted = re.compile("[\"'/]" + "|".join(re.escape(n) for n in names) + "[\"']")
    rules = [str(p.relative_to(REPO)) for p in [REPO / "Snakefile", *REPO.glob("workflow/rules/*.smk")]
             if quoted.search(p.read_text())]  # fmt: skip
    assert rules == []


# =========================================================================== the job against a dense Hessian

if "hessian_test_tiny" not in MODELS:

    @register("hessian_test_tiny")
    class _Tiny(nn.Module):
        """Conv - tanh - pool - Linear: 83 parameters, a Hessian small enough to form densely."""

        def __init__(self, num_classes: int = 3):
            super().__init__()
            self.net = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Tanh(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                                     nn.Linear(8, num_classes))  # fmt: skip

        def forward(self, x):
            return self.net(x)


def dense_trace(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Reference: the trace of the dense (P, P) Hessian of the mean cross-entropy loss
    w.r.t. the flattened parameters, formed by torch.autograd.functional.hessian in float64."""
    model = copy.deepcopy(model).double().eval()
    names, params = zip(*model.named_parameters())
    flat0 = torch.cat([p.detach().flatten() for p in params])

    def loss(flat):
        parts = [t.view(p.shape) for t, p in zip(flat.split([p.numel() for p in params]), params)]
        return F.cross_entropy(functional_call(model, dict(zip(names, parts)), (x.double(),)), y)

    return torch.trace(torch.autograd.functional.hessian(loss, flat0)).item()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A planned run of the tiny model on 24 synthetic 8x8 images, its weights saved."""
    root = tmp_path_factory.mktemp("hessian")
    save_dataset(root / "train.npz", make_synthetic(24, num_classes=3, image_size=8, seed=4))
    save_dataset(root / "test.npz", make_synthetic(6, num_classes=3, image_size=8, seed=4, split="test"))
    spec = RunSpec(id="tiny/final/seed0", family="fisher_penalty", seed=0, lr=0.1,
                   train={"model": "hessian_test_tiny", "epochs": 1, "batch_size": 8},
                   data={"val_size": 0, "augment": False},
                   inputs={"train": str(root / "train.npz"), "test": str(root / "test.npz")})  # fmt: skip
    torch.manual_seed(0)
    model = _Tiny(num_classes=3)
    torch.save(model.state_dict(), root / "model.pt")
    (root / "summary.json").write_text('{"status": "ok"}')
    data = load_data(root / "train.npz", root / "test.npz", val_size=0).train
    return spec, root, model, data


def test_the_job_matches_the_trace_of_a_dense_float64_hessian(tiny_run):
    torch.set_num_threads(1)
    spec, root, model, data = tiny_run
    n = len(data)
    dim = sum(p.numel() for p in model.parameters())
    for examples, idx in ((1000, np.arange(n)),  # more than the split: all of it
                          (10, np.sort(np.random.default_rng(0).choice(n, 10, replace=False)))):  # as documented
        x, y = data.batch(idx)
        exact = dense_trace(model, x, y)
        # Hutch++ with k = M // 3 >= dim sketches the whole space: exact up to float32
        pp = HessianSpec(num_probes=3 * dim + 3, method="hutchpp", examples=examples)
        out = trace_hessian_of_weights(spec, spec.inputs, {"w": root / "model.pt"}, pp, device="cpu")["w"]
        assert out["trace_hessian"] == pytest.approx(exact, rel=1e-4, abs=1e-6)
        assert out["examples"] == len(idx) and out["num_probes"] == 3 * dim + 3 and out["method"] == "hutchpp"
        for distribution in DISTRIBUTIONS:  # Hutchinson: within 5 of its reported standard errors
            h = HessianSpec(num_probes=64, distribution=distribution, examples=examples)
            out = trace_hessian_of_weights(spec, spec.inputs, {"w": root / "model.pt"}, h, device="cpu")["w"]
            assert 0 < out["stderr"] and abs(out["trace_hessian"] - exact) < 5 * out["stderr"] + 1e-5 * abs(exact)
            assert out["distribution"] == distribution


def test_the_run_record_carries_the_spec_and_a_missing_file_is_nan(tiny_run):
    torch.set_num_threads(1)
    spec, root, _, _ = tiny_run
    h = HessianSpec(num_probes=3, examples=5)
    record = trace_hessian_of_run(spec, spec.inputs, root / "model.pt", root / "summary.json", h, device="cpu")
    assert list(record) == ["trace_hessian", "stderr", "num_probes", "distribution", "method", "examples", "status"]
    assert record["status"] == "ok" and {k: record[k] for k in h.to_dict()} == h.to_dict()
    assert np.isnan(trace_hessian_of_weights(spec, spec.inputs, {"none": None}, h, device="cpu")["none"]["stderr"])
    with pytest.raises(TypeError, match="hessian must be a HessianSpec"):
        trace_hessian_of_weights(spec, spec.inputs, {}, {"num_probes": 3}, device="cpu")

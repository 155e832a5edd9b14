"""The pipeline's job code without Snakemake: a planned run trained by run_planned, then
its Tr(H) measured by fisherlab.hessian's trace_hessian_of_run, for a tiny run of every model family (the
model rebuilt from the run's own spec, model_kwargs included)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from fisherlab.data import make_synthetic, save_dataset
from fisherlab.experiment import run_planned
from fisherlab.hessian import HessianSpec, trace_hessian_of_run
from fisherlab.models import build_model
from fisherlab.plan import build_plan
from test_plan import load

FAMILIES = [  # (model, model_kwargs): one per model file, the kwargs a setting may give
    ("simple_cnn", {}),
    ("vgg11", {}),
    ("wrn44_3", {}),
    ("wrn44_3_skipinit", {}),
    ("densenet40_12", {}),
    ("resnet26", {}),
    ("resnet18_fixup", {"small_input": True}),
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    save_dataset(root / "train.npz", make_synthetic(40, num_classes=4, seed=1))
    save_dataset(root / "test.npz", make_synthetic(8, num_classes=4, seed=1, split="test"))
    return root


def tiny_config(dataset, model, kwargs):
    recipe = {"model": model, "model_kwargs": kwargs, "dataset": "tiny", "epochs": 1, "batch_size": 16,
              "val_size": 8, "lr_grid": [0.01], "lr_star": 0.01, "epsilon": 1.0, "fisher_every": 0,
              "fisher_examples": 4, "regularizers": {}}  # fmt: skip
    return load({"run_settings": ["tiny"], "seeds": [0], "settings": {"tiny": recipe},
                 "data": {"local": {"tiny": {"train": str(dataset / "train.npz"), "test": str(dataset / "test.npz")}}},
                 "noisy": {"settings": {}, "figures": {"fig5": None, "fig11": None, "fig12": None}}})  # fmt: skip


@pytest.mark.slow  # spawns Snakemake or trains: end-to-end
@pytest.mark.parametrize("model, kwargs", FAMILIES, ids=[m for m, _ in FAMILIES])
def test_a_planned_run_and_its_hessian_job(tmp_path, dataset, model, kwargs):
    torch.set_num_threads(1)
    plan = build_plan(tiny_config(dataset, model, kwargs))
    spec = plan.run("tiny/final/eta_star/seed0")
    inputs = dict(spec.inputs)
    inputs["lr"] = str(tmp_path / "lr_star.json")  # what the select rule writes for a fixed lr_star
    (tmp_path / "lr_star.json").write_text(json.dumps({"key": "lr", "value": 0.01, "source": "config"}))
    out = tmp_path / "run"
    result = run_planned(spec, inputs, device="cpu", checkpoint=tmp_path / "ckpt.pt", out_dir=out,
                         log=lambda s: None)  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == result.status == "ok"
    assert summary["config"]["model"] == model and summary["config"]["model_kwargs"] == kwargs
    assert (summary["setting"], summary["role"], summary["family"]) == ("tiny", "eta_star", "fisher_penalty")
    h = trace_hessian_of_run(spec, inputs, out / "model.pt", out / "summary.json",
                             HessianSpec(num_probes=2, examples=4), device="cpu")  # fmt: skip
    assert h["status"] == "ok" and math.isfinite(h["trace_hessian"]) and h["examples"] == 4
    if model == "simple_cnn":  # the config's hessian.method: Hutch++ with the same budget
        pp = trace_hessian_of_run(spec, inputs, out / "model.pt", out / "summary.json",
                                  HessianSpec(num_probes=6, examples=4, method="hutchpp"), device="cpu")  # fmt: skip
        assert pp["method"] == "hutchpp" and math.isfinite(pp["trace_hessian"]) and pp["trace_hessian"] != h["trace_hessian"]
    if kwargs:  # the bug this guards against: a model rebuilt without the setting's model_kwargs
        with pytest.raises(RuntimeError):
            build_model(model, num_classes=4).load_state_dict(torch.load(out / "model.pt"))


def test_a_diverged_run_gets_no_hessian(tmp_path, dataset):
    plan = build_plan(tiny_config(dataset, "simple_cnn", {}))
    spec = plan.run("tiny/final/eta_star/seed0")
    inputs = {**spec.inputs, "lr": str(tmp_path / "lr.json")}
    (tmp_path / "lr.json").write_text(json.dumps({"key": "lr", "value": 1e4, "source": "config"}))
    run_planned(spec, inputs, device="cpu", out_dir=tmp_path / "run", checkpoint=tmp_path / "c.pt",
                log=lambda s: None)  # fmt: skip
    assert json.loads((tmp_path / "run/summary.json").read_text())["status"] == "diverged"
    h = trace_hessian_of_run(spec, inputs, tmp_path / "run/model.pt", tmp_path / "run/summary.json",
                             HessianSpec(num_probes=2, examples=4), device="cpu")  # fmt: skip
    assert h["status"] == "diverged" and h["trace_hessian"] is None  # NaN is written as null

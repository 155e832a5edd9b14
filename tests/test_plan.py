"""The run plan (fisherlab.plan) of the paper's config and of the demo, without Snakemake's
DAG: how many runs each family has, their paths, what each trains (lr, regularizer,
strength, resolved from made-up selection files) and what each reads."""

from __future__ import annotations

import copy
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from snakemake.utils import validate

from fisherlab.plan import FAMILIES, PlanError, Ref, RunSpec, SelectionError, build_plan, read_selection
from fisherlab.plan.fisher_penalty import alpha_grid
from fisherlab.training.train_config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
SCHEMA = str(REPO / "workflow/schemas/config.schema.yaml")


def load(*overlays: str | dict) -> dict:
    """config.yaml with overlays merged on top (as Snakemake's --configfile does: a
    recursive update of mappings), validated with the schema's defaults filled in."""
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    for o in overlays:
        _update(cfg, yaml.safe_load((REPO / o).read_text()) if isinstance(o, str) else o)
    validate(cfg, SCHEMA, set_default=True)
    return cfg


def _update(a: dict, b: dict) -> None:
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(a.get(k), dict):
            _update(a[k], v)
        else:
            a[k] = v


PAPER = load()


def fake_reader(values):
    """read(name) for Ref resolution: a selection file per input name."""
    return lambda name: {"key": name, "value": values[name], "source": "test"}


def test_alpha_grids_have_the_papers_size():
    from fisherlab.plan.fisher_penalty import alpha_grid

    assert alpha_grid(0.01) == pytest.approx([0.01 * 10 ** (i / 4.5 - 1) for i in range(10)], rel=1e-3)
    assert alpha_grid(0.01, 5) == pytest.approx([0.001, 0.003162, 0.01, 0.03162, 0.1], rel=1e-3)
    assert alpha_grid(0.01, 1) == [0.01]
    tin = [s for s in PAPER["settings"].values() if s["dataset"] == "tinyimagenet" and s["table"] == 1]
    assert tin and all(r["count"] == 5 for s in tin for r in s["regularizers"].values())


def test_the_paper_config_plan_counts_per_family():
    plan = build_plan(PAPER)
    seeds = len(PAPER["seeds"])
    expected = Counter()
    noisy_bases = {ns["base"] for ns in PAPER["noisy"]["settings"].values() if ns["lr"] is None}
    for name, s in PAPER["settings"].items():
        regs, table = len(s["regularizers"]), s["table"]
        if table == 0:
            expected["lr_search"] += len(s["lr_grid"]) if name in noisy_bases and s["lr_star"] is None else 0
            continue
        expected["lr_search"] += len(s["lr_grid"]) if s["lr_star"] is None else 0
        grids = sum(r["count"] for r in s["regularizers"].values())  # 10 alphas each; 5 for TinyImageNet (I.2)
        expected["fisher_penalty"] += grids + ((2 if table == 1 else 1) + regs) * seeds
    fractions = len(PAPER["noisy"]["fractions"])
    for ns in PAPER["noisy"]["settings"].values():
        regs = len(ns["regularizers"])
        grid = sum(len(g) for g in ns["regularizers"].values())
        expected["noisy"] += fractions * (seeds + grid + regs * seeds)
    got = Counter(r.family for r in plan.runs.values() if r.family in expected)  # the others: their own tests
    assert got == expected
    noisy_regs = len(PAPER["noisy"]["fractions"]) * sum(len(ns["regularizers"]) for ns in PAPER["noisy"]["settings"].values())
    assert len(plan.adopted()) == noisy_regs
    table_settings = [s for s in PAPER["settings"].values() if s["table"] != 0]
    lr_selections = len(table_settings) + len({ns["base"] for ns in PAPER["noisy"]["settings"].values()} - {
        n for n, s in PAPER["settings"].items() if s["table"] != 0})  # fmt: skip
    assert len(plan.selections) == lr_selections + sum(len(s["regularizers"]) for s in table_settings) + noisy_regs
    assert sum(r.hessian for r in plan.runs.values()) == sum(
        ((2 if s["table"] == 1 else 1) + len(s["regularizers"])) * seeds for s in table_settings)


@pytest.mark.parametrize("overlays", [(), ("configs/demo.yaml",), ("configs/cifar10-subset.yaml",)])
def test_run_paths_are_unique_and_well_formed(overlays):
    plan = build_plan(load(*overlays))
    paths = [r.path for r in plan.runs.values()]
    assert len(paths) == len(set(paths)) == len(plan.runs)
    for r in plan.runs.values():
        assert r.path.startswith("results/runs/") and r.checkpoint.startswith("results/checkpoints/")
        assert all(part and part not in (".", "..") for part in r.id.split("/"))
        assert r.id.split("/")[-1] == f"seed{r.seed}"


def test_the_alpha_grid_is_the_papers_log_spacing():
    for v in (0.01, 1.0, 0.3):
        want = [float(f"{a:.4g}") for a in np.logspace(math.log10(0.1 * v), math.log10(10 * v), 10)]
        assert alpha_grid(v) == want


def test_table1_runs_resolve_lr_regularizer_and_strength():
    plan = build_plan(PAPER)
    s = PAPER["settings"]["simplecnn_c10"]
    read = fake_reader({"lr": 0.1, "alpha": 0.03})
    cases = {  # role -> (lr, regularizer, alpha)
        "eta_star": (0.1, "none", None),
        "baseline": (0.01, "none", None),
        "fp": (0.01, "fp", 0.03),
        "gpx": (0.01, "gpx", 0.03),
    }
    for role, (lr, reg, alpha) in cases.items():
        spec = plan.run(f"simplecnn_c10/final/{role}/seed1")
        cfg, fields = spec.resolve(read)
        assert (cfg.lr, cfg.regularizer, cfg.regularizer_kwargs.get("alpha")) == pytest.approx((lr, reg, alpha))
        assert fields["alpha"] == alpha and fields["lr"] == pytest.approx(lr) and fields["role"] == role
        assert (cfg.model, cfg.epochs, cfg.seed, cfg.epsilon) == ("simple_cnn", 300, 1, 1.2)
        assert cfg.milestones == s["milestones"] and cfg.fisher_examples == 128
        assert spec.inputs["train"] == "results/data/cifar10/train.npz"
        assert spec.inputs["lr"] == "results/selection/simplecnn_c10/lr_star.json"
        assert ("alpha" in spec.inputs) == (reg != "none")
        if reg != "none":
            assert spec.inputs["alpha"] == f"results/selection/simplecnn_c10/{reg}/alpha_star.json"
            assert cfg.regularizer_kwargs["every"] == 10
    # TinyImageNet's baseline runs at eta*/30 (I.2); Table 2 runs FP at eta* itself
    cfg, _ = plan.run("wrn_tinyimagenet/final/baseline/seed0").resolve(read)
    assert cfg.lr == pytest.approx(0.1 / 30) and cfg.bn_update_batches == 100
    cfg, _ = plan.run("vgg11_c100_aug/final/fp/seed0").resolve(read)
    assert cfg.lr == pytest.approx(0.1) and cfg.regularizer == "fp"
    assert "simplecnn_c10_aug/final/baseline/seed0" not in plan.runs


def test_search_runs_and_selections():
    plan = build_plan(PAPER)
    grid = plan.selection("simplecnn_c10/lr_star")
    assert grid.key == "lr" and grid.fixed is None
    assert grid.candidates == [f"simplecnn_c10/lrgrid/lr{v}/seed0" for v in ("0.01", "0.0316", "0.1", "0.316", "1")]
    cfg, fields = plan.run("simplecnn_c10/lrgrid/lr0.0316/seed0").resolve(fake_reader({}))
    assert cfg.lr == 0.0316 and cfg.regularizer == "none" and fields["role"] == "lrgrid"
    alphas = plan.selection("simplecnn_c10/gpx/alpha_star")
    assert [plan.run(c).strength for c in alphas.candidates] == alpha_grid(1.0)
    cfg, _ = plan.run(alphas.candidates[0]).resolve(fake_reader({"lr": 0.1}))
    assert cfg.lr == pytest.approx(0.01)
    assert cfg.regularizer_kwargs == {"alpha": 0.1, "every": 10, "reduction": "per_example"}
    # a fixed number skips a search: no grid runs, the selection holds the number
    fixed = copy.deepcopy(PAPER)
    fixed["settings"]["simplecnn_c10"]["lr_star"] = 0.05
    fixed["settings"]["simplecnn_c10"]["regularizers"]["fp"]["alpha"] = 0.02
    plan = build_plan(fixed)
    assert plan.selection("simplecnn_c10/lr_star").fixed == 0.05
    assert plan.selection("simplecnn_c10/fp/alpha_star").inputs() == []
    assert not any(r.startswith("simplecnn_c10/lrgrid") or r.startswith("simplecnn_c10/alphagrid/fp/")
                   for r in plan.runs)  # fmt: skip


def test_noisy_runs_resolve_over_their_base():
    plan = build_plan(PAPER)
    base = PAPER["settings"]["vgg11_c100"]
    b = plan.run("vgg11_c100_noisy/noise0.25/baseline/seed2")
    cfg, fields = b.resolve(fake_reader({"lr": 0.1}))
    assert (cfg.lr, cfg.regularizer, cfg.weight_decay, cfg.epochs) == (0.1, "none", 0.0, base["epochs"])
    assert cfg.group_examples == 512 and cfg.model == "vgg11"
    assert fields | {"label_noise": 0.25, "base": "vgg11_c100", "setting": "vgg11_c100_noisy", "role": "baseline"} == fields
    assert b.inputs["noise"] == "results/data/cifar100/noise/frac0.25_seed2.csv"
    assert b.inputs["lr"] == "results/selection/vgg11_c100/lr_star.json"
    g = plan.run("vgg11_c100_noisy/noise0.5/mixup/beta0.8/seed0")
    cfg, fields = g.resolve(fake_reader({"lr": 0.1}))
    assert cfg.regularizer_kwargs == {"beta": 0.8} and fields["beta"] == 0.8 and fields["alpha"] is None
    sel = plan.run("vgg11_c100_noisy/noise0.5/fp/selected/seed1")
    cfg, _ = sel.resolve(fake_reader({"lr": 0.1, "choice": 3.1}))
    assert cfg.regularizer_kwargs == {"alpha": 3.1, "every": 10} and sel.adopt is None
    adopted = plan.run("vgg11_c100_noisy/noise0.5/fp/selected/seed0")
    assert adopted.adopt == "choice"
    assert plan.adoption_inputs(adopted.id)["grid"] == [
        f"results/runs/vgg11_c100_noisy/noise0.5/fp/alpha{v}/seed0/summary.json" for v in ("0.01", "0.1", "0.31", "1", "3.1", "10")]
    # the ResNet-52 row searches eta* of its recipe-only base
    assert "resnet52_c100/lrgrid/lr0.001/seed0" in plan.runs


def test_the_demo_plan():
    plan = build_plan(load("configs/demo.yaml"))
    # Table 1 with SAM (alpha and rho fixed: no grids), Table 3 (one-value grids, adopted),
    # 2 x 2 sweep points x 2 seeds, Fig. 3 at E = 20, Fig. 6: 2 phase-1 models x 2 seeds
    assert Counter(r.family for r in plan.runs.values()) == {"lr_search": 2, "fisher_penalty": 7, "noisy": 11,
                                                            "sweeps": 8, "late_fp": 1, "two_phase": 6}  # fmt: skip
    assert {r.fields["setting"] for r in plan.runs.values()} == {"demo_digits", "demo_noisy"}
    for r in plan.runs.values():
        assert r.inputs["train"] == "results/data/digits/train.npz"


def test_a_run_spec_survives_snakemakes_params():
    plan = build_plan(PAPER)
    for spec in list(plan.runs.values())[::37]:
        again = RunSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
        assert again == spec
        assert again.resolve(fake_reader({"lr": 0.1, "alpha": 0.2, "choice": 0.3})) == spec.resolve(
            fake_reader({"lr": 0.1, "alpha": 0.2, "choice": 0.3}))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c.update(run_settings=["nope"]), "run_settings names 'nope'"),
        (lambda c: c["settings"]["simplecnn_c10"].update(dataset="mnist"), "data.local"),
        (lambda c: c["noisy"]["settings"]["vgg11_c100_noisy"].update(base="nope"), "its base 'nope'"),
        (lambda c: c["noisy"].update(run_settings=["nope"]), "not under noisy.settings"),
        (lambda c: c["noisy"]["figures"].update(fig5="nope"), "not under noisy.settings"),
        (lambda c: c["noisy"]["figures"].update(noise=0.3), "not one of noisy.fractions"),
    ],
)
def test_inconsistent_configs_are_plan_errors(edit, message):
    cfg = copy.deepcopy(PAPER)
    edit(cfg)
    with pytest.raises(PlanError, match=message):
        build_plan(cfg)


def test_every_family_is_registered_and_runs_on_the_paper_config():
    assert {"fisher_penalty", "noisy", "sweeps"} <= set(FAMILIES)
    families = Counter(r.family for r in build_plan(PAPER).runs.values())
    assert set(FAMILIES) <= set(families)  # each contributes runs
    for name in ("fisher_penalty", "noisy", "sweeps"):  # self-contained: they make their own selections
        assert build_plan(PAPER, families=[name]).runs
    cfg = copy.deepcopy(PAPER)  # a run that reads a selection no family makes is refused
    build_plan(cfg)
    plan = build_plan(cfg, families=["fisher_penalty"])
    del plan.selections["simplecnn_c10/lr_star"]
    with pytest.raises(PlanError, match="no selection of the plan"):
        from fisherlab.plan import _check_inputs

        _check_inputs(plan)


def test_read_selection_names_the_file_and_what_is_wrong(tmp_path):
    good = tmp_path / "lr_star.json"
    good.write_text(json.dumps({"key": "lr", "value": 0.1, "source": "search"}))
    assert read_selection(good)["value"] == 0.1
    for name, text, message in [
        ("missing.json", json.dumps({"key": "lr", "source": "search"}), r"lacks \['value'\]"),
        ("list.json", "[1, 2]", "not a JSON object"),
        ("broken.json", '{"key": "lr", ', "not valid JSON"),
        ("nan.json", json.dumps({"key": "lr", "value": "fast", "source": "x"}), "finite number"),
    ]:
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(SelectionError, match=message) as err:
            read_selection(path)
        assert str(path) in str(err.value)
    with pytest.raises(SelectionError, match="cannot read"):
        read_selection(tmp_path / "absent.json")
    spec = build_plan(PAPER).run("simplecnn_c10/final/fp/seed0")
    spec.inputs["alpha"] = str(tmp_path / "missing.json")
    with pytest.raises(SelectionError, match="missing.json"):
        spec.resolve(lambda name: read_selection(spec.inputs[name]) if name == "alpha" else {"value": 0.1})


def test_refs_scale_the_selected_value():
    assert Ref("lr", 1 / 30).resolve(fake_reader({"lr": 0.3})) == pytest.approx(0.01)


# ------------------------------------------------------------- one source of defaults


def schema_defaults(path: list[str]) -> dict:
    schema = yaml.safe_load(Path(SCHEMA).read_text())
    node = schema
    for key in path:
        node = node[key]
    return {k: v["default"] for k, v in node["properties"].items() if isinstance(v, dict) and "default" in v}


def test_the_schema_defaults_are_the_librarys():
    lib = TrainConfig().to_dict()
    setting = schema_defaults(["$defs", "setting"])
    shared = sorted(set(setting) & set(lib))
    assert {"batch_size", "momentum", "weight_decay", "milestones", "gamma", "fisher_every", "fisher_examples",
            "fisher_every_early", "bn_update_batches", "model_kwargs"} <= set(shared)  # fmt: skip
    assert {k: setting[k] for k in shared} == {k: lib[k] for k in shared}
    noisy = schema_defaults(["$defs", "noisy_setting"])
    assert noisy["group_examples"] == lib["group_examples"]
    from fisherlab.penalties import GradientNormPenalty
    import inspect

    every = inspect.signature(GradientNormPenalty).parameters["every"].default
    assert noisy["every"] == schema_defaults(["$defs", "regularizer"])["every"] == every
    from fisherlab.curvature import trace_hessian

    hessian = schema_defaults(["properties", "hessian"])
    params = inspect.signature(trace_hessian).parameters
    assert hessian["num_probes"] == params["num_probes"].default
    assert hessian["distribution"] == params["distribution"].default and hessian["method"] == params["method"].default


def test_one_config_line_adds_sam_to_tables_1_and_3():
    plain, sam = build_plan(PAPER), build_plan(load({"sam": {"enabled": True}}))
    assert not [r for r in plain.runs.values() if r.regularizer == "sam"]
    table1 = [n for n, s in PAPER["settings"].items() if s["table"] == 1]
    finals = sam.select("fisher_penalty", role="sam")
    assert {r.fields["setting"] for r in finals} == set(table1) and len(finals) == len(table1) * len(PAPER["seeds"])
    grid = sam.selection("simplecnn_c10/sam/rho_star")
    assert [sam.run(c).strength for c in grid.candidates] == [0.01, 0.02, 0.05, 0.1, 0.2, 0.5]
    cfg, fields = sam.run("simplecnn_c10/final/sam/seed0").resolve(fake_reader({"lr": 0.1, "rho": 0.05}))
    assert (cfg.regularizer, cfg.regularizer_kwargs, fields["rho"]) == ("sam", {"rho": 0.05}, 0.05)
    assert cfg.lr == pytest.approx(0.01)  # the small lr, like the penalties
    noisy = sam.select("noisy", role="sam", stage="grid")
    assert len(noisy) == 6 * len(PAPER["noisy"]["fractions"]) * len(PAPER["noisy"]["settings"])
    assert sam.run("vgg11_c100_noisy/noise0.5/sam/selected/seed0").adopt == "choice"


def test_every_setting_key_that_is_a_train_config_field_reaches_the_runs():
    from fisherlab.plan.settings import RECIPE_KEYS

    schema = yaml.safe_load(Path(SCHEMA).read_text())["$defs"]["setting"]["properties"]
    fields = set(TrainConfig().to_dict())
    assert {k for k in schema if k in fields} <= set(RECIPE_KEYS) | {"epsilon"}
    cfg = copy.deepcopy(PAPER)
    cfg["settings"]["simplecnn_c10"].update(fisher_every_early=7, train_eval_examples=300)
    spec, _ = build_plan(cfg).run("simplecnn_c10/final/fp/seed0").resolve(fake_reader({"lr": 0.1, "alpha": 0.01}))
    assert (spec.fisher_every_early, spec.train_eval_examples) == (7, 300)

"""Miniature mode (configs/miniature.yaml, fisherlab.plan.miniature.shrink): the paper's
config, the demo and a user's own settings keep every family, table and figure, with
every size shrunk, at the plan level (no training)."""

from __future__ import annotations

import copy
import math
import re
import subprocess
import sys
from collections import defaultdict

import pytest
from snakemake.utils import validate

from fisherlab.plan import build_plan, data_files, fisher_penalty, interventions, noisy, sweeps
from fisherlab.plan.miniature import _batch_sizes, _Shrink, miniature_shape, pick, scale_milestones, shrink
from fisherlab.plan.settings import DATASETS, PlanError
from test_plan import REPO, SCHEMA, load

MINI = "configs/miniature.yaml"


def mini(*overlays) -> dict:
    """A config with the miniature overlay last, shrunk as workflow/rules/common.smk does."""
    return shrink(load(*overlays, MINI))


def targets(config: dict, plan) -> set[str]:
    """The tables and figures of rule all (Snakefile), from the plan's functions."""
    out = {t for table, names in {1: ["table1", "table4", "table5", "table6"], 2: ["table2", "table7"]}.items()
           if fisher_penalty.settings_of(config, table) for t in names}  # fmt: skip
    out |= {"fig4"} if fisher_penalty.settings_of(config, 1) else set()
    out |= {"table3", "table8", "table9"} | set(noisy.figures(config))
    out |= {"early_phase"} if sweeps.sweep_names(config) else set()
    out |= set(sweeps.figures(config)) | set(interventions.figures(config, plan))
    fig1 = config["sweeps"]["figures"]["fig1"]
    return out | ({"fig1"} if fig1 in fisher_penalty.settings_of(config, 1) else set())


def figure_inputs(config: dict, plan) -> dict[str, list[str]]:
    out = {fig: noisy.figure_runs(plan, config, fig) for fig in noisy.figures(config)}
    out |= {fig: interventions.figure_inputs(config, fig, plan) for fig in interventions.figures(config, plan)}
    out |= {fig: [r.id for n in ([w] if isinstance(w, str) else w) for r in plan.select("sweeps", sweep=n)]
            for fig, w in sweeps.figures(config).items()}  # fmt: skip
    return out


def point(run_id: str) -> str:
    """A run's id without its seed: the runs of one point of a grid or sweep."""
    return re.sub(r"/seed\d+$", "", run_id)


@pytest.fixture(scope="module")
def paper():
    full = load()
    small = mini()
    return full, build_plan(full), small, build_plan(small)


def test_shrunk_config_is_valid_idempotent_and_pure(paper):
    full, _, small, _ = paper
    validate(copy.deepcopy(small), SCHEMA, set_default=True)
    assert shrink(small) == small
    raw = load(MINI)
    before = copy.deepcopy(raw)
    shrink(raw)
    assert raw == before  # the argument is not changed
    assert shrink(full) == full  # miniature off: the config as it is


def test_every_family_table_and_figure_is_kept(paper):
    full, pf, small, pm = paper
    fams = lambda p: {r.family for r in p.runs.values()}  # noqa: E731
    assert fams(pm) == fams(pf)
    assert targets(small, pm) == targets(full, pf)
    assert targets(full, pf) >= {f"table{i}" for i in range(1, 10)} | {f"fig{i}" for i in range(1, 22) if i != 10}
    assert set(sweeps.sweep_names(small)) == set(sweeps.sweep_names(full))
    assert set(fisher_penalty.settings_of(small)) == set(fisher_penalty.settings_of(full))
    assert set(noisy.noisy_settings(small)) == set(noisy.noisy_settings(full))
    assert {re.sub(r"\d", "", s) for s in pm.selections} == {re.sub(r"\d", "", s) for s in pf.selections}
    for fig, files in figure_inputs(small, pm).items():
        assert files, fig
    # every panel and series: Fig. 14's sets, Figs. 6/13's high and low, Fig. 3's start epochs
    labels = interventions.figure_labels(small, "fig14")
    panels = {(r.fields["setting"], lab["set"]) for r, lab in interventions.hessian_along_labelled(small, "fig14")}
    assert panels == {(n, k) for n, p in full["interventions"]["fig14"]["panels"].items() for k in p["sets"]}
    assert labels
    for fig in ("fig6", "fig13"):
        runs = interventions.two_phase_plan(small, fig)
        assert set(runs) == {"high", "low"} and all(len(v) >= 2 for v in runs.values())
    starts = {r.fields["start_epoch"] for r in pm.select("late_fp")}
    assert starts and 0 in small["interventions"]["fig3"]["start_epochs"]


def test_every_size_is_shrunk(paper):
    full, pf, small, pm = paper
    m = small["miniature"]
    assert len(pm.runs) < len(pf.runs) / 5
    assert all(data_files(small, d)["train"].startswith(m["data_root"] + "/") for d in DATASETS)
    assert small["data"]["root"] != full["data"]["root"]
    for r in pm.runs.values():
        t = r.train
        assert t["epochs"] <= m["epochs"], r.id
        assert m["min_batch_size"] <= t["batch_size"] <= m["batch_size"], r.id  # no batch of 1
        assert t["fisher_examples"] <= m["fisher_examples"], r.id
        assert r.data["val_size"] <= m["val_examples"] < m["examples"], r.id
        assert t.get("group_examples", 0) <= m["fisher_examples"]
        assert t["epsilon"] is None or t["epsilon"] >= m["epsilon"], r.id  # Tr(F_i) reached in a few steps
    seeds = defaultdict(set)
    for r in pm.runs.values():
        seeds[point(r.id)].add(r.seed)
    assert max(map(len, seeds.values())) <= m["seeds"]
    assert max(len(s.candidates) for s in pm.selections.values()) <= m["grid"]
    for name in sweeps.sweep_names(small):
        assert len({r.fields["value"] for r in pm.select("sweeps", sweep=name)}) <= m["grid"]
    for fig in ("fig16", "fig17", "fig20"):
        assert len({r.strength for r in pm.select("alpha_sweep") if r.id.startswith(
            small["interventions"][fig]["setting"])}) <= m["grid"] * len(small["interventions"][fig]["every"]) * 3
    assert len(small["sam"]["rho_grid"]) <= m["grid"] and len(small["noisy"]["fractions"]) <= m["grid"]
    assert small["noisy"]["figures"]["noise"] in small["noisy"]["fractions"]
    assert small["hessian"]["examples"] <= m["hessian_examples"] and small["hessian"]["num_probes"] <= m["hessian_num_probes"]
    assert set(small["report_notes"]) >= {"table1", "fig21", "early_phase"}
    assert all("Miniature" in note for note in small["report_notes"].values())
    # the batch sizes keep their order: Fig. 13's high regularization is the smaller batch
    f13 = small["interventions"]["fig13"]
    assert f13["high"]["batch_size"] < f13["low"]["batch_size"]


def test_batch_sizes_map_onto_the_miniatures_range_in_order(paper):
    """config.yaml's 80 to 2048 onto 8 to 16 by one power (g = ln 2 / ln 25.6): the
    smallest becomes min_batch_size, the largest batch_size, and no two swap."""
    full, _, small, _ = paper
    sh = _Shrink(full)
    sizes = sorted(set(_batch_sizes(full)))
    mapped = [sh.batch(b) for b in sizes]
    assert (sizes[0], sizes[-1]) == (80, 2048) and (mapped[0], mapped[-1]) == (8, 16)
    assert mapped == sorted(mapped)
    assert sh.batch(128) == round(16 * (128 / 2048) ** (math.log(2) / math.log(2048 / 80))) == 9
    assert sh.batch(256) == 10 and sh.batch(100) == 8 and sh.batch(1280) == 14
    assert small["settings"]["wrn_c100"]["batch_size"] == 9


def test_milestones_and_start_epochs_stay_valid(paper):
    _, pf, small, pm = paper
    for r in pm.runs.values():
        ms, e = r.train.get("milestones", []), r.train["epochs"]
        assert ms == sorted(set(ms)) and all(1 <= x < e for x in ms), (r.id, ms, e)
        assert all(0 <= k <= e for k in r.train.get("keep_epochs", [])), r.id
        start = r.reg_kwargs.get("start_epoch")
        assert start is None or 1 <= start < e, r.id
    for fig in ("fig6", "fig13"):
        b = small["interventions"][fig]
        assert 1 <= b["phase1_epochs"] < b["epochs"] <= small["miniature"]["epochs"]
    starts = small["interventions"]["fig3"]["start_epochs"]
    assert starts == sorted(set(starts)) and starts[0] == 0 and len(starts) >= 2
    assert all(s < small["settings"][n]["epochs"] for n in small["interventions"]["fig3"]["settings"] for s in starts)
    # Fig. 14's kept weights: at least the initial ones and the last epoch's
    for r in pm.select("hessian_along"):
        assert r.train["keep_epochs"][0] == 0 and r.train["keep_epochs"][-1] == r.train["epochs"]


def test_a_users_own_setting_sweep_and_dataset_are_shrunk_too():
    user = {
        "seeds": [3, 4, 5, 6],
        "run_settings": ["my_net"],
        "data": {"local": {"mydata": {"train": "/data/mine/train.npz", "test": "/data/mine/test.npz"}}},
        "settings": {"my_net": {"model": "resnet32", "dataset": "mydata", "epochs": 500, "batch_size": 512,
                                "milestones": [100, 250, 400], "lr_grid": [0.001, 0.003, 0.01, 0.03, 0.1, 0.3],
                                "val_size": 8000, "epsilon": 2.0, "fisher_examples": 1000, "fisher_every": 500,
                                "bn_update_batches": 100,
                                "regularizers": {"fp": {"v": 0.1, "count": 7, "every": 50}}}},
        "sweeps": {"run_sweeps": ["my_bs"], "settings": {"my_bs": {
            "recipe": "my_net", "lr": 0.1, "batch_size": [64, 128, 256, 512, 1024], "seeds": 10}}},
        "noisy": {"run_settings": ["my_noisy"], "settings": {"my_noisy": {
            "base": "my_net", "regularizers": {"fp": [0.1, 1.0, 10.0], "mixup": [0.2, 0.4, 0.8]}}}},
        "miniature": {"local_shapes": {"mydata": {"image_size": 28, "channels": 1, "num_classes": 47}},
                      # knobs set here (not the defaults), so the arithmetic below is the rules'
                      "examples": 256, "val_examples": 64, "epochs": 3, "batch_size": 128, "fisher_examples": 32,
                      "bn_update_batches": 5},
    }  # fmt: skip
    small = mini(user)
    plan = build_plan(small)
    s = small["settings"]["my_net"]
    # batch sizes: 64 to 2048 (config.yaml's largest, Fig. 19's) onto 8 to 128, g = ln 16 / ln 32 = 0.8:
    # 512 -> 128 (512 / 2048)^0.8 = 42
    assert s["epochs"] == 3 and s["milestones"] == [1, 2] and s["batch_size"] == 42
    assert len(s["lr_grid"]) == 2 and s["lr_grid"] == [0.001, 0.3] and s["regularizers"]["fp"]["count"] == 2
    assert s["val_size"] == 64 and s["fisher_examples"] == 32 and small["seeds"] == [3]
    assert s["bn_update_batches"] == 5  # 100, capped at the knob
    runs = [r for r in plan.select(setting="my_net") if r.family != "sweeps"]
    assert runs and all(r.train["epochs"] <= 3 and r.seed == 3 for r in runs)
    bs = sorted({r.train["batch_size"] for r in plan.select("sweeps", sweep="my_bs")})
    assert bs == [8, 74]  # the axis' first and last, 64 and 1024, mapped
    assert {r.seed for r in plan.select("sweeps")} == {0}
    assert data_files(small, "mydata") == {"train": "results/data-miniature/mydata/train.npz",
                                           "test": "results/data-miniature/mydata/test.npz"}  # fmt: skip
    assert miniature_shape(small, "mydata") == {"image_size": 28, "channels": 1, "num_classes": 47}
    noisy_grid = {r.fields["role"]: r for r in plan.select("noisy", stage="grid")}
    assert set(noisy_grid) == {"fp", "mixup"} and len(plan.select("noisy", stage="grid")) == 2 * 2 * 2
    assert shrink(small) == small
    del small["miniature"]["local_shapes"]["mydata"]
    with pytest.raises(PlanError, match="miniature.local_shapes.mydata"):
        miniature_shape(small, "mydata")


def test_the_demo_in_miniature():
    small = mini("configs/demo.yaml")
    plan = build_plan(small)
    full_plan = build_plan(load("configs/demo.yaml"))
    assert targets(small, plan) == targets(load("configs/demo.yaml"), full_plan)
    assert all(r.train["epochs"] <= 2 for r in plan.runs.values())
    assert small["interventions"]["fig3"]["start_epochs"] == [0, 1]  # 0 and 20 of 40 epochs: 0 and round(20 x 2 / 40)


def test_shapes_come_from_the_dataset_table():
    cfg = load(MINI)
    assert miniature_shape(cfg, "cifar100") == {"image_size": 32, "channels": 3, "num_classes": 100}
    assert miniature_shape(cfg, "tinyimagenet")["num_classes"] == 200
    assert miniature_shape(cfg, "imagenet") == {"image_size": 32, "channels": 3, "num_classes": 1000}
    assert miniature_shape(cfg, "digits") == {"image_size": 16, "channels": 1, "num_classes": 10}


def test_prepared_stand_in_has_the_shape(tmp_path):
    from fisherlab.data import load_dataset
    from fisherlab.data.cifar import prepare_synthetic

    shape = miniature_shape(load(MINI), "digits")
    train, test = prepare_synthetic(tmp_path, 40, 20, seed=0, **shape)
    a, b = load_dataset(train), load_dataset(test)
    assert a.x.shape == (40, 16, 16, 1) and b.x.shape == (20, 16, 16, 1) and a.num_classes == 10


def test_helpers_and_bad_knobs():
    assert pick([1, 2, 3, 4, 5], 2) == [1, 5] and pick([1, 2, 3, 4, 5], 3) == [1, 3, 5] and pick([1, 2], 5) == [1, 2]
    assert pick([7, 8, 9], 1) == [7]
    assert scale_milestones([150, 225], 300, 3) == [2] and scale_milestones([80, 150, 200], 250, 3) == [1, 2]
    assert scale_milestones([1, 2], 3, 3) == [1, 2]
    # the noise fraction the figures draw stays among the two kept
    assert mini({"noisy": {"fractions": [0.1, 0.25, 0.5, 0.75]}})["noisy"]["fractions"] == [0.1, 0.25]
    with pytest.raises(PlanError, match="val_examples"):
        shrink(load(MINI, {"miniature": {"examples": 64, "val_examples": 64}}))
    with pytest.raises(PlanError, match="batch_size .*at most the training examples"):
        shrink(load(MINI, {"miniature": {"examples": 64, "val_examples": 16, "batch_size": 49}}))
    assert shrink(load(MINI, {"miniature": {"examples": 64, "val_examples": 16, "batch_size": 48}}))
    with pytest.raises(PlanError, match=r"min_batch_size \(9\) must be at most miniature.batch_size \(8\)"):
        shrink(load(MINI, {"miniature": {"batch_size": 8, "min_batch_size": 9}}))


@pytest.mark.slow
def test_snakemake_resolves_all_of_config_yaml_in_miniature():
    """`snakemake -n all` on config.yaml with the miniature overlay: every target resolves,
    every dataset is made by prepare_miniature (nothing is downloaded), far fewer jobs."""
    out = subprocess.run([sys.executable, "-m", "snakemake", "-n", "all", "--configfile", MINI, "--cores", "2",
                          "--quiet", "rules"], cwd=REPO, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", out.stdout + out.stderr, re.M))
    assert "prepare_cifar" not in counts and "prepare_tinyimagenet" not in counts
    assert int(counts["prepare_miniature"]) == 3 and int(counts["total"]) < 500

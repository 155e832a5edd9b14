"""Early phase II (issue 12): the interventions families of the run plan (Figs. 3, 6, 13,
14, 16, 17, 20, 21), the training features they need (a run started from another run's
weights, weights kept at chosen epochs and at the best test accuracy, FP switched on at
an epoch, the penalty on part of the batch), the Tr(H) of kept weights, and the figures'
statistics, tables and drawings."""

from __future__ import annotations

import copy
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from helpers import synthetic_train_data
from torch import nn

from fisherlab import TrainConfig, TrainData, train
from fisherlab.data import make_synthetic, save_dataset
from fisherlab.experiment import run, run_planned
from fisherlab.hessian import SNAPSHOT_HESSIAN, HessianSpec, trace_hessian_of_snapshots, trace_hessian_of_weights
from fisherlab.training.measures import best_epoch
from fisherlab.penalties import FisherPenalty, build_regularizer
from fisherlab.plan import PlanError, build_plan, interventions as iv
from fisherlab.report import interventions as rep
from test_pipeline import job_counts, snakemake
from test_plan import fake_reader, load

PAPER = load()
READ = fake_reader({"lr": 0.1, "alpha": 0.03})


def runs_of(plan, family):
    return {r.id: r for r in plan.runs.values() if r.family == family}


# =========================================================================== the plan


def test_paper_plan_counts_per_family():
    plan = build_plan(PAPER)
    iv_cfg = PAPER["interventions"]
    fig3 = iv_cfg["fig3"]
    late = len([n for n in fig3["settings"] if PAPER["settings"][n]["table"] == 1])
    along = sum(len(p["sets"]["A"]) + len(p["sets"]["B"]) for p in iv_cfg["fig14"]["panels"].values())
    counts = Counter(r.family for r in plan.runs.values())
    assert counts["late_fp"] == late * (len(fig3["start_epochs"]) - 1) * len(fig3["seeds"])  # E = 0 is Table 1's
    assert counts["two_phase"] == sum(2 * (1 + len(iv_cfg[f]["seeds"])) for f in ("fig6", "fig13"))
    assert counts["hessian_along"] == along * len(iv_cfg["fig14"]["seeds"]) + sum(
        len(v) for v in iv_cfg["fig21"]["panels"].values())
    assert counts["alpha_sweep"] == 2 * 10 + 10 + (10 + 2)
    # the numbers as the paper's config has them (a change to config.yaml shows here)
    assert [counts[f] for f in ("late_fp", "two_phase", "hessian_along", "alpha_sweep")] == [32, 36, 393, 42]
    assert iv.figures(PAPER, plan) == ["fig3", "fig6", "fig13", "fig14", "fig16", "fig17", "fig20", "fig21"]
    snap = iv.snapshot_runs(list(plan.runs.values()))
    assert len(snap) == 2 * 2 * 8 + 393  # phase-2 runs (best) and every Tr(H)-along run


def test_fig3_runs_resolve_to_fp_from_epoch_e_at_the_small_lr_with_alpha_star():
    plan = build_plan(PAPER)
    spec = plan.run("vgg11_c100/late_fp/start16/seed0")
    cfg, fields = spec.resolve(READ)
    assert (cfg.regularizer, cfg.lr) == ("fp", pytest.approx(0.01))  # eta* / small_lr_factor
    assert cfg.regularizer_kwargs == {"alpha": 0.03, "every": 10, "start_epoch": 16}
    assert (cfg.model, cfg.epochs, cfg.milestones) == ("vgg11", 300, PAPER["settings"]["vgg11_c100"]["milestones"])
    assert fields["start_epoch"] == 16 and fields["role"] == "late_fp" and fields["setting"] == "vgg11_c100"
    assert spec.inputs["lr"] == "results/selection/vgg11_c100/lr_star.json"
    assert spec.inputs["alpha"] == "results/selection/vgg11_c100/fp/alpha_star.json"
    assert "vgg11_c100/late_fp/start0/seed0" not in plan.runs  # E = 0: the Table 1 FP run
    assert "vgg11_c100/late_fp/start16/seed1" not in plan.runs  # seeds: [0]
    drawn = {r.id for r in iv.figure_runs(PAPER, "fig3", plan)}
    for name in PAPER["interventions"]["fig3"]["settings"]:
        assert {f"{name}/final/{role}/seed0" for role in ("eta_star", "baseline", "fp")} <= drawn
    assert len(drawn) == 32 + 4 * 3


def test_fig3_follows_run_settings_and_refuses_what_cannot_run():
    cfg = copy.deepcopy(PAPER)
    cfg["run_settings"] = ["simplecnn_c10", "simplecnn_c10_aug"]
    plan = build_plan(cfg)
    assert {r.fields["setting"] for r in runs_of(plan, "late_fp").values()} == {"simplecnn_c10"}
    assert not runs_of(plan, "two_phase")  # its recipes are not selected
    assert {r.fields["setting"] for r in runs_of(plan, "hessian_along").values()} == {"simplecnn_c10"}  # Fig. 21's panel
    assert {r.id.split("/alpha_sweep/")[0] for r in runs_of(plan, "alpha_sweep").values()} == {"simplecnn_c10"}
    assert iv.figures(cfg, plan) == ["fig3", "fig16", "fig17", "fig20", "fig21"]
    for edit, message in [
        (lambda c: c["interventions"]["fig3"].update(start_epochs=[0, 300]), "start epoch 300 is not below"),
        (lambda c: c["interventions"]["fig3"].update(seeds=[5]), "must be among seeds"),
        (lambda c: c["settings"]["vgg11_c100"]["regularizers"].pop("fp"), "has no fp regularizer"),
        (lambda c: c["interventions"]["fig6"].update(seeds=[0, 1]), "other seeds than phase 1"),
        (lambda c: c["interventions"]["fig6"].update(phase1_epochs=250), "counts phase 1 too"),
        (lambda c: c["interventions"]["fig16"].update(setting="nope"), "'nope', which is not under settings"),
        (lambda c: c["interventions"]["fig17"].update(examples=4), "is an fp option"),
        (lambda c: c["interventions"]["fig14"]["panels"]["resnet26_c10"].update(lr=None), "needs an lr"),
    ]:
        bad = copy.deepcopy(PAPER)
        edit(bad)
        with pytest.raises(PlanError, match=message):
            build_plan(bad)


def test_two_phase_runs_start_from_the_phase1_weights():
    plan = build_plan(PAPER)
    block = PAPER["interventions"]["fig13"]
    runs = iv.two_phase_plan(PAPER, "fig13")
    high, low = runs["high"], runs["low"]
    assert len(high) == len(low) == 1 + len(block["seeds"])
    p1 = high[0]
    assert p1.id == "resnet26_c10/two_phase/lr0.02_bs100_e20/seed0" and p1.seed == 0
    cfg, fields = p1.resolve(READ)
    assert (cfg.lr, cfg.batch_size, cfg.epochs, cfg.init_weights, cfg.keep_best) == (0.02, 100, 20, None, None)
    assert cfg.milestones == []  # the first drop (epoch 80) falls in phase 2
    assert (cfg.model, cfg.gamma, cfg.weight_decay, cfg.fisher_examples) == ("resnet26", 0.5, 1e-5, 5000)
    assert low[0].train["batch_size"] == 500
    for level, p2s in (("high", high[1:]), ("low", low[1:])):
        start = runs[level][0]
        assert sorted(r.seed for r in p2s) == block["seeds"]
        for r in p2s:
            cfg, fields = r.resolve(READ)
            assert r.inputs["init"] == cfg.init_weights == f"{start.path}/model.pt"
            # 250 epochs in all (I.4): phase 2 trains the 230 after phase 1's 20, on the same schedule
            assert (cfg.lr, cfg.batch_size, cfg.epochs, cfg.milestones) == (0.02, 500, 230, [60, 130, 180])
            assert cfg.keep_best == "test_acc" and cfg.test_every_epoch
            assert fields["phase1"] == start.id and fields["role"] == "phase2"
            assert r.id.startswith(f"resnet26_c10/two_phase/from_{start.id.split('/')[2]}_seed0/lr0.02_bs500_e250/")
            assert r.id in plan.runs
    labels = iv.figure_labels(PAPER, "fig13")
    assert labels[high[0].path] == {"level": "high", "phase": 1} and labels[low[3].path] == {"level": "low", "phase": 2}
    inputs = iv.figure_inputs(PAPER, "fig13", plan)
    assert len(inputs) == 2 * (1 + 8) + 2 * 8 and f"{high[1].path}/{SNAPSHOT_HESSIAN}" in inputs
    cfg6, _ = iv.two_phase_plan(PAPER, "fig6")["high"][0].resolve(READ)
    assert (cfg6.lr, cfg6.batch_size) == (0.01, 100)


def test_hessian_along_runs_keep_their_weights_every_ten_epochs():
    plan = build_plan(PAPER)
    r = plan.run("resnet26_c10/hessian_along/lr0.02_bs480_e250/seed2")
    cfg, fields = r.resolve(READ)
    assert cfg.keep_epochs == list(range(0, 251, 10)) and (cfg.lr, cfg.batch_size) == (0.02, 480)
    assert cfg.milestones == [80, 150, 200] and cfg.init_weights is None and cfg.test_every_epoch
    r = plan.run("resnet26_c100/hessian_along/lr0.0012_bs100_e250/seed0")
    assert r.resolve(READ)[0].lr == 0.0012
    labels = iv.figure_labels(PAPER, "fig14")
    assert labels[r.path] == {"set": "A"}
    assert labels["results/runs/resnet26_c100/hessian_along/lr0.008_bs100_e250/seed1"] == {"set": "B"}
    fig21 = iv.figure_runs(PAPER, "fig21", plan)
    assert len(fig21) == 9 and all(x.seed == 0 for x in fig21)
    d = plan.run("densenet_c100/hessian_along/lr0.04_bs128_e300/seed0").resolve(READ)[0]
    assert d.keep_epochs == list(range(0, 301, 10)) and d.bn_update_batches == 100 and d.lr == 0.04


def test_alpha_sweeps_fig16_17_20():
    plan = build_plan(PAPER)
    grid = [float(f"{a:.4g}") for a in np.logspace(-2, 0, 10)]
    fig16 = iv.figure_runs(PAPER, "fig16", plan)
    assert len(fig16) == 20
    for f in (10, 1):
        runs = [r for r in fig16 if r.fields["every"] == f]
        assert [r.strength for r in runs] == grid
        cfg, fields = runs[0].resolve(READ)
        assert cfg.regularizer == "fp" and cfg.regularizer_kwargs == {"every": f, "alpha": 0.01}
        assert cfg.lr == pytest.approx(0.01) and cfg.batch_size == 128 and fields["variant"] == f"fp_f{f}"
        build_regularizer(cfg.regularizer, seed=1, **cfg.regularizer_kwargs)  # the penalty accepts its kwargs
    fig17 = iv.figure_runs(PAPER, "fig17", plan)
    assert [r.strength for r in fig17] == [float(f"{a:.4g}") for a in np.logspace(-4, -2, 10)]
    cfg, _ = fig17[0].resolve(READ)
    assert cfg.regularizer == "fp_exact" and cfg.regularizer_kwargs == {"alpha": 0.0001}
    build_regularizer(cfg.regularizer, seed=1, **cfg.regularizer_kwargs)
    fig20 = iv.figure_runs(PAPER, "fig20", plan)
    refs = [r for r in fig20 if r.fields["role"] == "reference"]
    assert len(fig20) == 12 and [r.resolve(READ)[0].lr for r in refs] == [pytest.approx(0.1), pytest.approx(0.05)]
    fp = [r for r in fig20 if r.fields["role"] == "alpha_sweep"][0]
    cfg, _ = fp.resolve(READ)
    assert (cfg.batch_size, cfg.lr) == (1280, pytest.approx(0.05))
    assert cfg.regularizer_kwargs == {"every": 1, "examples": 128, "alpha": 0.01} and fp.data["augment"] is False
    assert build_regularizer(cfg.regularizer, seed=1, **cfg.regularizer_kwargs).examples == 128
    for r in fig16 + fig17 + fig20:
        assert r.inputs["lr"] == "results/selection/simplecnn_c10/lr_star.json" and r.seed == 0


def test_paths_are_unique_and_overlays_can_leave_figures_out():
    plan = build_plan(PAPER)
    ids = [r.id for r in plan.runs.values()]
    assert len(ids) == len(set(ids))
    off = load({"interventions": {f: None for f in iv.FIGURES}})
    plan_off = build_plan(off)
    assert not iv.figures(off, plan_off)
    assert not any(r.family in ("late_fp", "two_phase", "hessian_along", "alpha_sweep") for r in plan_off.runs.values())
    demo = load("configs/demo.yaml")  # the paper's other blocks name settings the demo does not run
    assert iv.figures(demo, build_plan(demo)) == ["fig3", "fig6"]


def test_the_demo_plan_has_a_small_fig3_and_fig6():
    cfg = load("configs/demo.yaml")
    plan = build_plan(cfg)
    counts = Counter(r.family for r in plan.runs.values())
    fig3, fig6 = cfg["interventions"]["fig3"], cfg["interventions"]["fig6"]
    late = [e for e in fig3["start_epochs"] if e > 0]
    assert counts["late_fp"] == len(late) * len(cfg["seeds"])
    assert counts["two_phase"] == 2 * (1 + len(fig6["seeds"]))
    assert not {"hessian_along", "alpha_sweep"} & set(counts)  # the paper's settings do not run in the demo
    assert len(iv.figure_inputs(cfg, "fig6", plan)) == 2 * (1 + len(fig6["seeds"])) + 2 * len(fig6["seeds"])
    assert len(iv.figure_inputs(cfg, "fig3", plan)) == len(late) + 3  # and the demo's eta*, Baseline and FP runs
    phase1 = {r.path for r in iv.figure_runs(cfg, "fig6", plan) if r.fields["role"] == "phase1"}
    for r in iv.figure_runs(cfg, "fig6", plan):
        assert r.fields["setting"] == fig6["setting"]
        if r.fields["role"] == "phase2":
            assert r.inputs["init"].removesuffix("/model.pt") in phase1


def test_null_figure_blocks_validate_and_a_bad_block_is_a_schema_error():
    from snakemake_interface_common.exceptions import WorkflowError

    cfg = load({"interventions": {"fig14": None}})
    assert cfg["interventions"]["fig14"] is None and cfg["interventions"]["fig3"]["seeds"] == [0]
    with pytest.raises(WorkflowError) as err:
        load({"interventions": {"fig16": {"regularizer": "gp"}}})
    assert "'gp' is not one of ['fp', 'fp_exact']" in str(err.value.args)
    with pytest.raises(WorkflowError) as err:
        load({"interventions": {"fig6": {"high": {"lr": None}}}})  # a configuration needs its lr
    assert "None is not of type 'number'" in str(err.value.args)


@pytest.mark.slow  # spawns Snakemake or trains: end-to-end
def test_dry_run_of_the_figures_on_the_paper_config():
    """Each figure's target resolves on the paper config; the jobs it adds, rule by rule."""
    plan = build_plan(PAPER)
    figs = iv.figures(PAPER, plan)
    proc = snakemake("-n", *[f"results/{f}.png" for f in figs], "--quiet", "rules")
    counts = job_counts(proc.stdout)
    assert counts["figure"] == len(figs)  # the one figure rule, a job per figure
    drawn = {r.id: r for f in figs for r in iv.figure_runs(PAPER, f, plan)}
    assert counts["trace_hessian_snapshots"] == len(iv.snapshot_runs(list(drawn.values()))) == 2 * 2 * 8 + 393  # Figs. 6, 13 + 14, 21
    # training: the runs drawn, and the grid runs behind the selections they read (eta*, alpha*)
    needed, todo = set(), list(drawn)
    while todo:
        run_id = todo.pop()
        if run_id in needed:
            continue
        needed.add(run_id)
        for path in plan.run(run_id).inputs.values():
            if path.startswith("results/selection/"):
                todo += plan.selection_at(path).candidates
    assert counts["train"] == len(needed) == 155 + 12 * 29 + 12 + 4 * (5 + 10)  # Fig. 14: 12 points x 29 more seeds (32, I.4)
    assert counts["select"] == 4 * 2


# =========================================================================== training


@pytest.fixture(scope="module")
def data() -> TrainData:
    return synthetic_train_data(96, 48, 48)


def config(**kw) -> TrainConfig:
    base = dict(model="simple_cnn", model_kwargs={"image_size": 16}, epochs=3, batch_size=32, lr=0.05,
                fisher_examples=16, fisher_every=0)  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def weights(path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_from_another_runs_epoch_e_weights_continues_from_them_with_its_own_data_order(tmp_path, data):
    torch.set_num_threads(1)
    first = train(config(seed=0, keep_epochs=[2]), data, snapshots=tmp_path / "a")
    start = weights(tmp_path / "a/epoch2.pt")
    assert not same(start, first.model.state_dict())  # epoch 2 of 3: not the final weights
    cfg = config(seed=5, epochs=1, init_weights=str(tmp_path / "a/epoch2.pt"), keep_epochs=[0])
    second = train(cfg, data, snapshots=tmp_path / "b")
    assert same(weights(tmp_path / "b/epoch0.pt"), start)  # exactly those weights
    # one epoch from them, by hand: seed 5's permutation (the trainer's data generator is seeded seed + 2)
    model = nn.Module()
    from fisherlab.models import build_model

    model = build_model("simple_cnn", num_classes=4, image_size=16)
    model.load_state_dict(start)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(5 + 2)
    order = torch.randperm(len(data.train), generator=gen)
    model.train()
    for i in range(0, len(order), cfg.batch_size):
        x, y = data.train.batch(order[i : i + cfg.batch_size])
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    assert same(second.model.state_dict(), model.state_dict())
    other = train(config(seed=0, epochs=1, init_weights=str(tmp_path / "a/epoch2.pt")), data)
    assert not same(other.model.state_dict(), second.model.state_dict())  # the seed orders the data
    # a checkpointed run resumes from its own weights, not from the initial ones
    ckpt = tmp_path / "c.pt"
    train(config(seed=5, epochs=1, init_weights=str(tmp_path / "a/epoch2.pt")), data, checkpoint=ckpt)
    (tmp_path / "a/epoch2.pt").unlink()  # no longer needed: the checkpoint holds the weights
    with pytest.raises(Exception):
        train(config(seed=5, epochs=1, init_weights=str(tmp_path / "a/epoch2.pt")), data)
    resumed = train(config(seed=5, epochs=1, init_weights=str(tmp_path / "a/epoch2.pt")), data, checkpoint=ckpt)
    assert resumed.status == "ok" and same(resumed.model.state_dict(), second.model.state_dict())


class StopAfter:
    def __init__(self, steps: int):
        self.calls, self.steps = 0, steps

    def __call__(self) -> bool:
        self.calls += 1
        return self.calls == self.steps


def test_the_kept_weights_are_the_ones_asked_for_best_epoch_included(tmp_path, data):
    torch.set_num_threads(1)
    cfg = config(epochs=5, lr=0.2, keep_epochs=[0, 2, 3, 9], keep_best="test_acc", test_every_epoch=True)
    res = train(cfg, data, snapshots=tmp_path / "snap")
    files = sorted(p.name for p in (tmp_path / "snap").iterdir())
    assert files == ["best.pt", "epoch0.pt", "epoch2.pt", "epoch3.pt"]  # 9 never reached
    best = best_epoch(res.metrics, "test_acc")
    assert res.summary["kept_best_epoch"] == best["epoch"] and res.summary["kept_best_value"] == best["test_acc"]
    # each file holds the weights of a run stopped at that epoch (same seed, same trajectory)
    for e in (2, 3, best["epoch"]):
        short = train(config(epochs=e, lr=0.2), data).model.state_dict()
        name = f"epoch{e}.pt" if e != best["epoch"] else "best.pt"
        assert same(weights(tmp_path / "snap" / name), short), name
    from fisherlab.models import build_model

    torch.manual_seed(cfg.seed)
    init = build_model("simple_cnn", num_classes=4, image_size=16).state_dict()
    assert same(weights(tmp_path / "snap/epoch0.pt"), init)
    # preempted mid-run and resumed: the same files (the best weights travel in the checkpoint)
    ckpt, snap = tmp_path / "ck.pt", tmp_path / "snap2"
    stop = StopAfter(10)  # polled after each step (3 an epoch) and each epoch: step 2 of epoch 3
    assert train(cfg, data, checkpoint=ckpt, snapshots=snap, should_stop=stop).status == "preempted"
    assert not (snap / "best.pt").exists()
    assert train(cfg, data, checkpoint=ckpt, snapshots=snap).status == "ok"
    for name in files:
        assert same(weights(snap / name), weights(tmp_path / "snap" / name)), name


def test_a_run_without_test_evaluations_keeps_no_best(tmp_path, data):
    no_test = TrainData(data.train, data.val, None)
    res = train(config(epochs=2, keep_best="test_acc", test_every_epoch=True), no_test, snapshots=tmp_path)
    assert res.summary["kept_best_epoch"] is None and not (tmp_path / "best.pt").exists()
    with pytest.raises(ValueError, match="keep_best"):
        config(keep_best="loss")
    with pytest.raises(ValueError, match="test_every_epoch"):
        config(keep_best="test_acc")  # the best of the epochs the test split was evaluated at is not the best
    with pytest.raises(ValueError, match="keep_epochs"):
        config(keep_epochs=[-1])


def test_start_epoch_turns_the_penalty_on_at_the_right_step(tmp_path, data, monkeypatch):
    """Through the plan: a Fig. 3 run with E = 2 trains plainly for 2 epochs (identical
    to the Baseline), and FP computes its first penalty at step 2 x steps per epoch."""
    torch.set_num_threads(1)
    root = tmp_path / "data"
    save_dataset(root / "train.npz", make_synthetic(100, num_classes=4, image_size=16, seed=1))
    save_dataset(root / "test.npz", make_synthetic(20, num_classes=4, image_size=16, seed=1, split="test"))
    recipe = {"model": "simple_cnn", "model_kwargs": {"image_size": 16}, "dataset": "tiny", "epochs": 4,
              "batch_size": 20, "val_size": 20, "lr_grid": [0.1], "lr_star": 0.1, "small_lr_factor": 2,
              "epsilon": 1.0, "fisher_every": 0, "fisher_examples": 8,
              "regularizers": {"fp": {"alpha": 0.05, "every": 3}}}  # fmt: skip
    cfg = load({"run_settings": ["tiny"], "seeds": [0], "settings": {"tiny": recipe},
                "data": {"local": {"tiny": {"train": str(root / "train.npz"), "test": str(root / "test.npz")}}},
                "noisy": {"settings": {}, "figures": {"fig5": None, "fig11": None, "fig12": None}},
                "interventions": {"fig3": {"settings": ["tiny"], "start_epochs": [0, 2]}}})  # fmt: skip
    plan = build_plan(cfg)
    files = {"lr": tmp_path / "lr.json", "alpha": tmp_path / "alpha.json"}
    files["lr"].write_text(json.dumps({"key": "lr", "value": 0.1, "source": "config"}))
    files["alpha"].write_text(json.dumps({"key": "alpha", "value": 0.05, "source": "config"}))

    def go(run_id):
        spec = plan.run(run_id)
        inputs = {**spec.inputs, **{k: str(v) for k, v in files.items() if k in spec.inputs}}
        return run_planned(spec, inputs, device="cpu", checkpoint=tmp_path / run_id / "ck.pt",
                           out_dir=tmp_path / run_id, log=lambda s: None)  # fmt: skip

    steps = []
    original = FisherPenalty._active_backward

    def spy(self, model, x, y, step):
        out = original(self, model, x, y, step)
        steps.append((step, out.penalty is not None))
        return out

    monkeypatch.setattr(FisherPenalty, "_active_backward", spy)
    late = go("tiny/late_fp/start2/seed0")
    spe = math.ceil(80 / 20)
    assert late.summary["config"]["regularizer_kwargs"] == {"alpha": 0.05, "every": 3, "start_epoch": 2}
    assert steps[0] == (2 * spe, True)  # the first penalised step
    assert [s for s, computed in steps if computed] == list(range(2 * spe, 4 * spe, 3))  # then every 3 steps
    baseline = go("tiny/final/baseline/seed0")
    drop = {"seconds", "eval_seconds"}
    rows = lambda r: [{k: v for k, v in row.items() if k not in drop} for row in r.metrics]  # noqa: E731
    assert rows(late)[:2] == rows(baseline)[:2] and rows(late)[2] != rows(baseline)[2]


# =========================================================================== the sub-batch penalty


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(5, 7), nn.Linear(7, 3)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


def explicit_objective(model, x, y, yhat, alpha, m):
    """(1/B) sum_i l(x_i, y_i) + alpha || (1/m) sum_{i<m} g(x_i, yhat_i) ||^2, the per-example
    gradients g taken one example at a time (create_graph), then summed."""
    params = list(model.parameters())
    data = F.cross_entropy(model(x), y)
    total = [torch.zeros_like(p) for p in params]
    for i in range(m):
        gi = torch.autograd.grad(F.cross_entropy(model(x[i : i + 1]), yhat[i : i + 1]), params, create_graph=True)
        total = [t + g for t, g in zip(total, gi)]
    return data + alpha * sum(((t / m) ** 2).sum() for t in total)


@pytest.mark.parametrize("m", [1, 3, 6, 10])
def test_the_sub_batch_penalty_gradient_matches_autograd_on_its_formula(m):
    torch.manual_seed(0)
    model = Tiny().double()
    x, y = torch.randn(6, 5, dtype=torch.float64), torch.randint(0, 3, (6,))
    alpha, seed = 0.7, 11
    reg = build_regularizer("fp", alpha=alpha, every=1, seed=seed, examples=m)
    out = reg.backward(model, x, y, step=0, epoch=0)
    got = [p.grad.clone() for p in model.parameters()]
    k = min(m, 6)
    yhat = torch.multinomial(model(x)[:k].detach().softmax(-1), 1, generator=torch.Generator().manual_seed(seed))[:, 0]
    obj = explicit_objective(model, x, y, yhat, alpha, k)
    want = torch.autograd.grad(obj, list(model.parameters()))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)
    # the penalty it reports, and a finite difference of the objective along a direction
    assert out.penalty.item() == pytest.approx((obj.item() - F.cross_entropy(model(x), y).item()) / alpha, rel=1e-10)
    direction = [torch.randn_like(p) for p in model.parameters()]
    eps = 1e-6

    def at(t):
        with torch.no_grad():
            for p, d in zip(model.parameters(), direction):
                p.add_(t * d)
        v = explicit_objective(model, x, y, yhat, alpha, k).item()
        with torch.no_grad():
            for p, d in zip(model.parameters(), direction):
                p.sub_(t * d)
        return v

    fd = (at(eps) - at(-eps)) / (2 * eps)
    assert sum((g * d).sum().item() for g, d in zip(got, direction)) == pytest.approx(fd, rel=1e-6)


def test_the_whole_batch_is_the_default_and_examples_is_checked():
    torch.manual_seed(1)
    model = Tiny().double()
    x, y = torch.randn(6, 5, dtype=torch.float64), torch.randint(0, 3, (6,))
    grads = []
    for kw in ({}, {"examples": 6}, {"examples": 100}):
        model.zero_grad()
        build_regularizer("fp", alpha=0.3, every=1, seed=2, **kw).backward(model, x, y, step=0, epoch=0)
        grads.append([p.grad.clone() for p in model.parameters()])
    for other in grads[1:]:
        assert all(torch.equal(a, b) for a, b in zip(grads[0], other))
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="examples"):
            build_regularizer("fp", alpha=0.3, examples=bad)


# =========================================================================== Tr(H) of kept weights


def test_trace_hessian_of_the_kept_weights(tmp_path, data):
    torch.set_num_threads(1)
    root = tmp_path / "data"
    save_dataset(root / "train.npz", make_synthetic(60, num_classes=4, image_size=16, seed=1))
    save_dataset(root / "test.npz", make_synthetic(20, num_classes=4, image_size=16, seed=1, split="test"))
    recipe = {"model": "simple_cnn", "model_kwargs": {"image_size": 16}, "dataset": "tiny", "table": 0, "epochs": 3,
              "batch_size": 20, "val_size": 20, "lr_grid": [0.1], "epsilon": 1.0, "fisher_every": 0,
              "fisher_examples": 8}  # fmt: skip
    cfg = load({"run_settings": ["tiny"], "seeds": [0], "settings": {"tiny": recipe},
                "data": {"local": {"tiny": {"train": str(root / "train.npz"), "test": str(root / "test.npz")}}},
                "noisy": {"settings": {}, "figures": {"fig5": None, "fig11": None, "fig12": None}},
                "interventions": {"fig3": None, "fig21": {"panels": {"tiny": [0.1]}, "epochs": 3, "hessian_every": 2},
                                  "fig6": {"setting": "tiny", "high": {"lr": 0.2}, "low": {"lr": 0.05},
                                           "phase1_epochs": 1, "epochs": 2, "milestones": [1], "seeds": [1]}}})  # fmt: skip
    plan = build_plan(cfg)
    spec = plan.run("tiny/hessian_along/lr0.1_bs20_e3/seed0")
    assert spec.train["keep_epochs"] == [0, 2]
    out = tmp_path / "run"
    run_planned(spec, spec.inputs, device="cpu", checkpoint=tmp_path / "ck.pt", out_dir=out, log=lambda s: None)
    assert sorted(p.name for p in (out / "snapshots").iterdir()) == ["epoch0.pt", "epoch2.pt"]
    rows = trace_hessian_of_snapshots(spec, spec.inputs, out, HessianSpec(num_probes=3, examples=10), device="cpu")
    assert [(r["snapshot"], r["epoch"], r["status"]) for r in rows] == [("epoch0", 0, "ok"), ("epoch2", 2, "ok")]
    direct = trace_hessian_of_weights(spec, spec.inputs, {"e2": out / "snapshots/epoch2.pt"},
                                      HessianSpec(num_probes=3, examples=10), device="cpu")["e2"]  # fmt: skip
    assert rows[1]["trace_hessian"] == direct["trace_hessian"] and math.isfinite(direct["trace_hessian"])
    assert rows[0]["trace_hessian"] != rows[1]["trace_hessian"]
    # phase 2 of Fig. 6: its init is phase 1's model.pt; Tr(H) of the best-test-accuracy weights
    p1, p2 = iv.two_phase_plan(cfg, "fig6")["high"][:2]
    run_planned(p1, p1.inputs, device="cpu", checkpoint=tmp_path / "p1.pt", out_dir=p1.path.replace("results", str(tmp_path)),
                log=lambda s: None)  # fmt: skip
    inputs = {**p2.inputs, "init": p1.path.replace("results", str(tmp_path)) + "/model.pt"}
    p2.train["init_weights"] = inputs["init"]  # the job sees the same path as its input
    out2 = Path(p2.path.replace("results", str(tmp_path)))
    res = run_planned(p2, inputs, device="cpu", checkpoint=tmp_path / "p2.pt", out_dir=out2, log=lambda s: None)
    rows = trace_hessian_of_snapshots(p2, inputs, out2, HessianSpec(num_probes=3, examples=10), device="cpu")
    assert [(r["snapshot"], r["epoch"]) for r in rows] == [("best", res.summary["kept_best_epoch"])]
    assert math.isfinite(rows[0]["trace_hessian"])


# =========================================================================== figures and their numbers


def test_pearson_and_spearman_against_their_definitions():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=30), rng.normal(size=30)
    assert rep.pearson(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1], rel=1e-12)
    # no ties: rho = 1 - 6 sum d^2 / (n (n^2 - 1)), d the rank differences
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    assert rep.spearman(x, y) == pytest.approx(1 - 6 * ((rx - ry) ** 2).sum() / (30 * (30**2 - 1)), rel=1e-12)
    assert rep.spearman(x, np.exp(3 * x)) == pytest.approx(1.0) and rep.pearson(x, np.exp(3 * x)) < 0.99
    assert rep.pearson([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert rep.spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(np.corrcoef([1.5, 1.5, 3], [1, 2, 3])[0, 1])
    assert math.isnan(rep.pearson([1.0], [2.0])) and math.isnan(rep.spearman([1, 1, 1], [1, 2, 3]))


def summary_row(**kw):
    base = {"status": "ok", "seed": 0, "final_test_acc": 0.5, "test_acc_at_best_val": 0.5, "max_trace_fisher": 10.0}
    return {**base, **kw}


def test_fig3_table_summary_and_figure(tmp_path):
    rows = [summary_row(setting="s", role="eta_star", final_test_acc=0.8),
            summary_row(setting="s", role="baseline", final_test_acc=0.6),
            summary_row(setting="s", role="fp", final_test_acc=0.79),
            summary_row(setting="s", role="late_fp", start_epoch=4, seed=0, final_test_acc=0.7),
            summary_row(setting="s", role="late_fp", start_epoch=4, seed=1, final_test_acc=0.66),
            summary_row(setting="s", role="late_fp", start_epoch=8, status="diverged", final_test_acc=0.1)]  # fmt: skip
    table = rep.late_fp_table(pd.DataFrame(rows))
    assert list(table[table["series"] == "fp"]["start_epoch"]) == [0, 4, 4, 8]
    s = rep.late_fp_summary(table).set_index(["series", "start_epoch"])
    assert s.loc[("fp", 4), "final_test_acc"] == pytest.approx(0.68)
    assert s.loc[("fp", 4), "final_test_acc_std"] == pytest.approx(np.std([0.7, 0.66], ddof=1))
    assert s.loc[("fp", 8), "runs"] == 1 and s.loc[("fp", 8), "ok"] == 0 and math.isnan(s.loc[("fp", 8), "final_test_acc"])
    rep.fig3(table, tmp_path / "fig3.png")
    assert (tmp_path / "fig3.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_two_phase_table_and_figure(tmp_path):
    labels = {"p1h": {"level": "high", "phase": 1}, "p1l": {"level": "low", "phase": 1}}
    rows = [summary_row(run_dir="p1h", lr=0.1, batch_size=100), summary_row(run_dir="p1l", lr=0.01, batch_size=100)]
    curvature = {"p1h": pd.DataFrame({"step": [0, 5, 10], "trace_fisher": [1.0, 9.0, 4.0]}),
                 "p1l": pd.DataFrame({"step": [10, 0], "trace_fisher": [30.0, 1.0]})}  # fmt: skip
    snapshots = {}
    for i, (level, th) in enumerate([("high", 5.0), ("high", 6.0), ("low", 20.0), ("low", 25.0)]):
        d = f"p2_{i}"
        labels[d] = {"level": level, "phase": 2}
        rows.append(summary_row(run_dir=d, lr=0.01, batch_size=100, seed=i + 1, kept_best_value=0.5 + i / 10,
                                kept_best_epoch=3 + i))  # fmt: skip
        snapshots[d] = pd.DataFrame({"snapshot": ["best"], "epoch": [3 + i], "trace_hessian": [th]})
    table = rep.two_phase_table(pd.DataFrame(rows), labels, curvature, snapshots)
    p1 = table[table["phase"] == 1].set_index("level")
    assert p1.loc["high", "trace_fisher_end"] == 4.0 and p1.loc["low", "trace_fisher_end"] == 30.0  # the last step's
    p2 = table[table["phase"] == 2]
    assert list(p2["trace_hessian_best"]) == [5.0, 6.0, 20.0, 25.0] and list(p2["best_epoch"]) == [3, 4, 5, 6]
    rep.two_phase_figure(table, tmp_path / "fig6.png", title="fig6")
    assert (tmp_path / "fig6.png").stat().st_size > 1000


def test_hessian_along_table_and_fig14(tmp_path):
    runs, labels, metrics, snaps = [], {}, {}, {}
    for i, (s, bs, seed) in enumerate([("A", 500, 0), ("A", 500, 1), ("B", 100, 0)]):
        d = f"r{i}"
        runs.append(summary_row(run_dir=d, setting="c10", lr=0.02, batch_size=bs, seed=seed))
        labels[d] = {"set": s}
        metrics[d] = pd.DataFrame({"train_loss_subset": [2.0, 0.1 * (i + 1), 0.5],  # every epoch
                                   "train_loss": [np.nan, np.nan, 0.52],  # the whole split: the last epoch only
                                   "test_acc": [0.3, 0.6 + i / 100, 0.5]})  # fmt: skip
        snaps[d] = pd.DataFrame({"snapshot": ["epoch0", "epoch10"], "epoch": [0, 10],
                                 "trace_hessian": [5.0, 100.0 * (i + 1)]})  # fmt: skip
    table = rep.hessian_along_table(pd.DataFrame(runs), labels, metrics, snaps)
    assert len(table) == 6 and set(table["set"]) == {"A", "B"}
    summary = rep.hessian_along_summary(table).set_index(["set", "batch_size", "epoch"])
    a = summary.loc[("A", 500, 10)]
    assert a["seeds"] == 2 and a["trace_hessian"] == pytest.approx(150.0)
    assert a["min_train_loss_subset"] == pytest.approx(0.15) and a["max_test_acc"] == pytest.approx(0.605)
    rep.fig14(table, tmp_path / "fig14.png", vary={"c10": "batch_size"})
    assert (tmp_path / "fig14.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="train_loss_subset"):
        rep.hessian_along_table(pd.DataFrame(runs), labels, {d: m.drop(columns="train_loss_subset")
                                                             for d, m in metrics.items()}, snaps)  # fmt: skip


def test_fig21_points_match_tr_h_and_tr_fb_at_the_same_step(tmp_path):
    runs = [summary_row(run_dir="a", setting="s", lr=0.01), summary_row(run_dir="b", setting="s", lr=0.02)]
    curvature = {d: pd.DataFrame({"step": [0, 3, 10, 13, 20], "epoch": [0, 0.3, 1.0, 1.3, 2.0],
                                  "trace_fisher_batch": [k, 99.0, 2 * k, 99.0, 3 * k]})
                 for d, k in (("a", 1.0), ("b", 5.0))}  # fmt: skip
    snaps = {d: pd.DataFrame({"snapshot": ["epoch0", "epoch1", "epoch2", "epoch3", "best"], "epoch": [0, 1, 2, 3, 2],
                              "trace_hessian": [10 * k, 20 * k, float("nan"), 40 * k, 7.0]})
             for d, k in (("a", 1.0), ("b", 2.0))}  # fmt: skip
    points = rep.hessian_fisher_points(pd.DataFrame(runs), curvature, snaps)
    # epoch 2's Tr(H) is NaN, epoch 3 has no measurement, best is not an epoch of the trajectory
    assert points[["lr", "epoch", "trace_hessian", "trace_fisher_batch"]].values.tolist() == [
        [0.01, 0, 10.0, 1.0], [0.01, 1, 20.0, 2.0], [0.02, 0, 20.0, 5.0], [0.02, 1, 40.0, 10.0]]
    corr = rep.correlations(points)
    all_ = corr[corr["lr"] == "all"].iloc[0]
    assert all_["points"] == 4 and all_["pearson"] == pytest.approx(np.corrcoef([10, 20, 20, 40], [1, 2, 5, 10])[0, 1])
    assert all_["spearman"] == pytest.approx(rep.spearman([10, 20, 20, 40], [1, 2, 5, 10]))
    assert list(corr["lr"]) == ["all", 0.01, 0.02] and corr.iloc[1]["pearson"] == pytest.approx(1.0)
    rep.fig21(points, tmp_path / "fig21.png")
    assert (tmp_path / "fig21.png").stat().st_size > 1000


def test_alpha_sweep_table_marks_the_best_finished_alpha_and_draws(tmp_path):
    rows = [summary_row(run_dir=f"f10_{a}", variant="fp_f10", role="alpha_sweep", alpha=a, lr=0.01, batch_size=128,
                        best_val_acc=v, status=s)
            for a, v, s in ((0.01, 0.7, "ok"), (0.1, 0.75, "ok"), (1.0, 0.9, "diverged"))]  # fmt: skip
    rows += [summary_row(run_dir="f1_0.1", variant="fp_f1", role="alpha_sweep", alpha=0.1, lr=0.01, batch_size=128,
                         best_val_acc=0.6),
             summary_row(run_dir="ref", variant="none", role="reference", alpha=float("nan"), lr=0.1, batch_size=128,
                         best_val_acc=0.99)]  # fmt: skip
    table = rep.alpha_sweep_table(pd.DataFrame(rows))
    best = table[table["best"]]
    assert sorted(zip(best["variant"], best["alpha"])) == [("fp_f1", 0.1), ("fp_f10", 0.1)]
    curves = {d: (pd.DataFrame({"epoch": [1, 2], "val_acc": [0.3, 0.5]}),
                  pd.DataFrame({"epoch": [0.0, 1.0, 2.0], "trace_fisher": [1.0, 5.0, 3.0]})) for d in table["run_dir"]}  # fmt: skip
    rep.alpha_sweep_figure(table, curves, tmp_path / "fig16.png", title="fig16")
    assert (tmp_path / "fig16.png").stat().st_size > 1000


def test_a_run_from_diverged_weights_is_diverged_not_an_error(tmp_path, data):
    """Phase 2 of a two-phase run (Figs. 6, 13) whose phase 1 diverged starts from
    non-finite weights: the run ends at once with status diverged, saying why, and
    writes its (empty) results like any diverged run; found by config.yaml in miniature."""
    torch.set_num_threads(1)
    first = train(config(seed=0, epochs=1), data)
    bad = {k: torch.full_like(v, math.nan) if v.is_floating_point() else v
           for k, v in first.model.state_dict().items()}  # fmt: skip
    torch.save(bad, tmp_path / "nan.pt")
    out = train(config(seed=1, epochs=2, init_weights=str(tmp_path / "nan.pt")), data)
    assert out.status == "diverged" and out.metrics == [] and out.curvature == []
    assert "initial weights" in out.summary["message"] and out.summary["status"] == "diverged"

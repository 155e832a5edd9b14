"""Section 3's sweeps: the plan's runs (fast, no Snakemake), the rank correlations against
brute-force definitions, results/early_phase.csv and the figures from made-up runs."""

from __future__ import annotations

import copy
import itertools
import json
import math

import numpy as np
import pandas as pd
import pytest

from fisherlab.plan import PlanError, build_plan
from fisherlab.plan import sweeps as sweeps_family
from fisherlab.report import early_phase as ep
from test_plan import PAPER, load


def test_the_paper_sweeps():
    plan = build_plan(PAPER)
    runs = plan.select("sweeps")
    per_sweep = {}
    for r in runs:
        per_sweep.setdefault(r.fields["sweep"], []).append(r)
    # Section 3 / I.1: 3 lrs or 3 batch sizes x 32 seeds per dataset; Figs. 15, 18, 19
    assert {k: len(v) for k, v in per_sweep.items()} == {
        "resnet26_c10_lr": 96, "resnet26_c10_bs": 96, "resnet26_c100_lr": 96, "resnet26_c100_bs": 96,
        "simplecnn_c10_lr5": 5, "simplecnn_c10_iter_lr": 2, "simplecnn_c10_iter_bs": 3}  # fmt: skip
    assert "resnet18_imagenet_lr" not in per_sweep  # in the config, not in `all`
    cfg, fields = plan.run("sweeps/resnet26_c10_lr/lr0.007/seed31").resolve()
    assert (cfg.lr, cfg.batch_size, cfg.seed, cfg.epochs, cfg.epsilon) == (0.007, 256, 31, 200, 1.2)
    assert (cfg.fisher_examples, cfg.fisher_every_early, cfg.fisher_every) == (5000, 20, 1000)
    assert (cfg.milestones, cfg.gamma, cfg.weight_decay, cfg.model) == ([60, 120, 170], 0.5, 1e-5, "resnet26")
    assert cfg.test_every_epoch  # the best test accuracy along the path (Figs. 2, 7)
    assert fields | {"sweep": "resnet26_c10_lr", "axis": "lr", "value": 0.007, "epsilon": 1.2} == fields
    assert plan.run("sweeps/resnet26_c10_lr/lr0.007/seed31").data["augment"] == "flip"
    cfg, fields = plan.run("sweeps/resnet26_c100_bs/bs700/seed0").resolve()
    assert (cfg.lr, cfg.batch_size, cfg.epsilon) == (0.02, 700, 3.5) and fields["value"] == 700
    assert plan.run("sweeps/resnet26_c100_bs/bs700/seed0").data["augment"] is False
    cfg, _ = plan.run("sweeps/simplecnn_c10_iter_bs/bs2048/seed0").resolve()
    assert (cfg.fisher_every, cfg.fisher_resample, cfg.fisher_examples, cfg.epochs) == (1, True, 128, 3)
    assert all(r.inputs.keys() == {"train", "test"} for r in runs)  # no selection: fixed lrs


def test_run_sweeps_and_until_crossing():
    cfg = load({"sweeps": {"run_sweeps": ["resnet18_imagenet_lr"]}})
    cfg["sweeps"]["settings"]["resnet18_imagenet_lr"]["until"] = "crossing"
    runs = build_plan(cfg).select("sweeps")
    assert len(runs) == 3 * 2 and {r.train["until"] for r in runs} == {"crossing"}
    spec, _ = runs[0].resolve()
    assert (spec.epsilon, spec.fisher_examples, spec.model_kwargs) == (3.5, 2500, {"small_input": True})


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s["settings"]["resnet26_c10_lr"].update(batch_size=[100, 200]), "varies one of lr and batch_size"),
        (lambda s: s["settings"]["resnet26_c10_lr"].update(recipe="nope"), "not under settings"),
        (lambda s: s.update(run_sweeps=["nope"]), "not under sweeps.settings"),
        (lambda s: s["figures"].update(fig2=["nope"]), "sweeps.figures.fig2"),
    ],
)
def test_inconsistent_sweeps_are_plan_errors(edit, message):
    cfg = copy.deepcopy(PAPER)
    edit(cfg["sweeps"])
    with pytest.raises(PlanError, match=message):
        build_plan(cfg)


def test_figures_follow_the_sweeps_that_run():
    figs = sweeps_family.figures(PAPER)
    assert figs["fig2"] == figs["fig8"] == ["resnet26_c10_lr", "resnet26_c100_lr"]
    assert figs["fig7"] == figs["fig9"] == ["resnet26_c10_bs", "resnet26_c100_bs"]
    cfg = load({"sweeps": {"run_sweeps": ["resnet26_c10_lr"]}})
    assert set(sweeps_family.figures(cfg)) == {"fig2", "fig8"}


# --------------------------------------------------------------- rank correlations


def brute_kendall(x, y):
    """tau-b by counting pairs one by one."""
    c = d = tx = ty = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        sx, sy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
        if sx == 0 and sy == 0:
            continue
        if sx == 0:
            tx += 1
        elif sy == 0:
            ty += 1
        elif sx == sy:
            c += 1
        else:
            d += 1
    return (c - d) / math.sqrt((c + d + tx) * (c + d + ty))


def test_spearman_and_kendall_against_their_definitions():
    rng = np.random.default_rng(0)
    for n in (2, 3, 7, 30):
        x, y = rng.normal(size=n), rng.normal(size=n)
        rank = lambda v: np.argsort(np.argsort(v)) + 1  # noqa: E731  (no ties)
        d = rank(x) - rank(y)
        assert ep.spearman(x, y) == pytest.approx(1 - 6 * (d**2).sum() / (n * (n**2 - 1)))
        assert ep.kendall(x, y) == pytest.approx(brute_kendall(x, y))
    # ties: values rounded to a coarse grid
    x, y = np.round(rng.normal(size=25)), np.round(rng.normal(size=25))
    assert ep.kendall(x, y) == pytest.approx(brute_kendall(x, y))
    rx, ry = pd.Series(x).rank().to_numpy(), pd.Series(y).rank().to_numpy()
    assert ep.spearman(x, y) == pytest.approx(np.corrcoef(rx, ry)[0, 1])
    assert ep.spearman([1, 2, 3], [3, 2, 1]) == -1 and ep.kendall([1, 2, 3], [1, 2, 3]) == 1
    assert math.isnan(ep.spearman([1, 1, 1], [1, 2, 3])) and math.isnan(ep.kendall([1], [2]))


def made_up_runs(seeds=6, reached=True):
    """Three lrs; the smaller the lr, the larger Tr(F_i) and the lower the test accuracy."""
    rng = np.random.default_rng(1)
    rows = []
    for lr, fi, acc in [(0.01, 300.0, 0.60), (0.03, 150.0, 0.66), (0.1, 60.0, 0.70)]:
        for s in range(seeds):
            rows.append({"sweep": "s", "setting": "r", "axis": "lr", "value": lr, "seed": s, "status": "ok",
                         "trace_fisher_i": fi + rng.normal(0, 10), "best_test_acc": acc + rng.normal(0, 0.01),
                         "best_train_acc": np.nan,  # the whole split: at the last epoch only, as the trainer writes
                         "best_train_acc_subset": 0.99 - rng.uniform(0, 0.02),
                         "crossing_epoch": 2.0 + s / 10})  # fmt: skip
    rows.append({**rows[0], "seed": 99, "status": "diverged", "trace_fisher_i": None})
    rows.append({**rows[1], "seed": 98, "trace_fisher_i": None if not reached else np.nan})
    return pd.DataFrame(rows)


def test_the_early_phase_table():
    runs = made_up_runs()
    table = ep.early_phase_table(runs, bootstrap=200)
    assert table["value"].tolist() == [0.01, 0.03, 0.1]
    first = table.iloc[0]
    assert (first["runs"], first["ok"], first["reached"]) == (8, 7, 6)  # one diverged, one never reached
    ok = runs[(runs["value"] == 0.01) & runs["trace_fisher_i"].notna()]
    assert first["trace_fisher_i"] == pytest.approx(ok["trace_fisher_i"].mean())
    assert first["trace_fisher_i_std"] == pytest.approx(ok["trace_fisher_i"].std(ddof=1))  # the paper's bars
    assert first["trace_fisher_i_sem"] == pytest.approx(ok["trace_fisher_i"].std(ddof=1) / math.sqrt(6))
    finished = runs[(runs["value"] == 0.01) & (runs["status"] == "ok")]
    assert first["best_train_acc_subset"] == pytest.approx(100 * finished["best_train_acc_subset"].mean())
    assert first["best_train_acc_subset_std"] == pytest.approx(100 * finished["best_train_acc_subset"].std(ddof=1))
    assert table["best_train_acc_subset"].notna().all() and "best_train_acc" not in table
    assert first["best_test_acc"] == pytest.approx(100 * runs[(runs["value"] == 0.01) & (runs["status"] == "ok")]["best_test_acc"].mean())
    assert first["spearman"] < -0.8 and first["kendall"] < -0.6 and first["n_pairs"] == 18
    assert first["spearman_lo"] <= first["spearman"] <= first["spearman_hi"] <= -0.5
    again = ep.early_phase_table(runs, bootstrap=200)
    pd.testing.assert_frame_equal(table, again)  # a seeded bootstrap
    md = ep.early_phase_markdown(table)
    assert "| s | learning rate | 0.01 | 8 (7 / 6) |" in md and "Spearman" in md
    assert "Mean ± standard deviation over seeds" in md and "Best train acc., subset (%)" in md
    std_cell = f"{first['trace_fisher_i']:.1f} ± {first['trace_fisher_i_std']:.1f}"
    sem_cell = f"{first['trace_fisher_i']:.1f} ± {first['trace_fisher_i_sem']:.1f}"
    assert std_cell in md and sem_cell in ep.early_phase_markdown(table, error="sem")
    assert "standard error" in ep.early_phase_markdown(table, error="sem")
    with pytest.raises(ValueError, match="error must be one of"):
        ep.early_phase_markdown(table, error="ci")


def test_a_sweep_that_never_reaches_epsilon_is_recorded_not_a_crash():
    runs = made_up_runs().assign(trace_fisher_i=np.nan)
    table = ep.early_phase_table(runs, bootstrap=50)
    assert (table["reached"] == 0).all() and table["trace_fisher_i"].isna().all()
    assert math.isnan(table["spearman"].iloc[0])
    md = ep.early_phase_markdown(table)  # each empty cell says why, no dash
    assert "| not reached | not reached |" in md and "too few points" in md and "–" not in md
    diverged = ep.early_phase_table(made_up_runs().assign(status="diverged", trace_fisher_i=np.nan,
                                                          best_test_acc=np.nan, best_train_acc_subset=np.nan),
                                    bootstrap=50)  # fmt: skip
    assert "| diverged | diverged | diverged | diverged |" in ep.early_phase_markdown(diverged)


def test_the_figures(tmp_path):
    from PIL import Image

    table = ep.early_phase_table(made_up_runs(), bootstrap=50)
    for metric, name in (("best_test_acc", "fig2.png"), ("best_train_acc_subset", "fig8.png")):
        ep.fig_tr_fi(table, ["s"], metric, tmp_path / name)
        with Image.open(tmp_path / name) as im:
            assert im.size[0] > 300
    with pytest.raises(ValueError, match="metric must be one of"):
        ep.fig_tr_fi(table, ["s"], "best_train_acc", tmp_path / "x.png")  # the whole split: not every epoch
    steps = np.arange(0, 50)
    curv = pd.DataFrame({"step": steps, "epoch": steps / 10, "trace_fisher": steps * 1.0 + 1,
                         "trace_fisher_batch": steps * 2.0 + 1, "train_acc_running": steps / 50})  # fmt: skip
    metrics = pd.DataFrame({"epoch": [1, 2, 3, 4, 5], "train_acc_subset": [0.2, 0.4, 0.6, 0.7, 0.8],
                            "train_acc": [np.nan] * 4 + [0.81], "val_acc": [0.2, 0.3, 0.4, 0.5, 0.5]})  # fmt: skip
    runs = {"lr 0.01": (metrics, curv), "lr 0.1": (metrics, curv.assign(trace_fisher=curv["trace_fisher"] / 2))}
    drawn = ep.fig1(runs, "wrn", tmp_path / "fig1.png")
    train = drawn[drawn["panel"] == "train_acc_subset"]  # Fig. 1's training accuracy: a point per epoch per run
    assert train.groupby("series")["y"].apply(lambda y: y.notna().sum()).tolist() == [5, 5]
    assert train["y"].tolist()[:5] == pytest.approx([20, 40, 60, 70, 80])
    with pytest.raises(ValueError, match="train_acc_subset"):
        ep.fig1({"x": (metrics.drop(columns="train_acc_subset"), curv)}, "wrn", tmp_path / "bad.png")
    ep.fig15(runs, "simplecnn", tmp_path / "fig15.png")
    ep.fig_per_iteration(runs, "simplecnn", tmp_path / "fig18.png")
    assert all((tmp_path / f).stat().st_size > 5000 for f in ("fig1.png", "fig15.png", "fig18.png"))
    with pytest.raises(ValueError):
        ep.fig_tr_fi(table, ["nope"], "best_test_acc", tmp_path / "x.png")


def test_figs_8_and_9_draw_the_training_accuracy_of_every_epoch_with_std_bars(tmp_path):
    """Runs as the trainer records them without train_eval_examples: 0 (the whole-split
    best_train_acc NaN, its per-epoch estimate on the subset finite), read back from
    summary.json files: one finite point per sweep value, bars the std over seeds."""
    from fisherlab.report import load_summaries
    from fisherlab.runs.runio import json_safe

    runs = made_up_runs(seeds=4)
    paths = []
    for i, r in runs.iterrows():
        d = tmp_path / f"run{i}"
        d.mkdir()
        finals = {"final_train_acc": 0.99, "final_test_acc": r["best_test_acc"], "max_trace_fisher": 500.0}
        (d / "summary.json").write_text(json.dumps(json_safe({**r.to_dict(), **finals})))
        paths.append(d / "summary.json")
    table = ep.early_phase_table(load_summaries(paths), bootstrap=20)
    drawn = ep.fig_tr_fi(table, ["s"], "best_train_acc_subset", tmp_path / "fig8.png")
    assert len(drawn) == 3 and drawn[["x", "y", "xerr", "yerr"]].notna().all().all()
    for value, point in zip((0.01, 0.03, 0.1), drawn.itertuples()):
        ok = runs[(runs["value"] == value) & (runs["status"] == "ok")]
        reached = ok[ok["trace_fisher_i"].notna()]
        assert point.y == pytest.approx(100 * ok["best_train_acc_subset"].mean())
        assert point.yerr == pytest.approx(100 * np.std(ok["best_train_acc_subset"], ddof=1))
        assert point.xerr == pytest.approx(np.std(reached["trace_fisher_i"], ddof=1))
        assert point.error == "std"
    sem = ep.fig_tr_fi(table, ["s"], "best_train_acc_subset", tmp_path / "fig8_sem.png", error="sem")
    assert sem["yerr"].to_numpy() == pytest.approx(drawn["yerr"].to_numpy() / np.sqrt(table["ok"].to_numpy()))
    with pytest.raises(ValueError, match="error must be one of"):
        ep.fig_tr_fi(table, ["s"], "best_train_acc_subset", tmp_path / "x.png", error="var")


def test_a_run_stopped_at_the_crossing_has_a_training_accuracy_at_every_epoch():
    """until: crossing (a sweep stopped right after the crossing): every epoch row holds
    train_acc_subset, the whole split only the last, so best_train_acc is NaN and
    best_train_acc_subset, the maximum of the per-epoch rows, is what Figs. 8/9 draw."""
    from fisherlab import TrainConfig, TrainData, train
    from fisherlab.data import DeviceData, make_synthetic

    def split(n, name):
        return make_synthetic(n, num_classes=4, image_size=16, seed=3, split=name)

    d = DeviceData(split(192, "train"))
    stats = {"mean": d.mean.flatten().tolist(), "std": d.std.flatten().tolist()}
    data = TrainData(d, DeviceData(split(64, "val"), **stats), DeviceData(split(64, "test"), **stats))
    cfg = TrainConfig(model="simple_cnn", model_kwargs={"image_size": 16}, epochs=6, batch_size=32, lr=0.05,
                      fisher_examples=16, fisher_every=6, fisher_every_early=2, epsilon=1.37, until="crossing",
                      train_eval_examples=64, test_every_epoch=True, eval_batch_size=64)  # fmt: skip
    result = train(cfg, data)
    rows, s = result.metrics, result.summary
    assert s["status"] == "ok" and 1 < len(rows) < cfg.epochs  # stopped at the crossing
    assert all(math.isfinite(r["train_acc_subset"]) for r in rows)
    assert [("train_acc" in r) for r in rows] == [False] * (len(rows) - 1) + [True]
    assert math.isnan(s["best_train_acc"]) and s["best_train_acc_subset"] == max(r["train_acc_subset"] for r in rows)

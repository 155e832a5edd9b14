"""Tables 3, 8, 9 and Figs. 5, 12 from run summaries (pure functions, made-up frames)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from fisherlab import report
from fisherlab.training.measures import noisy_acc_at_clean_acc


def runs():
    rows = []
    for noise in (0.25, 0.5):
        for seed in (0, 1):
            for role, reg, alpha, beta in (("baseline", "none", None, None), ("mixup", "mixup", None, 0.4),
                                           ("fp", "fp", 0.1, None), ("gpr", "gpr", 0.31, None)):  # fmt: skip
                acc = {"baseline": 0.4, "mixup": 0.5, "fp": 0.6, "gpr": 0.55}[role] - noise / 10 + seed / 100
                rows.append(dict(setting="vgg", label_noise=noise, role=role, regularizer=reg, alpha=alpha,
                                 beta=beta, lr=0.05, seed=seed, status="ok", test_acc_at_best_val=acc,
                                 final_train_acc_clean=0.9, final_train_acc_noisy=0.1 + seed / 10))  # fmt: skip
    return pd.DataFrame(rows)


def test_table3_layout_and_values():
    t = report.table3(runs())
    assert list(t["label_noise"]) == [0.25, 0.5] and list(t["setting"]) == ["vgg", "vgg"]
    assert t.loc[0, "fp"] == pytest.approx(100 * (0.6 - 0.025 + 0.005))
    assert t.loc[0, "fp_std"] == pytest.approx(0.5)
    assert t.loc[0, "mixup_beta"] == 0.4 and math.isnan(t.loc[0, "mixup_alpha"])
    assert t.loc[1, "gpx_status"] == "missing" and t.loc[1, "gpx_n"] == 0
    md = report.to_markdown(t)
    assert md.splitlines()[0] == "| Label noise | Setting | Baseline | Mixup | GPx | FP | GPr |"
    assert "| 25% | vgg | 38.00 ± 0.50 (lr 0.05) | 48.00 ± 0.50 (lr 0.05, β 0.4) | not run |" in md
    assert report.table9(runs()).loc[0, "fp"] == pytest.approx(15.0)
    assert report.table8(runs()).loc[1, "baseline"] == pytest.approx(90.0)


def test_a_diverged_seed_shows_in_the_cell():
    df = runs()
    df.loc[(df["role"] == "fp") & (df["seed"] == 1) & (df["label_noise"] == 0.5), "status"] = "diverged"
    t = report.table3(df, noise=[0.5])
    assert t.loc[0, "fp_status"] == "partial" and t.loc[0, "fp_n"] == 1 and t.loc[0, "fp_runs"] == 2
    assert "partial" in report.to_markdown(t)


def test_select_prefers_the_best_validation_accuracy():
    df = pd.DataFrame(dict(beta=[0.2, 0.4, 0.8], best_val_acc=[0.3, 0.5, 0.4], status="ok",
                           setting="s", regularizer="mixup"))  # fmt: skip
    assert report.select(df, "beta") == 0.4
    df.loc[1, "status"] = "diverged"
    assert report.select(df, "beta") == 0.8


def test_noisy_accuracy_at_a_matched_clean_accuracy():
    m = pd.DataFrame(dict(epoch=[1, 2, 3], train_acc_clean=[0.2, 0.6, 0.9], train_acc_noisy=[0.0, 0.1, 0.4]))
    assert noisy_acc_at_clean_acc(m.to_dict("records"), 0.4) == pytest.approx(0.05)
    assert noisy_acc_at_clean_acc(m.to_dict("records"), 0.9) == pytest.approx(0.4)
    assert noisy_acc_at_clean_acc(m.to_dict("records"), 0.1) == 0.0
    assert math.isnan(noisy_acc_at_clean_acc(m.to_dict("records"), 0.95))


def metrics(scale):
    """Rows as the evaluation writes them: the per-group accuracies on the fixed subset at
    every epoch, over the whole split (train_acc_clean, train_acc_noisy) at the last only."""
    return pd.DataFrame(dict(epoch=[1, 2, 3], train_acc_clean_subset=[0.2, 0.5, 0.8],
                             train_acc_noisy_subset=[0.0, 0.1 * scale, 0.3], train_acc_clean=[np.nan, np.nan, 0.81],
                             train_acc_noisy=[np.nan, np.nan, 0.29],
                             grad_sq_norm_clean=[1.0, 0.5, 0.2], grad_sq_norm_noisy=[1.0, 2.0, 1.0 * scale],
                             val_acc=[0.2, 0.4, 0.45], grad_cosine_clean_noisy=[-0.2, -0.1, 0.05]))  # fmt: skip


def test_fig5_and_fig12_are_drawn(tmp_path):
    run_list = [("Baseline", None, metrics(1)), ("FP α=0.01", 0.01, metrics(0.5)), ("FP α=1", 1.0, metrics(0.2))]
    drawn = report.fig5(run_list, "vgg, 25%", tmp_path / "f5.png")
    report.fig12({"FP": run_list, "GPr": run_list[:2]}, tmp_path / "f12.png")
    assert (tmp_path / "f5.png").stat().st_size > 10_000 and (tmp_path / "f12.png").stat().st_size > 10_000
    # the per-epoch subset accuracies: a finite point per epoch per run in every panel (a curve, not one point)
    finite = drawn.dropna(subset=["x", "y"]).groupby(["panel", "series"]).size()
    assert len(finite) == 5 * 3 and (finite == 3).all()
    scatter = drawn[(drawn["panel"] == "noisy_vs_clean") & (drawn["series"] == "FP α=0.01")]
    assert scatter["x"].tolist() == pytest.approx([20, 50, 80]) and scatter["y"].tolist() == pytest.approx([0, 5, 30])
    with pytest.raises(ValueError, match="noisy-label file"):
        report.fig5([("x", None, metrics(1).drop(columns="train_acc_noisy_subset"))], "t", tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()
    # a run that diverged before its first epoch (an empty metrics.csv): drawn as nothing, listed, no error
    # (config.yaml in miniature: FP at alpha 10 diverged at step 10)
    empty = pd.DataFrame(columns=["epoch", "step"])
    drawn = report.fig5([*run_list, ("FP α=10", 10.0, empty)], "t", tmp_path / "f5d.png")
    report.fig12({"FP": [*run_list, ("FP α=10", 10.0, empty)]}, tmp_path / "f12d.png")
    assert (tmp_path / "f5d.png").stat().st_size > 10_000 and (tmp_path / "f12d.png").exists()
    assert set(drawn["series"]) == {"Baseline", "FP α=0.01", "FP α=1"}  # the diverged run has no point


def test_choose_falls_back_to_the_smallest_value_when_every_run_diverged():
    df = pd.DataFrame(dict(alpha=[0.1, 0.01, 1.0], best_val_acc=[0.3, 0.5, 0.4], status="ok"))
    assert report.choose(df, "alpha") == (0.01, "search")
    df["status"] = "diverged"
    value, source = report.choose(df, "alpha")
    assert value == 0.01 and source.startswith("fallback")
    with pytest.raises(report.NoFinishedRun):
        report.select(df, "alpha")


def test_a_sam_column_appears_when_sam_ran_with_its_rho():
    df = runs()
    sam = df[df["role"] == "fp"].assign(role="sam", regularizer="sam", alpha=None, rho=0.05,
                                         test_acc_at_best_val=0.65)  # fmt: skip
    t = report.table3(pd.concat([df, sam], ignore_index=True))
    assert t.loc[0, "sam"] == pytest.approx(100 * (0.65)) and t.loc[0, "sam_rho"] == 0.05
    md = report.to_markdown(t)
    assert md.splitlines()[0].endswith("| GPr | SAM |") and "(lr 0.05, ρ 0.05)" in md
    final = pd.concat([df, sam], ignore_index=True).query("label_noise == 0.25").drop(columns="label_noise")
    t1 = report.table1(final)
    assert t1.loc[0, "sam"] == pytest.approx(65.0) and t1.loc[0, "sam_rho"] == 0.05 and "SAM" in report.to_markdown(t1)
    assert "rho" not in "".join(report.table1(df.query("label_noise == 0.25")).columns)  # no SAM, no rho column

"""Tables and figures from hand-written run directories (fisherlab.report)."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd
import pytest

from fisherlab.training.measures import crossing
from fisherlab.report import (
    DISPLAY_NAMES,
    TABLE1_COLUMNS,
    fig4,
    load_summaries,
    read_run,
    results_table,
    select,
    table1,
    table4,
    table6,
    to_markdown,
    write_table,
)

METRICS_HEADER = ("epoch,step,lr,train_loss,train_acc,val_loss,val_acc,test_loss,test_acc,"
                  "train_loss_running,trace_fisher,seconds,eval_seconds")  # fmt: skip


def write_run(root, name, *, setting, role, seed, status="ok", lr=0.01, alpha=None,
              test=0.7, val=0.7, train=1.0, fisher=10.0, sec=2.0, regularizer=None):  # fmt: skip
    """A run directory with a summary.json (null where NaN), metrics.csv, curvature.csv."""
    d = root / name
    d.mkdir(parents=True)
    diverged = status != "ok"
    summary = {
        "status": status,
        "message": "loss is NaN" if diverged else "",
        "epochs_completed": 2,
        "steps": 20,
        "final_train_acc": None if diverged else train,
        "final_train_loss": None if diverged else 0.1,
        "final_val_acc": None if diverged else val,
        "final_val_loss": None if diverged else 0.9,
        "final_test_acc": None if diverged else test,
        "final_test_loss": None if diverged else 0.9,
        "best_epoch": None if diverged else 2,
        "best_val_acc": None if diverged else val,
        "test_acc_at_best_val": None if diverged else test,
        "max_trace_fisher": None if diverged else fisher,
        "seconds_per_epoch": sec,
        "seed": seed,
        "config": {"lr": lr, "epochs": 2, "model_kwargs": {"width": None}},
        "setting": setting,
        "role": role,
        "regularizer": regularizer or (role if role in ("fp", "gp", "gpx", "gpr") else "none"),
        "lr": lr,
        "alpha": alpha,
        "code_version": "abc123",
        "epsilon": 1.5,
        "trace_fisher_i": None,
    }  # fmt: skip
    (d / "summary.json").write_text(json.dumps(summary, indent=2))
    (d / "metrics.csv").write_text(
        METRICS_HEADER + "\n"
        f"1,10,{lr},1.2,0.5,1.3,{val - 0.1},1.3,{test - 0.1},1.5,{fisher / 2},2.0,0.1\n"
        f"2,20,{lr},0.1,{train},0.9,{val},0.9,{test},0.2,{fisher},2.0,0.1\n"
    )
    (d / "curvature.csv").write_text(
        "step,epoch,trace_fisher,trace_fisher_batch,train_loss_running\n"
        f"0,0.0,{fisher * 3},{fisher * 3},\n"
        f"5,0.5,{fisher / 2},{fisher / 2},2.1\n"
        f"10,1.0,{fisher},{fisher},1.4\n"
        f"15,1.5,{fisher * 0.8},{fisher},0.9\n"
        f"20,2.0,{fisher * 0.6},{fisher},0.3\n"
    )
    return d


# Two settings. simplecnn_c10: eta_star (2 ok), baseline (2 ok), fp (1 ok + 1 diverged),
# gpx (2 diverged), no gp; vgg11_c100: eta_star (1 ok), gp (2 ok). No gpr anywhere.
# Plus grid runs (roles lrgrid/alphagrid) that must stay out of the tables.
FINAL = [
    # name, setting, role, seed, status, lr, alpha, test, train, fisher
    ("s_eta_0", "simplecnn_c10", "eta_star", 0, "ok", 0.1, None, 0.80, 1.00, 20.0),
    ("s_eta_1", "simplecnn_c10", "eta_star", 1, "ok", 0.1, None, 0.78, 0.98, 30.0),
    ("s_base_0", "simplecnn_c10", "baseline", 0, "ok", 0.01, None, 0.70, 1.00, 50.0),
    ("s_base_1", "simplecnn_c10", "baseline", 1, "ok", 0.01, None, 0.74, 1.00, 54.0),
    ("s_fp_0", "simplecnn_c10", "fp", 0, "ok", 0.01, 0.03, 0.79, 0.94, 19.0),
    ("s_fp_1", "simplecnn_c10", "fp", 1, "diverged", 0.01, 0.03, 0.0, 0.0, 0.0),
    ("s_gpx_0", "simplecnn_c10", "gpx", 0, "diverged", 0.01, 0.1, 0.0, 0.0, 0.0),
    ("s_gpx_1", "simplecnn_c10", "gpx", 1, "diverged", 0.01, 0.1, 0.0, 0.0, 0.0),
    ("v_eta_0", "vgg11_c100", "eta_star", 0, "ok", 0.03, None, 0.4586, 0.9998, 50.88),
    ("v_gp_0", "vgg11_c100", "gp", 0, "ok", 0.003, 0.01, 0.47, 0.99, 58.0),
    ("v_gp_1", "vgg11_c100", "gp", 1, "ok", 0.003, 0.01, 0.48, 0.97, 59.0),
]


@pytest.fixture
def runs_root(tmp_path):
    root = tmp_path / "runs"
    for name, setting, role, seed, status, lr, alpha, test, train, fisher in FINAL:
        write_run(root, name, setting=setting, role=role, seed=seed, status=status, lr=lr,
                  alpha=alpha, test=test, val=test, train=train, fisher=fisher)  # fmt: skip
    for i, (lr, val) in enumerate([(0.1, 0.9), (0.01, 0.5)]):
        write_run(root, f"s_grid_{i}", setting="simplecnn_c10", role="lrgrid", seed=0,
                  lr=lr, val=val, test=val)  # fmt: skip
    return root


@pytest.fixture
def df(runs_root):
    return load_summaries(sorted(runs_root.glob("*/summary.json")))


def grid(rows, key="lr"):
    """A selection frame: (key value, seed, status, best_val_acc) tuples."""
    return pd.DataFrame(
        [{key: k, "seed": s, "status": st, "best_val_acc": v, "setting": "x", "regularizer": "fp"}
         for k, s, st, v in rows]
    )  # fmt: skip


# ------------------------------------------------------------------------- loading


def test_read_run_null_to_nan(runs_root):
    s = read_run(runs_root / "s_fp_1")
    assert s["status"] == "diverged"
    assert math.isnan(s["best_val_acc"]) and math.isnan(s["trace_fisher_i"])
    assert s["config"]["lr"] == 0.01
    assert read_run(runs_root / "s_fp_1" / "summary.json")["seed"] == 1


def test_read_run_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match="summary.json"):
        read_run(tmp_path / "nothing_here")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "summary.json").write_text("{not json")
    with pytest.raises(ValueError, match=re.escape(str(bad / "summary.json"))):
        load_summaries([bad / "summary.json"])
    (bad / "summary.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        read_run(bad)


def test_load_summaries(df, runs_root):
    assert len(df) == len(FINAL) + 2
    assert "config" not in df.columns
    assert {"run_dir", "status", "setting", "role", "lr", "alpha", "seed", "epsilon"} <= set(df.columns)
    row = df.set_index("run_dir").loc[str(runs_root / "s_fp_1")]
    assert row["status"] == "diverged" and np.isnan(row["test_acc_at_best_val"])
    assert df["alpha"].isna().sum() == 5 + 2  # eta_star, baseline and the grid: null -> NaN
    assert load_summaries([]).columns.tolist() == ["run_dir"]


# -------------------------------------------------------------------------- Tr(F_i)


def test_trace_fisher_initial_from_a_runs_curvature_csv(runs_root):
    """Tr(F_i) (fisherlab.training.measures.crossing) on a curvature.csv as the trainer writes it;
    the estimator's cases are in test_measures.py."""
    curv = pd.read_csv(runs_root / "s_eta_0" / "curvature.csv")
    assert np.isnan(curv["train_loss_running"].iloc[0])
    rows = curv.to_dict("records")
    assert crossing(rows, 2.2).status == "at first measurement"  # the NaN at step 0 never counts
    c = crossing(rows, 1.5)  # losses 2.1 at step 5 and 1.4 at step 10: 6/7 of the way
    f5, f10 = curv["trace_fisher"].iloc[1], curv["trace_fisher"].iloc[2]
    assert c.status == "ok" and c.step == pytest.approx(5 + 5 * 6 / 7)
    assert c.trace_fisher_i == pytest.approx(f5 + (f10 - f5) * 6 / 7)
    assert math.isnan(crossing(rows, 0.1).trace_fisher_i)  # never reached
    assert crossing(curv.iloc[[4, 2, 0, 3, 1]].to_dict("records"), 1.5) == c  # step order, not row order


# ------------------------------------------------------------------------ selection


def test_select_lr_mean_over_seeds():
    # lr 0.1: one seed 0.9 but mean 0.6; lr 0.03: mean 0.7 -> 0.03
    df = grid([(0.1, 0, "ok", 0.9), (0.1, 1, "ok", 0.3), (0.03, 0, "ok", 0.7), (0.03, 1, "ok", 0.7)])
    assert select(df, "lr") == 0.03


def test_select_lr_excludes_diverged_and_breaks_ties_upwards():
    # lr 1.0 diverged everywhere (NaN metric); lr 0.3 has a diverged seed excluded
    df = grid([(1.0, 0, "diverged", np.nan), (1.0, 1, "diverged", np.nan),
               (0.3, 0, "ok", 0.8), (0.3, 1, "diverged", 0.99),
               (0.1, 0, "ok", 0.7), (0.1, 1, "ok", 0.75)])  # fmt: skip
    assert select(df, "lr") == 0.3
    tie = grid([(0.01, 0, "ok", 0.6), (0.01, 1, "ok", 0.8), (0.1, 0, "ok", 0.7), (0.1, 1, "ok", 0.7),
                (0.03, 0, "ok", 0.5)])  # fmt: skip
    assert select(tie, "lr") == 0.1


def test_select_errors():
    with pytest.raises(ValueError, match="ok"):
        select(grid([(0.1, 0, "diverged", np.nan), (0.3, 0, "diverged", np.nan)]), "lr")
    with pytest.raises(ValueError, match="ok"):
        select(grid([]).reindex(columns=["lr", "status", "best_val_acc"]), "lr")
    mixed = grid([(0.1, 0, "ok", 0.5), (0.3, 0, "ok", 0.6)]).assign(setting=["a", "b"])
    with pytest.raises(ValueError, match="setting"):
        select(mixed, "lr")


def test_select_alpha():
    df = grid([(0.01, 0, "ok", 0.60), (0.01, 1, "ok", 0.64), (0.1, 0, "ok", 0.70),
               (0.1, 1, "diverged", np.nan), (0.3, 0, "ok", 0.61), (0.3, 1, "ok", 0.63)],
              key="alpha")  # fmt: skip
    assert select(df, "alpha") == 0.1
    df.loc[df["alpha"] == 0.1, "status"] = "diverged"
    assert select(df, "alpha") == 0.3  # tie 0.62 with 0.01 -> larger alpha
    with pytest.raises(ValueError, match="ok"):
        select(df.assign(status="diverged"), "alpha")


def test_select_lr_on_loaded_grid(df):
    assert select(df[(df["role"] == "lrgrid")], "lr") == 0.1


# --------------------------------------------------------------------------- tables


def test_table1_numbers(df):
    t = table1(df)
    assert t["setting"].tolist() == ["simplecnn_c10", "vgg11_c100"]  # grid runs excluded
    assert [c for c in TABLE1_COLUMNS if c in t.columns] == ["eta_star", "baseline", "gpx", "gp", "fp"]
    assert "gpr" not in t.columns and "gpr_status" not in t.columns  # no gpr run anywhere
    s = t.set_index("setting").loc["simplecnn_c10"]
    assert s["eta_star"] == pytest.approx(79.0)
    assert s["eta_star_std"] == pytest.approx(1.0)  # ddof=0 of (80, 78)
    assert s["baseline"] == pytest.approx(72.0) and s["baseline_std"] == pytest.approx(2.0)
    assert s["eta_star_n"] == 2 and s["eta_star_status"] == "ok"
    assert s["eta_star_lr"] == 0.1 and np.isnan(s["eta_star_alpha"])
    v = t.set_index("setting").loc["vgg11_c100"]
    assert v["eta_star"] == pytest.approx(45.86) and v["eta_star_std"] == 0.0 and v["eta_star_n"] == 1
    assert v["gp"] == pytest.approx(47.5) and v["gp_std"] == pytest.approx(0.5)
    assert v["gp_lr"] == 0.003 and v["gp_alpha"] == 0.01


def test_table_status_and_counts(df):
    t = table1(df).set_index("setting")
    s = t.loc["simplecnn_c10"]
    # fp: one seed diverged -> partial, mean over the ok seed only
    assert s["fp_status"] == "partial" and s["fp_n"] == 1 and s["fp_runs"] == 2
    assert s["fp"] == pytest.approx(79.0) and s["fp_std"] == 0.0 and s["fp_alpha"] == 0.03
    # gpx: all seeds diverged -> no value, but the runs are counted and lr/alpha kept
    assert s["gpx_status"] == "diverged" and s["gpx_n"] == 0 and s["gpx_runs"] == 2
    assert np.isnan(s["gpx"]) and s["gpx_lr"] == 0.01 and s["gpx_alpha"] == 0.1
    # gp: no run for this setting -> missing
    assert s["gp_status"] == "missing" and s["gp_n"] == 0 and s["gp_runs"] == 0 and np.isnan(s["gp"])
    v = t.loc["vgg11_c100"]
    assert v["baseline_status"] == "missing" and v["fp_status"] == "missing"


def test_tables_4_and_6(df):
    t4 = table4(df).set_index("setting")
    assert t4.loc["simplecnn_c10", "eta_star"] == pytest.approx(25.0)
    assert t4.loc["simplecnn_c10", "baseline"] == pytest.approx(52.0)
    t6 = table6(df).set_index("setting")
    assert t6.loc["simplecnn_c10", "eta_star"] == pytest.approx(99.0)
    assert t6.loc["simplecnn_c10", "fp"] == pytest.approx(94.0)


def test_results_table_options_and_checks(df):
    t = results_table(df, "seconds_per_epoch", settings=["vgg11_c100", "nope"], columns=["gp", "gpr"])
    assert t["setting"].tolist() == ["vgg11_c100", "nope"]
    assert t["gp"].tolist()[0] == 2.0 and t["gpr_status"].tolist() == ["missing", "missing"]
    assert t.loc[1, "gp_status"] == "missing"
    dup = pd.concat([df, df[df["run_dir"].str.endswith("s_eta_0")]])
    with pytest.raises(ValueError, match="seed"):
        table1(dup)
    clash = df.copy()
    clash.loc[clash["run_dir"].str.endswith("s_eta_1"), "lr"] = 0.3
    with pytest.raises(ValueError, match="lr"):
        table1(clash)


# ------------------------------------------------------------------------- markdown


def test_to_markdown(df):
    md = to_markdown(table1(df))
    lines = md.strip().splitlines()
    assert lines[0] == "| Setting | η* | Baseline | GPx | GP | FP |"
    assert lines[1].startswith("| :--- | ---:")
    assert len(lines) == 4
    simple, vgg = lines[2], lines[3]
    cells = [c.strip() for c in simple.strip("|").split("|")]
    assert cells[0] == "simplecnn_c10"
    assert cells[1] == "79.00 ± 1.00 (lr 0.1)"
    assert cells[2] == "72.00 ± 2.00 (lr 0.01)"
    assert cells[3] == "diverged (lr 0.01, α 0.1)"
    assert cells[4] == "not run"
    assert cells[5] == "partial: 79.00 (1/2 diverged) (lr 0.01, α 0.03)"
    vcells = [c.strip() for c in vgg.strip("|").split("|")]
    assert vcells[1] == "45.86 (lr 0.03)"  # one seed: no std
    assert vcells[4] == "47.50 ± 0.50 (lr 0.003, α 0.01)"
    assert "not run" in vcells[2]
    named = to_markdown(table1(df), digits=1, setting_names={"vgg11_c100": "VGG11 / C100"},
                        hyper_sep="<br>")  # fmt: skip
    assert "| VGG11 / C100 | 45.9<br>(lr 0.03) |" in named
    assert DISPLAY_NAMES["eta_star"] == "η*"


def test_write_table(df, tmp_path):
    out = tmp_path / "results"
    t = table1(df)
    write_table(t, out / "table1.csv", out / "table1.md")
    assert sorted(p.name for p in out.iterdir()) == ["table1.csv", "table1.md"]
    back = pd.read_csv(out / "table1.csv")
    assert back.columns.tolist() == t.columns.tolist()
    assert back["fp_status"].tolist() == ["partial", "missing"]
    assert (out / "table1.md").read_text() == to_markdown(t)
    write_table(t, out / "table1.csv", out / "table1.md")  # overwrite in place
    assert sorted(p.name for p in out.iterdir()) == ["table1.csv", "table1.md"]


# -------------------------------------------------------------------------- figures


def load_pair(root, name):
    return pd.read_csv(root / name / "metrics.csv"), pd.read_csv(root / name / "curvature.csv")


def test_fig4_png(runs_root, tmp_path):
    from PIL import Image

    settings = {
        "simplecnn_c10": {c: load_pair(runs_root, n) for c, n in
                          [("eta_star", "s_eta_0"), ("baseline", "s_base_0"), ("fp", "s_fp_0")]},
        "vgg11_c100": {"eta_star": load_pair(runs_root, "v_eta_0"), "gp": load_pair(runs_root, "v_gp_0")},
    }  # fmt: skip
    out = tmp_path / "figs" / "fig4.png"
    fig4(settings, out, setting_names={"vgg11_c100": "VGG11 / CIFAR-100"})
    assert out.stat().st_size > 0
    with Image.open(out) as im:
        im.verify()
    with Image.open(out) as im:
        w, h = im.size
    assert w > h and h > 0
    assert [p.name for p in out.parent.iterdir()] == ["fig4.png"]

    single = tmp_path / "figs" / "fig4_simplecnn.png"
    fig4({"simplecnn_c10": settings["simplecnn_c10"]}, single, smooth=3)
    with Image.open(single) as im:
        w1, h1 = im.size
    assert w1 > h1 and h1 < h  # one row is shorter than two
    assert sorted(p.name for p in out.parent.iterdir()) == ["fig4.png", "fig4_simplecnn.png"]
    with pytest.raises(ValueError):
        fig4({}, tmp_path / "empty.png")

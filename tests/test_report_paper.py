"""The paper's published Tables 1-9 (package data) beside the pipeline's tables (pure
functions, hand-made run frames made into tables by the pipeline's own table functions)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from fisherlab import report
from fisherlab.report import paper

ROOT = Path(__file__).resolve().parents[1]


def as_written(table: pd.DataFrame) -> pd.DataFrame:
    """A table as the comparison rule reads it back: through its CSV."""
    return pd.read_csv(io.StringIO(table.to_csv(index=False)))


# --- the transcription ---------------------------------------------------------------


def test_every_cell_of_tables_1_to_9_is_there_once():
    pv = paper.paper_values()
    counts = pv.groupby("table").size().to_dict()
    # rows x columns as printed: Table 4 has no TinyImageNet row, Tables 8-9 only 25% noise
    assert counts == {1: 5 * 6, 2: 5 * 2, 3: 4 * 5, 4: 4 * 6, 5: 5 * 6, 6: 5 * 6, 7: 5 * 2, 8: 2 * 5, 9: 2 * 5}
    assert pv["value"].notna().all()
    assert (pv["plus_minus"].notna() == pv["table"].isin([2, 7])).all()  # only Tables 2 and 7 print "±"
    assert set(pv["pipeline_table"]) == {f"table{t}" for t in range(1, 10)}
    assert (pv["pipeline_table"] == "table" + pv["table"].astype(str)).all()
    assert (pv["label_noise"].notna() == pv["table"].isin([3, 8, 9])).all()
    for col, role in zip(pv["column"], pv["role"]):
        assert report.DISPLAY_NAMES[role] == col


def test_the_transcription_agrees_with_the_papers_prose():
    """Numbers the paper's text derives from its tables, recomputed from the file."""
    pv = paper.paper_values()

    def cells(t):
        return pv[pv["table"] == t].pivot_table(index=["row", "label_noise"], columns="column", values="value",
                                                dropna=False)  # fmt: skip

    t1 = cells(1)
    assert (t1["η*"] - t1["Baseline"]).max() == pytest.approx(9.00)  # "a degradation of up to 9%"
    t2 = cells(2)
    assert int((t2["FP"] > t2["η*"]).sum()) == 4  # "improves generalization in 4 out of 5 settings"
    t3 = cells(3)
    assert (t3["FP"] - t3["Baseline"]).max() == pytest.approx(21.28)  # "improving test accuracy by up to 21.28%"
    assert (t3["FP"] > t3["GPx"]).all()  # "FP strongly outperforms penalizing GPx"
    t4 = cells(4)
    for reg in ("GPx", "GP", "FP", "GPr"):  # "all gradient norm regularizers reduce the maximum value of Tr(F)"
        assert (t4["Baseline"] > t4[reg]).all()
    simplecnn = pv[(pv["table"] == 1) & (pv["setting"] == "simplecnn_c10") & (pv["column"] == "η*")]
    assert simplecnn["value"].item() == 76.94  # Supplement E: "76.94% compared to 73.7% ... c.f. with Table 1"


def test_the_mapping_names_settings_and_columns_of_config_yaml():
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    pv = paper.paper_values()
    for _, p in pv.iterrows():
        if p["table"] in (3, 8, 9):
            assert p["setting"] in config["noisy"]["settings"], p["setting"]
            assert p["role"] in report.NOISY_COLUMNS
        else:
            s = config["settings"][p["setting"]]
            assert s.get("table", 1) == (2 if p["table"] in (2, 7) else 1), (p["table"], p["setting"])
            assert p["role"] in report.TABLE1_COLUMNS
    # one setting per printed row, one row per setting
    per_row = pv.groupby(["table", "row", "label_noise"], dropna=False)["setting"].nunique()
    assert (per_row == 1).all()


def test_claims_name_columns_of_their_tables():
    claims = paper.paper_claims()
    pv = paper.paper_values()
    for _, c in claims.iterrows():
        printed = set(pv.loc[pv["table"] == c["table"], "column"])
        assert set(c["columns"].split(";")) <= printed, c.to_dict()


# --- the comparison ------------------------------------------------------------------

ACC = {"eta_star": 0.77, "baseline": 0.72, "gpx": 0.75, "gp": 0.76, "fp": 0.80, "gpr": 0.79, "sam": 0.78}


def table1_runs(overrides: dict | None = None) -> pd.DataFrame:
    overrides = overrides or {}
    rows = []
    for setting in ("simplecnn_c10", "vgg11_c100", "my_extra"):
        for seed in (0, 1):
            for role, acc in ACC.items():
                if setting == "vgg11_c100" and role == "gp":
                    continue  # never ran: the cell is "missing"
                acc = overrides.get((setting, role), acc) + seed / 100
                rows.append(dict(setting=setting, role=role, seed=seed, status="ok", lr=0.01, alpha=0.1,
                                 test_acc_at_best_val=acc, final_train_acc=1.0, seconds_per_epoch=20.0,
                                 max_trace_fisher=60.0 if role == "baseline" else 25.0))  # fmt: skip
    df = pd.DataFrame(rows)
    df.loc[(df["setting"] == "vgg11_c100") & (df["role"] == "gpx"), "status"] = "diverged"
    df.loc[(df["setting"] == "vgg11_c100") & (df["role"] == "fp") & (df["seed"] == 1), "status"] = "diverged"
    return df


def noisy_runs() -> pd.DataFrame:
    rows = []
    for seed in (0, 1):
        for role, acc in (("baseline", 0.40), ("mixup", 0.50), ("gpx", 0.45), ("fp", 0.60), ("gpr", 0.58)):
            rows.append(dict(setting="vgg11_c100_noisy", label_noise=0.25, role=role, seed=seed, status="ok",
                             lr=0.05, test_acc_at_best_val=acc, final_train_acc_clean=0.9,
                             final_train_acc_noisy=0.99 if role == "baseline" else 0.05))  # fmt: skip
    return pd.DataFrame(rows)


@pytest.fixture
def tables():
    runs = table1_runs()
    out = {name: as_written(getattr(report, name)(runs)) for name in ("table1", "table4", "table5", "table6")}
    out.update({name: as_written(getattr(report, name)(noisy_runs())) for name in ("table3", "table8", "table9")})
    return out  # no table2/table7: this "config" has no Table 2 setting


def cell(comparison, table, setting, column, noise=None):
    c = comparison[(comparison["table"] == table) & (comparison["setting"] == setting)
                   & (comparison["column"] == column) & (comparison["status"] != "not in the paper")]  # fmt: skip
    if noise is not None:
        c = c[c["label_noise"] == noise]
    assert len(c) == 1
    return c.iloc[0]


def test_reproduced_cells_stand_beside_the_papers(tables):
    c = paper.paper_comparison(tables)
    assert list(c.columns) == list(paper.COMPARISON_COLUMNS)
    assert len(c[c["status"] != "not in the paper"]) == 174  # every published cell, none dropped
    fp = cell(c, 1, "simplecnn_c10", "FP")
    assert fp["paper"] == 79.66 and fp["ours"] == pytest.approx(80.5) and fp["ours_std"] == pytest.approx(0.5)
    assert fp["difference"] == pytest.approx(80.5 - 79.66) and fp["status"] == "ok" and fp["ours_n"] == 2
    t4 = cell(c, 4, "simplecnn_c10", "Baseline")
    assert t4["paper"] == 52.05 and t4["ours"] == 60.0 and t4["difference"] == pytest.approx(7.95)
    assert cell(c, 5, "simplecnn_c10", "GPr")["ours"] == 20.0
    t9 = cell(c, 9, "vgg11_c100_noisy", "Baseline", 0.25)
    assert t9["paper"] == 99.56 and t9["ours"] == pytest.approx(99.0)


def test_diverged_partial_missing_and_not_run_cells_are_listed_never_zero(tables):
    c = paper.paper_comparison(tables)
    gpx = cell(c, 1, "vgg11_c100", "GPx")
    assert gpx["status"] == "diverged" and math.isnan(gpx["ours"]) and math.isnan(gpx["difference"])
    assert gpx["ours_runs"] == 2 and gpx["paper"] == 45.26
    fp = cell(c, 1, "vgg11_c100", "FP")
    assert fp["status"] == "partial" and fp["ours"] == pytest.approx(80.0) and fp["ours_n"] == 1
    assert "1 of 2 runs diverged" in fp["note"]
    gp = cell(c, 1, "vgg11_c100", "GP")  # no run of the cell
    assert gp["status"] == "not run" and math.isnan(gp["ours"]) and gp["note"] == "no run of this cell"
    dense = cell(c, 1, "densenet_c100", "FP")  # the setting is not in our table
    assert dense["status"] == "not run" and "densenet_c100 is not a row of table1" in dense["note"]
    t2 = c[c["table"] == 2]  # no Table 2 made
    assert len(t2) == 10 and (t2["status"] == "not run").all()
    assert (t2["note"] == "table2 is not made by this config").all()
    fifty = cell(c, 3, "vgg11_c100_noisy", "FP", 0.5)  # a noise level we did not run
    assert fifty["status"] == "not run" and "at label noise 0.5" in fifty["note"]
    assert c.loc[c["status"] == "not run", "ours"].isna().all()


def test_cells_beyond_the_paper_are_listed_as_such(tables):
    c = paper.paper_comparison(tables)
    extra = c[c["status"] == "not in the paper"]
    assert set(extra.loc[extra["table"] == 1, "setting"]) == {"simplecnn_c10", "vgg11_c100", "my_extra"}
    assert set(extra.loc[(extra["table"] == 1) & (extra["setting"] == "simplecnn_c10"), "column"]) == {"SAM"}
    assert len(extra[(extra["table"] == 1) & (extra["setting"] == "my_extra")]) == 7
    assert extra["paper"].isna().all()
    # Table 4 prints no TinyImageNet row; Table 4's SimpleCNN row is the paper's
    assert not ((extra["table"] == 4) & (extra["setting"] == "simplecnn_c10") & (extra["column"] == "FP")).any()


def test_directions_hold_fail_or_stay_undecided():
    runs = table1_runs(overrides={("simplecnn_c10", "baseline"): 0.85})  # ours: Baseline beats FP
    tables = {"table1": as_written(report.table1(runs)), "table4": as_written(report.table4(runs))}
    c = paper.paper_comparison(tables)
    d = paper.claim_directions(c)
    assert set(d["table"]) == {1, 2, 3, 4, 6, 9}  # every claim on every paper row, run or not

    def one(setting, claim):
        r = d[(d["setting"] == setting) & (d["claim"] == claim)]
        assert len(r) == 1
        return r.iloc[0]

    fails = one("simplecnn_c10", "FP > Baseline")
    assert fails["paper_holds"] == True and fails["ours_holds"] == False  # noqa: E712
    holds = one("simplecnn_c10", "FP > GPx")
    assert holds["paper_holds"] == True and holds["ours_holds"] == True  # noqa: E712
    tr = d[(d["table"] == 4) & (d["setting"] == "simplecnn_c10") & (d["claim"] == "Baseline > η*")].iloc[0]
    assert tr["ours_holds"] == True  # noqa: E712  (60 > 25)
    diverged = one("vgg11_c100", "FP > GPx")
    assert diverged["ours_holds"] is None and diverged["ours_status"] == "GPx: diverged"
    partial = one("vgg11_c100", "FP > Baseline")  # the mean over the finished seed decides
    assert partial["ours_holds"] == True  # noqa: E712
    assert partial["ours_status"] == "partial: FP"
    not_run = one("densenet_c100", "FP > Baseline")
    assert not_run["ours_holds"] is None and not_run["ours_status"] == "not run"
    # the paper itself: FP < GP in the WResNet / CIFAR-100 row ("generally perform worse")
    assert one("wrn_c100", "FP > GP")["paper_holds"] == False  # noqa: E712
    best = one("simplecnn_c10", "best of GPx, GP, FP, GPr")
    assert best["paper_best"] == "GPr" and best["ours_best"] == "FP" and best["ours_holds"] == False  # noqa: E712
    assert one("vgg11_c100", "best of GPx, GP, FP, GPr")["ours_holds"] is None  # GP missing, GPx diverged
    t6 = d[d["table"] == 6]
    assert t6["ours_holds"].isna().all() and (t6["ours_status"] == "not run").all()  # no table6 given


def test_markdown_shows_both_sides_and_every_status(tables):
    c = paper.paper_comparison(tables)
    d = paper.claim_directions(c)
    md = paper.comparison_markdown(c, d, note="Toy numbers.")
    assert md.startswith("# The paper's numbers beside ours\n\nToy numbers.\n")
    assert "| SimpleCNN / CIFAR-10 (w/o aug.) | FP | simplecnn_c10 | 79.66 | 80.50 ± 0.50 | +0.84 | ok |" in md
    assert "| VGG11 / CIFAR-100 (w/o aug.) | GPx | vgg11_c100 | 45.26 | no value | no value | diverged (all 2 runs diverged) |" in md
    assert "| DenseNet / C100 | η* | densenet_c100_aug | 74.41 ± 0.50 | no value | no value | not run (table2 is not made" in md
    assert "| 25% VGG-11 / CIFAR-100 | FP | vgg11_c100_noisy | 60.18 | 60.00 ± 0.00 | -0.18 | ok |" in md
    assert ("| VGG11 / CIFAR-100 (w/o aug.) | FP | vgg11_c100 | 49.87 | 80.00 | +30.13 | partial (1 of 2 runs "
            "diverged; the mean is over the others) |") in md  # one finished seed: no "±"
    assert "## Table 4: max Tr(F) along the trajectory (from epoch 1)" in md
    assert "| 1 | my_extra | SAM | 78.50 ± 0.50 | ok: the paper has no such cell |" in md
    assert "| 2 | FP > η* | 4/5 | 0/0 | 5 |" in md
    assert "| 1 | SimpleCNN / CIFAR-10 (w/o aug.) | FP > Baseline | yes | yes | ok |" in md


def test_a_config_without_the_papers_settings_runs_nothing_of_the_paper():
    """The demo: its settings mirror no paper row, so every published cell is "not run"."""
    runs = table1_runs().assign(setting="demo_digits").drop_duplicates(["role", "seed"])
    c = paper.paper_comparison({"table1": as_written(report.table1(runs))})
    published = c[c["status"] != "not in the paper"]
    assert len(published) == 174 and (published["status"] == "not run").all()
    assert set(c.loc[c["status"] == "not in the paper", "setting"]) == {"demo_digits"}
    assert paper.claim_directions(c)["ours_holds"].isna().all()


def test_write_paper_comparison(tables, tmp_path):
    out = paper.write_paper_comparison(tables, tmp_path / "c.md", tmp_path / "c.csv", tmp_path / "d.csv", "n")
    back = pd.read_csv(tmp_path / "c.csv")
    assert len(back) == len(out) and list(back.columns) == list(paper.COMPARISON_COLUMNS)
    assert len(pd.read_csv(tmp_path / "d.csv")) == len(paper.claim_directions(out))
    assert (tmp_path / "c.md").read_text().startswith("# The paper's numbers beside ours")


def test_bad_input_is_named(tables):
    with pytest.raises(TypeError, match="map names"):
        paper.paper_comparison([tables["table1"]])
    with pytest.raises(ValueError, match="unknown table 'table10'"):
        paper.paper_comparison({"table10": tables["table1"]})
    with pytest.raises(TypeError, match="table1 must be a pandas DataFrame"):
        paper.paper_comparison({"table1": "results/table1.csv"})
    with pytest.raises(ValueError, match="table3 has no 'label_noise' column"):
        paper.paper_comparison({"table3": tables["table1"]})
    with pytest.raises(ValueError, match="missing columns \\['value'"):
        paper.paper_comparison(tables, paper.paper_values().drop(columns="value"))
    claims = paper.paper_claims()
    with pytest.raises(ValueError, match="kind '<'"):
        paper.claim_directions(paper.paper_comparison(tables), claims.assign(kind="<"))
    with pytest.raises(ValueError, match="needs two columns"):
        paper.claim_directions(paper.paper_comparison(tables), claims.assign(kind=">", columns="FP;GP;GPr"))


@pytest.mark.slow
def test_the_demo_makes_the_comparison_with_every_published_cell_not_run(local_demo):
    results = local_demo / "results"
    c = pd.read_csv(results / "paper_comparison.csv")
    published = c[c["status"] != "not in the paper"]
    assert len(published) == 174 and (published["status"] == "not run").all()  # no demo row is a paper row
    extra = c[c["status"] == "not in the paper"]
    assert set(extra["setting"]) == {"demo_digits", "demo_noisy"} and extra["ours"].notna().any()
    assert pd.read_csv(results / "paper_directions.csv")["ours_holds"].isna().all()
    md = (results / "paper_comparison.md").read_text()
    assert "no setting of the demo is a setting of the paper" in md and "| 1 | demo_digits | FP |" in md

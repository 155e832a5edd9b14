"""The figure registry (fisherlab.report.registry): every figure of the paper is one entry;
on a synthetic run set laid out as the plan lays it out, each entry's data is a frame of
finite points with panel and series, written as results/<fig>.csv beside its PNG; the one
`figure` rule resolves every figure in dry runs of config.yaml and the demo."""

from __future__ import annotations

import json
import math
import os
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fisherlab.plan import build_plan, interventions as iv_plan
from fisherlab.plan.miniature import shrink
from fisherlab.report import registry
from test_plan import REPO, load

NAMES = [f"fig{i}" for i in range(1, 22)]


def mini_paper() -> dict:
    """config.yaml in miniature (every figure on, a few runs each), as common.smk shrinks it."""
    return shrink(load("configs/miniature.yaml"))


def test_the_registry_names_every_figure_with_a_caption_file():
    assert list(registry.FIGURES) == NAMES
    for name, entry in registry.FIGURES.items():
        assert entry.name == name and entry.caption
        assert (REPO / "workflow/report" / f"{name}.rst").read_text().strip(), name
    with pytest.raises(ValueError, match="no figure 'fig22'; the figures are fig1, fig2"):
        registry.figure("fig22")


def test_which_figures_each_config_turns_on():
    paper = load()
    assert registry.enabled(paper, build_plan(paper)) == NAMES  # Fig. 10 included
    small = mini_paper()
    assert registry.enabled(small, build_plan(small)) == NAMES
    demo = load("configs/demo.yaml")
    assert registry.enabled(demo, build_plan(demo)) == ["fig2", "fig3", "fig4", "fig5", "fig6", "fig7", "fig8", "fig9",
                                                        "fig12"]  # fmt: skip


def test_fig4_draws_the_papers_fig4_settings_and_fig10_the_others():
    paper = load()
    plan = build_plan(paper)
    assert registry.figure("fig4").what(paper, plan) == ["vgg11_c100", "wrn_c100"]
    assert registry.figure("fig10").what(paper, plan) == ["simplecnn_c10", "wrn_tinyimagenet", "densenet_c100"]
    settings = {f: {p.split("/")[2] for p in registry.inputs(f, paper, plan)} for f in ("fig4", "fig10")}
    assert settings["fig4"] == {"vgg11_c100", "wrn_c100"}
    assert settings["fig10"] == {"simplecnn_c10", "wrn_tinyimagenet", "densenet_c100"}
    demo = load("configs/demo.yaml")  # neither of the paper's: every Table 1 setting in Fig. 4, no Fig. 10
    dplan = build_plan(demo)
    assert registry.figure("fig4").what(demo, dplan) == demo["run_settings"]
    assert not registry.figure("fig10").what(demo, dplan)


# --------------------------------------------------------------------------- a synthetic run set


def _rng(path: str) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(path.encode()))


def write_run(run, epochs_default: int = 3) -> None:
    """A made-up run directory for ``run`` (a RunSpec) that passes the report's checks:
    summary.json (its plan labels and made-up results), metrics.csv (every epoch),
    curvature.csv (every half epoch, from 0) and, when it keeps weights,
    hessian_snapshots.csv."""
    d = Path(run.path)
    if (d / "summary.json").exists():
        return
    d.mkdir(parents=True)
    rng = _rng(run.id)
    cfg, labels = run.resolve(lambda name: {"value": 0.05})
    epochs = max(int(cfg.epochs or epochs_default), 2)
    acc = lambda: float(rng.uniform(0.3, 0.9))  # noqa: E731
    summary = {**run.reg_kwargs, **labels, "status": "ok", "seed": run.seed, "batch_size": cfg.batch_size,
               "final_train_acc": acc(), "final_test_acc": acc(), "final_val_acc": acc(), "best_val_acc": acc(),
               "test_acc_at_best_val": acc(), "max_trace_fisher": float(rng.uniform(1, 50)),
               "trace_fisher_i": float(rng.uniform(1, 50)), "trace_fisher_i_status": "ok",
               "best_test_acc": acc(), "best_train_acc_subset": acc(), "crossing_epoch": 1.0,
               "kept_best_value": acc(), "kept_best_epoch": 1}  # fmt: skip
    summary = {k: v for k, v in summary.items() if not isinstance(v, (dict, list))}
    (d / "summary.json").write_text(json.dumps(summary))
    e = np.arange(1, epochs + 1)
    metrics = {"epoch": e, "step": 10 * e}
    for col in ("val_acc", "test_acc", "train_acc_subset", "train_acc_clean_subset", "train_acc_noisy_subset"):
        metrics[col] = rng.uniform(0.2, 0.9, len(e))
    metrics |= {"train_loss_subset": rng.uniform(0.1, 2, len(e)), "grad_sq_norm_clean": rng.uniform(1, 2, len(e)),
                "grad_sq_norm_noisy": rng.uniform(1, 3, len(e)), "grad_cosine_clean_noisy": rng.uniform(-1, 1, len(e))}
    pd.DataFrame(metrics).to_csv(d / "metrics.csv", index=False)
    half = np.arange(0, 2 * epochs + 1) / 2
    pd.DataFrame({"step": (10 * half).astype(int), "epoch": half, "trace_fisher": rng.uniform(1, 50, len(half)),
                  "trace_fisher_batch": rng.uniform(1, 80, len(half)),
                  "train_acc_running": rng.uniform(0.1, 1, len(half))}).to_csv(d / "curvature.csv", index=False)  # fmt: skip
    if iv_plan.snapshot_runs([run]):
        kept = [int(k) for k in run.train.get("keep_epochs") or []]
        pd.DataFrame({"snapshot": [f"epoch{k}" for k in kept] + ["best"], "epoch": kept + [1],
                      "trace_hessian": rng.uniform(1, 100, len(kept) + 1)}).to_csv(d / iv_plan.SNAPSHOT_HESSIAN,
                                                                                    index=False)  # fmt: skip


@pytest.fixture(scope="module")
def run_set(tmp_path_factory):
    """config.yaml in miniature, and made-up files of every run a figure reads (cwd: the
    folder holding results/)."""
    root = tmp_path_factory.mktemp("figure_runs")
    config = mini_paper()
    plan = build_plan(config)
    old = os.getcwd()
    os.chdir(root)
    try:
        by_path = {r.path: r for r in plan.runs.values()}
        for name in NAMES:
            for p in registry.inputs(name, config, plan):
                write_run(by_path[os.path.dirname(p)])
    finally:
        os.chdir(old)
    return root, config, plan


@pytest.mark.parametrize("name", NAMES)
def test_each_figures_data_is_finite_points_by_panel_and_series(run_set, name, monkeypatch):
    root, config, plan = run_set
    monkeypatch.chdir(root)
    entry = registry.figure(name)
    frame = entry.data(registry.inputs(name, config, plan), registry.params(name, config, plan))
    assert list(frame.columns[:5]) == ["panel", "series", "x", "y", "err"]
    assert len(frame) and frame["panel"].notna().all() and frame["series"].notna().all()
    finite = registry.finite_points(frame)
    assert (finite > 0).all(), finite[finite == 0]


def test_make_writes_the_csv_beside_the_png(run_set, monkeypatch, tmp_path):
    """make: the points as results/<fig>.csv, and the PNG drawn from them (every figure is
    drawn by the slow miniature and demo runs; two cheap ones here)."""
    root, config, plan = run_set
    monkeypatch.chdir(root)
    for name in ("fig3", "fig6"):
        files, params = registry.inputs(name, config, plan), registry.params(name, config, plan)
        png, csv = tmp_path / f"{name}.png", tmp_path / f"{name}.csv"
        frame = registry.make(name, files, params, png, csv)
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
        back = pd.read_csv(csv)
        assert len(back) == len(frame) and list(back.columns) == list(frame.columns)
        assert np.allclose(back["y"].to_numpy(float), frame["y"].to_numpy(float), equal_nan=True)


def test_curves_round_trip_through_their_long_rows():
    m = pd.DataFrame({"epoch": [2, 1], "step": [20, 10], "val_acc": [0.5, 0.25]})
    c = pd.DataFrame({"step": [0, 5, 10], "epoch": [0.0, 0.5, 1.0], "trace_fisher": [1.0, math.nan, 3.0]})
    rows = registry.curve_rows("a", m, c, ["val_acc"], ["trace_fisher"])
    assert rows[rows["panel"] == "val_acc"]["y"].tolist() == [25.0, 50.0]  # as drawn: % and in step order
    (back_m, back_c), = registry.curves_of(rows).values()
    assert back_m[["epoch", "step", "val_acc"]].values.tolist() == [[1, 10, 0.25], [2, 20, 0.5]]
    assert back_c["trace_fisher"].tolist()[::2] == [1.0, 3.0] and math.isnan(back_c["trace_fisher"].iloc[1])
    with pytest.raises(ValueError, match="a: the metrics have no 'test_acc' column"):
        registry.curve_rows("a", m, c, ["test_acc"])


@pytest.mark.slow  # spawns Snakemake
def test_the_figure_rule_resolves_every_figure_of_the_demo():
    """`snakemake -n` of every figure the demo turns on: one job of the figure rule each,
    its PNG and CSV (config.yaml's 21: test_pipeline.py's dry run of the paper config)."""
    from test_pipeline import job_counts, snakemake

    demo = load("configs/demo.yaml")
    figs = registry.enabled(demo, build_plan(demo))
    proc = snakemake("-n", *[f"results/{f}.png" for f in figs], "--configfile", "configs/demo.yaml")
    assert job_counts(proc.stdout)["figure"] == len(figs) == 9
    for f in figs:
        assert f"results/{f}.png" in proc.stdout and f"results/{f}.csv" in proc.stdout, f


def test_a_run_without_rows_keeps_its_series_as_one_empty_point():
    """A run that diverged before its first measurement: its series is listed (and drawn
    empty, as the library draws an empty frame), with no finite point."""
    empty = pd.DataFrame(columns=["epoch", "step", "val_acc"])
    ok = pd.DataFrame({"epoch": [1, 2], "step": [10, 20], "val_acc": [0.25, 0.5]})
    rows = pd.concat([registry.curve_rows("diverged", empty, pd.DataFrame(), ["val_acc"]),
                      registry.curve_rows("ok", ok, pd.DataFrame(), ["val_acc"])], ignore_index=True)  # fmt: skip
    assert registry.finite_points(rows).to_dict() == {("val_acc", "diverged"): 0, ("val_acc", "ok"): 2}
    curves = registry.curves_of(rows)
    assert list(curves) == ["diverged", "ok"] and curves["diverged"][0]["val_acc"].isna().all()


def _direct(name, config, plan, png):
    """The library's drawing of figure ``name`` on frames read straight from the run files
    (as the per-figure scripts did before the registry): the reference for its round trip."""
    from fisherlab.report import DISPLAY_NAMES, fig4, fig5, load_summaries, read_curvature, read_metrics
    from fisherlab.report import early_phase as ep, interventions as iv

    runs = load_summaries(registry.summary_files(registry.inputs(name, config, plan)))
    params = registry.params(name, config, plan)
    pair = lambda d: (read_metrics(d), read_curvature(d))  # noqa: E731
    if name == "fig1":
        names = {"eta_star": "η*", "baseline": "small lr (Baseline)"}
        ep.fig1({f"{names[r['role']]}, lr {r['lr']:.3g}": pair(r["run_dir"]) for _, r in runs.iterrows()},
                params["what"], png)  # fmt: skip
    elif name == "fig4":
        settings = {}
        for _, r in runs.iterrows():
            settings.setdefault(r["setting"], {})[r["role"]] = pair(r["run_dir"])
        fig4(settings, png)
    elif name == "fig5":
        runs = runs.sort_values(["regularizer", "alpha"], na_position="first")
        drawn = [("Baseline" if r["regularizer"] == "none" else f"{DISPLAY_NAMES[r['regularizer']]} α={r['alpha']:g}",
                  None if r["regularizer"] == "none" else r["alpha"], read_metrics(r["run_dir"]))
                 for _, r in runs.iterrows()]  # fmt: skip
        drawn.sort(key=lambda run: run[1] is not None)  # the baseline first
        fig5(drawn, f"{params['what']}, {runs['label_noise'].iloc[0]:.0%} noisy labels", png)
    elif name == "fig16":
        table = iv.alpha_sweep_table(runs)
        iv.alpha_sweep_figure(table, {d: pair(d) for d in table["run_dir"]}, png,
                              title=f"fig16: {params['block']['setting']}")  # fmt: skip
    else:  # fig18
        ep.fig_per_iteration({f"{'lr' if r['axis'] == 'lr' else 'batch'} {r['value']:g}": pair(r["run_dir"])
                              for _, r in runs.iterrows()}, params["what"], png)  # fmt: skip


@pytest.mark.slow  # draws 10 figures (about 10 s on 2 busy cores)
@pytest.mark.parametrize("name", ["fig1", "fig4", "fig5", "fig16", "fig18"])
def test_the_drawing_from_the_frame_is_the_librarys_drawing_from_the_run_files(run_set, name, monkeypatch, tmp_path):
    """Pixel for pixel: the curves go into the CSV's long rows and back without a change
    (checked once for all 21 figures when the registry was written)."""
    from matplotlib.image import imread

    root, config, plan = run_set
    monkeypatch.chdir(root)
    _direct(name, config, plan, tmp_path / "direct.png")
    files, params = registry.inputs(name, config, plan), registry.params(name, config, plan)
    registry.make(name, files, params, tmp_path / "registry.png", tmp_path / "registry.csv")
    assert np.array_equal(imread(tmp_path / "direct.png"), imread(tmp_path / "registry.png"))

"""Section 3's claim at CPU scale on real CIFAR-10 images (../shared/data), through the
pipeline (configs/cifar10-subset-sweeps.yaml, every run stopped at its crossing):
Tr(F_i), the Tr(F) at which the training loss first falls below epsilon, falls as the
learning rate rises (three lrs spanning 10x, for each of two seeds) and rises with the
batch size (three batch sizes spanning 16x)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from test_pipeline import REPO, copy_workflow, snakemake

SHARED = Path(os.environ.get("FISHERLAB_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "cifar10-subset-train.npz").exists(), reason="no CIFAR-10 subset")
def test_tr_fi_falls_with_the_lr_and_rises_with_the_batch_size(tmp_path):
    copy_workflow(tmp_path)
    overlay = yaml.safe_load((REPO / "configs/cifar10-subset-sweeps.yaml").read_text())
    overlay["data"]["local"]["cifar10_subset"] = {
        "train": str(SHARED / "cifar10-subset-train.npz"),
        "test": str(SHARED / "cifar10-subset-test.npz"),
    }
    overlay["forkserver"] = True  # 9 jobs: torch imported once (fisherlab.forkserver)
    (tmp_path / "overlay.yaml").write_text(yaml.safe_dump(overlay))
    # the longest runs first (lr 0.003 and batch 512 take the most steps to cross), so that
    # the last run does not train alone on one of the two cores
    first = [f"results/runs/sweeps/{run}/summary.json"
             for run in ("subset_bs/bs512/seed0", "subset_lr/lr0.003/seed0", "subset_lr/lr0.003/seed1")]  # fmt: skip
    t0 = time.perf_counter()
    snakemake("results/early_phase.csv", "--configfile", "overlay.yaml", "--cores", "2", "--prioritize", *first,
              cwd=tmp_path)  # fmt: skip
    for path in first:
        assert (tmp_path / path).exists(), f"{path}: not a run of the sweeps (their paths changed?)"
    table = pd.read_csv(tmp_path / "results/early_phase.csv")
    runs = pd.concat([pd.read_json(p, typ="series").to_frame().T
                      for p in (tmp_path / "results/runs/sweeps").rglob("summary.json")])  # fmt: skip
    runs = runs.astype({"value": float, "seed": int, "trace_fisher_i": float, "crossing_epoch": float})
    print(f"\n{time.perf_counter() - t0:.0f} s")
    print(runs.sort_values(["sweep", "seed", "value"])[["sweep", "seed", "value", "trace_fisher_i",
                                                        "crossing_epoch", "steps"]].to_string(index=False))  # fmt: skip
    print(table[["sweep", "value", "trace_fisher_i", "spearman", "kendall"]].to_string(index=False))
    assert (runs["status"] == "ok").all() and (runs["trace_fisher_i_status"] != "not reached").all()
    lr = runs[runs["sweep"] == "subset_lr"]
    for seed, g in lr.groupby("seed"):
        fi = g.sort_values("value")["trace_fisher_i"].tolist()
        assert len(fi) == 3 and fi[0] > fi[1] > fi[2], f"seed {seed}: Tr(F_i) at lr 0.003, 0.01, 0.03 = {fi}"
    bs = runs[runs["sweep"] == "subset_bs"].sort_values("value")["trace_fisher_i"].tolist()
    assert len(bs) == 3 and bs[0] < bs[1] < bs[2], f"Tr(F_i) at batch 32, 128, 512 = {bs}"

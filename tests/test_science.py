"""The paper's mechanism at CPU scale on real CIFAR-10 images (../shared/data), through
the pipeline: at a matched training loss (Tr(F_i), Section 3), the small-lr baseline
has a larger Tr(F) than eta*, and the Fisher penalty at the small lr brings it down."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import yaml

from test_pipeline import REPO, copy_workflow, snakemake

SHARED = Path(os.environ.get("FISHERLAB_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "cifar10-subset-train.npz").exists(), reason="no CIFAR-10 subset")
def test_small_lr_explodes_tr_f_and_fp_brings_it_down(tmp_path):
    copy_workflow(tmp_path)
    overlay = yaml.safe_load((REPO / "configs/cifar10-subset.yaml").read_text())
    overlay["data"]["local"]["cifar10_subset"] = {
        "train": str(SHARED / "cifar10-subset-train.npz"),
        "test": str(SHARED / "cifar10-subset-test.npz"),
    }
    (tmp_path / "overlay.yaml").write_text(yaml.safe_dump(overlay))
    t0 = time.perf_counter()
    snakemake("--configfile", "overlay.yaml", "--cores", "2", "results/table4.csv", cwd=tmp_path)
    runs = tmp_path / "results/runs/subset_simplecnn/final"
    s = {role: json.loads((runs / role / "seed0/summary.json").read_text())
         for role in ("eta_star", "baseline", "fp")}  # fmt: skip
    fisher_i = {role: v["trace_fisher_i"] for role, v in s.items()}
    print(f"{time.perf_counter() - t0:.0f} s; epsilon {s['fp']['epsilon']}; Tr(F_i) {fisher_i}; "
          f"train acc { {r: v['final_train_acc'] for r, v in s.items()} }")  # fmt: skip
    assert all(v["status"] == "ok" for v in s.values())
    assert all(v is not None for v in fisher_i.values()), "a run never reached epsilon"
    assert fisher_i["baseline"] > 1.5 * fisher_i["eta_star"]
    assert fisher_i["fp"] < fisher_i["baseline"]

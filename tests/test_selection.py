"""fisherlab.runs.selection, the one owner of the selection files: made, written, read back,
and the chosen grid run adopted (copied atomically under the selected run's names)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from fisherlab.runs.selection import SelectionError, adopt, decide, read_selection, write_selection


def grid(tmp_path):
    runs = []
    for lr, acc in [(0.01, 0.5), (0.03, 0.7), (0.1, 0.6)]:
        d = tmp_path / f"lr{lr}"
        d.mkdir()
        (d / "summary.json").write_text(json.dumps({"lr": lr}))
        (d / "metrics.csv").write_text(f"epoch,lr\n1,{lr}\n")
        runs.append({"lr": lr, "best_val_acc": acc, "status": "ok", "run_dir": str(d)})
    return pd.DataFrame(runs)


def test_a_selection_is_decided_written_read_and_adopted(tmp_path):
    choice = decide("lr", None, grid(tmp_path))
    assert choice == {"key": "lr", "value": 0.03, "source": "search", "run_dir": str(tmp_path / "lr0.03"),
                      "grid": [0.01, 0.03, 0.1]}  # fmt: skip
    path = tmp_path / "selection/lr_star.json"
    write_selection(path, choice)
    assert read_selection(path) == choice
    out = {"summary": tmp_path / "final/summary.json", "metrics": tmp_path / "final/metrics.csv"}
    copied = adopt(path, out)
    assert [d for _, d in copied] == list(out.values())
    assert json.loads(out["summary"].read_text()) == {"lr": 0.03}
    assert out["metrics"].read_text() == "epoch,lr\n1,0.03\n"
    assert not list((tmp_path / "final").glob("*.tmp"))  # no temporary file left behind


def test_a_fixed_value_skips_the_search_and_a_broken_file_is_named(tmp_path):
    assert decide("alpha", 0.01) == {"key": "alpha", "value": 0.01, "source": "config", "run_dir": None, "grid": []}
    bad = tmp_path / "alpha_star.json"
    bad.write_text('{"key": "alpha", "source": "config"}')
    with pytest.raises(SelectionError, match="alpha_star.json lacks"):
        adopt(bad, {"summary": tmp_path / "x/summary.json"})

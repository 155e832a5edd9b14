"""One owner per on-disk format of a run (issue 23 item 2): fisherlab.runs.rundir.RunDir names
every file of a run directory and reads and writes it; no run file name is written as a
string anywhere else in src/ or workflow/ (docstrings and comments excepted)."""

from __future__ import annotations

import ast
import io
import json
import math
import re
import tokenize
from pathlib import Path

import pandas as pd
import pytest

from fisherlab.hessian import HESSIAN_JSON, SNAPSHOT_HESSIAN
from fisherlab.plan import CHECKPOINTS, RUNS, RunSpec, summaries
from fisherlab.runs.rundir import RunDir, json_safe, rows_to_csv

REPO = Path(__file__).resolve().parents[1]
# RunDir reuses the names of the Tr(H) spec and of runlock (which a test loads as a lone file)
OWNERS = {REPO / "src/fisherlab/runs/rundir.py", REPO / "src/fisherlab/hessian/spec.py",
          REPO / "src/fisherlab/runs/runlock.py"}

# =========================================================================== the layout


def test_a_pipeline_run_has_the_paths_the_rules_always_wrote():
    run = RunDir.of("simplecnn_c10/final/fp/seed0")
    base = "results/runs/simplecnn_c10/final/fp/seed0"
    assert (RUNS, CHECKPOINTS) == ("results/runs", "results/checkpoints")
    assert run.path == base
    assert run.summary == f"{base}/summary.json"
    assert run.metrics == f"{base}/metrics.csv"
    assert run.curvature == f"{base}/curvature.csv"
    assert run.model == f"{base}/model.pt"
    assert run.checkpoint == "results/checkpoints/simplecnn_c10/final/fp/seed0/checkpoint.pt"
    assert run.snapshots == f"{base}/snapshots"
    assert run.snapshots_identity == f"{base}/snapshots.identity.json"
    assert run.snapshot(RunDir.snapshot_key(0)) == f"{base}/snapshots/epoch0.pt"
    assert run.snapshot(RunDir.BEST_KEY) == f"{base}/snapshots/{RunDir.BEST}" == f"{base}/snapshots/best.pt"
    assert RunDir.snapshot_name(12) == "epoch12.pt"
    assert run.hessian == f"{base}/{HESSIAN_JSON}" == f"{base}/hessian.json"
    assert run.hessian_snapshots == f"{base}/{SNAPSHOT_HESSIAN}" == f"{base}/hessian_snapshots.csv"
    assert run.lock == f"{base}/train.lock"
    assert run.tensorboard == f"{base}/tensorboard"
    # the rules' wildcard paths, character for character as the .smk files spelled them
    wild = RunDir.of("{run}")
    assert wild.outputs() == {"summary": "results/runs/{run}/summary.json", "metrics": "results/runs/{run}/metrics.csv",
                              "curvature": "results/runs/{run}/curvature.csv", "model": "results/runs/{run}/model.pt"}
    assert list(wild.outputs()) == ["summary", "metrics", "curvature", "model"]  # the rule's output order
    logs = [wild.file(n) for n in (RunDir.TRAIN_LOG, RunDir.TRAIN_BENCHMARK, RunDir.ADOPT_LOG, RunDir.HESSIAN_LOG,
                                   RunDir.HESSIAN_BENCHMARK, RunDir.HESSIAN_SNAPSHOTS_LOG,
                                   RunDir.HESSIAN_SNAPSHOTS_BENCHMARK)]  # fmt: skip
    assert logs == ["results/runs/{run}/train.log", "results/runs/{run}/benchmark.tsv", "results/runs/{run}/adopt.log",
                    "results/runs/{run}/hessian.log", "results/runs/{run}/hessian-benchmark.tsv",
                    "results/runs/{run}/hessian_snapshots.log", "results/runs/{run}/hessian_snapshots-benchmark.tsv"]


def test_a_run_outside_the_pipeline_keeps_its_checkpoint_inside(tmp_path):
    run = RunDir(tmp_path / "lr0.1")
    assert isinstance(run.path, str) and run.path == str(tmp_path / "lr0.1")
    assert run.checkpoint == f"{tmp_path}/lr0.1/checkpoint.pt"
    assert RunDir("a", state="b").checkpoint == "b/checkpoint.pt"


def test_the_plan_names_its_runs_files_through_rundir():
    spec = RunSpec(id="s/final/fp/seed0", family="f", seed=0, train={}, lr=0.1)
    assert spec.dir == RunDir.of(spec.id)
    assert spec.summary() == spec.dir.summary and spec.checkpoint == spec.dir.checkpoint
    assert summaries([spec], RunDir.HESSIAN) == ["results/runs/s/final/fp/seed0/hessian.json"]


def test_bad_input_is_refused():
    with pytest.raises(TypeError, match="RunDir path must be a str or os.PathLike, got int"):
        RunDir(3)
    with pytest.raises(TypeError, match="RunDir state must be"):
        RunDir("a", state=1.5)
    for bad in (-1, 1.0, True, "3"):
        with pytest.raises(ValueError, match="an epoch is an int >= 0"):
            RunDir.snapshot_key(bad)
    assert RunDir.is_summary("x/summary.json") and not RunDir.is_summary("x/summary.json.bak")


# =========================================================================== reading and writing


def test_the_files_are_written_as_before(tmp_path):
    """Byte for byte the old writers' formats: csv.DictWriter rows, indented JSON with
    NaN and infinities as null."""
    run = RunDir(tmp_path)
    rows = [{"epoch": 1, "step": 6, "train_loss": 0.5}, {"epoch": 2, "step": 12, "val_acc": 0.25}]
    run.write_metrics(rows)
    run.write_curvature(rows[:1])
    assert Path(run.metrics).read_text() == "epoch,step,train_loss,val_acc\n1,6,0.5,\n2,12,,0.25\n"
    assert Path(run.curvature).read_text() == "epoch,step,train_loss\n1,6,0.5\n"
    summary = {"status": "ok", "loss": math.nan, "max": math.inf, "nested": {"x": [1.0, -math.inf]}}
    run.write_summary(summary)
    expected = '{\n  "status": "ok",\n  "loss": null,\n  "max": null,\n  "nested": {\n    "x": [\n      1.0,\n      null\n    ]\n  }\n}\n'
    assert Path(run.summary).read_text() == expected == json.dumps(json_safe(summary), indent=2) + "\n"
    assert run.read_summary() == {"status": "ok", "loss": None, "max": None, "nested": {"x": [1.0, None]}}
    run.write_hessian({"trace_hessian": math.nan, "status": "diverged"})
    assert json.loads(Path(run.hessian).read_text()) == {"trace_hessian": None, "status": "diverged"}
    assert rows_to_csv([]) == ""


def test_the_hessian_snapshots_round_trip(tmp_path):
    run = RunDir(tmp_path)
    rows = [{"snapshot": "epoch0", "epoch": 0, "trace_hessian": 12.5, "status": "ok"},
            {"snapshot": "best", "epoch": 3, "trace_hessian": None, "status": "missing"}]
    run.write_hessian_snapshots(rows)
    assert Path(run.hessian_snapshots).read_text() == pd.DataFrame(rows).to_csv(index=False)
    back = run.read_hessian_snapshots()
    assert back["snapshot"].tolist() == ["epoch0", "best"] and math.isnan(back["trace_hessian"][1])


# =========================================================================== one owner of the names

#: Every file name of a run: those with a dot are distinctive enough to look for anywhere,
#: a bare folder name only as a path part; the jobs' logs and benchmark files (whose names
#: other logs share: results/logs/report/hessian.log) as any file under a {run} wildcard.
_LOGS = {k for k in vars(RunDir) if k.endswith(("_LOG", "_BENCHMARK"))}
_NAMES = [v for k, v in vars(RunDir).items() if k.isupper() and isinstance(v, str) and k != "BEST_KEY"
          and k not in _LOGS]  # fmt: skip
_DOTTED = re.compile(r"(?<![\w.-])(" + "|".join(re.escape(n) for n in _NAMES if "." in n) + r")(?![\w-])")
_BARE = "|".join(re.escape(n) for n in _NAMES if "." not in n)
# a folder as a path part, or a whole string; "tensorboard" alone is also the config key that turns it on
_FOLDERS = re.compile(rf"(?<![\w.-])({_BARE})/|/({_BARE})(?![\w.-])|^(?!{re.escape(RunDir.TENSORBOARD)}$)({_BARE})$")
_UNDER_RUN = re.compile(r"\{\{?run\}\}?/[\w.-]+")  # a literal file under a rule's {run} wildcard


def _named(text: str) -> set[str]:
    return {m.group(0) for rx in (_DOTTED, _FOLDERS, _UNDER_RUN) for m in rx.finditer(text)}


def _python_literals(source: str) -> set[str]:
    """The run file names in the string constants of Python source, docstrings excepted;
    an f-string building a weights file (``f"epoch{e}.pt"``, ``f"{key}.pt"``) as
    ``epoch{}.pt`` / ``{}.pt``."""
    tree = ast.parse(source)
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n.body
            and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}  # fmt: skip
    found = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs:
            found |= _named(n.value)
        if isinstance(n, ast.JoinedStr):
            parts = ["{}" if isinstance(v, ast.FormattedValue) else v.value for v in n.values]
            joined = "".join(parts)
            found |= {m.group(0) for m in re.finditer(r"(epoch)?\{\}\.pt\b", joined)}
    return found


def _rule_literals(source: str) -> set[str]:
    """The run file names in a Snakefile / .smk file, comments and docstrings excepted."""
    lines = source.splitlines(keepends=True)
    for tok in reversed(list(tokenize.generate_tokens(io.StringIO(source).readline))):
        if tok.type == tokenize.COMMENT:
            (row, col) = tok.start
            lines[row - 1] = lines[row - 1][:col] + "\n"
    code = re.sub(r'"""(.|\n)*?"""', "", "".join(lines))
    return _named(code)


def test_the_detector_finds_what_it_must():
    src = '''"""docstring: summary.json, snapshots/epoch<E>.pt"""
import os
A = "metrics.csv"  # comment: curvature.csv
B = f"{out}/{name}/checkpoint.pt"
C = f"epoch{e}.pt"
D = os.path.join(d, "snapshots")
E = f"{RUNS}/{{run}}/train.log"
F = "trace_hessian_snapshots"
G = f"snapshots {folder} cannot be used"
H = config["tensorboard"], "tensorboard/events"
def f():
    """model.pt"""
    return "x/best.pt", f"{k}.pt"
'''
    assert _python_literals(src) == {"metrics.csv", "checkpoint.pt", "epoch{}.pt", "snapshots", "{run}/train.log",
                                     "best.pt", "{}.pt", "tensorboard/"}  # fmt: skip
    smk = 'rule a:\n    input:\n        "results/runs/{run}/summary.json",  # model.pt\n    log:\n' \
          '        f"{RUNS}/{{run}}/hessian.log",\n    script: "../scripts/trace_hessian_snapshots.py"\n'
    assert _rule_literals(smk) == {"summary.json", "{run}/summary.json", "{{run}}/hessian.log"}


def test_no_run_file_is_named_outside_rundir():
    code = [*REPO.glob("src/fisherlab/**/*.py"), *REPO.glob("workflow/scripts/*.py")]
    named = {}
    for p in code:
        if p in OWNERS:
            continue
        found = _python_literals(p.read_text())
        if found:
            named[str(p.relative_to(REPO))] = sorted(found)
    for p in [REPO / "Snakefile", *REPO.glob("workflow/rules/*.smk")]:
        found = _rule_literals(p.read_text())
        if found:
            named[str(p.relative_to(REPO))] = sorted(found)
    assert named == {}
    # the owner itself names them
    assert {"summary.json", "metrics.csv", "curvature.csv", "model.pt"} <= _python_literals(
        (REPO / "src/fisherlab/runs/rundir.py").read_text())

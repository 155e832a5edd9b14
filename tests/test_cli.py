"""The ``fisherlab`` command: ``trace`` of saved weights against a brute-force reference,
its errors, ``--version``, and the console script's declaration."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fisherlab import TrainConfig, build_model, make_synthetic, save_dataset, trace_fisher, trace_hessian
from fisherlab.cli import main

ROOT = Path(__file__).resolve().parents[1]
CLASSES, SIZE, N, VAL = 4, 16, 60, 8


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory as the pipeline writes it (model.pt and a summary.json whose
    ``config`` names the architecture), and a prepared training file."""
    root = tmp_path_factory.mktemp("cli")
    save_dataset(root / "train.npz", make_synthetic(N, num_classes=CLASSES, image_size=SIZE, seed=3))
    torch.manual_seed(0)
    model = build_model("simple_cnn", num_classes=CLASSES, image_size=SIZE)
    (root / "run" / "snapshots").mkdir(parents=True)
    torch.save(model.state_dict(), root / "run" / "model.pt")
    torch.save(model.state_dict(), root / "run" / "snapshots" / "epoch0.pt")
    cfg = TrainConfig(model="simple_cnn", model_kwargs={"image_size": SIZE})
    (root / "run" / "summary.json").write_text(json.dumps({"status": "ok", "config": cfg.to_dict()}))
    return root


def reference_examples(path: Path, val_size: int, examples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The measured examples, recomputed with numpy alone: the validation split set aside
    by a seeded permutation, float64 channel statistics of the rest, ``examples`` drawn."""
    with np.load(path) as f:
        x, y = f["x"], f["y"]
    keep = np.sort(np.random.default_rng(0).permutation(len(x))[val_size:])
    x, y = x[keep], y[keep]
    scaled = x.astype(np.float64) / 255.0
    mean, std = scaled.mean(axis=(0, 1, 2)), scaled.std(axis=(0, 1, 2))
    idx = np.sort(np.random.default_rng(seed).choice(len(x), min(examples, len(x)), replace=False))
    xn = ((scaled[idx] - mean) / std).transpose(0, 3, 1, 2)
    return torch.tensor(xn, dtype=torch.float32), torch.tensor(y[idx])


def brute_force_exact_fisher(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Per example, sum_c p(c|x) ||grad_theta log p(c|x)||^2: one backward pass per example and class."""
    params = [p for p in model.parameters() if p.requires_grad]
    out = []
    model.eval()
    for xi in x:
        logits = model(xi[None])
        probs = logits.softmax(-1)[0].detach()
        total = 0.0
        for c in range(logits.shape[1]):
            loss = F.cross_entropy(logits, torch.tensor([c]))
            grads = torch.autograd.grad(loss, params, retain_graph=True)
            total += probs[c].item() * sum(g.double().pow(2).sum().item() for g in grads)
        out.append(total)
    return torch.tensor(out, dtype=torch.float64)


def trace_json(capsys, *args: str) -> dict:
    main(["trace", *args, "--json"])
    return json.loads(capsys.readouterr().out)


def test_trace_exact_matches_a_brute_force_loop(run_dir, capsys):
    """The exact Tr(F) of the run's weights (architecture read from its summary.json) on
    the training split left after --val-size, against per-example per-class backward passes
    on examples normalised independently in numpy."""
    out = trace_json(capsys, "--weights", str(run_dir / "run" / "model.pt"), "--data", str(run_dir / "train.npz"),
                     "--val-size", str(VAL), "--examples", "20", "--seed", "5", "--exact", "--device", "cpu")
    assert (out["model"], out["model_kwargs"], out["examples"], out["labels"]) == ("simple_cnn", {"image_size": SIZE},
                                                                                    20, "exact")
    model = build_model("simple_cnn", num_classes=CLASSES, image_size=SIZE)
    model.load_state_dict(torch.load(run_dir / "run" / "model.pt", weights_only=True))
    x, _ = reference_examples(run_dir / "train.npz", VAL, 20, seed=5)
    per = brute_force_exact_fisher(model, x)
    assert out["trace_fisher"] == pytest.approx(per.mean().item(), rel=1e-4)
    assert out["trace_fisher_stderr"] == pytest.approx(per.std().item() / math.sqrt(len(per)), rel=1e-3)


def test_trace_sampled_and_hessian_measure_the_same_examples(run_dir, capsys):
    """Sampled-label Tr(F) and Tr(H) of a snapshot (its run's summary.json one level up) are
    the library's estimators on the same examples with the same seed; --examples beyond the
    split measures the whole split."""
    out = trace_json(capsys, "--weights", str(run_dir / "run" / "snapshots" / "epoch0.pt"), "--data",
                     str(run_dir / "train.npz"), "--examples", "1000", "--hessian", "--probes", "3", "--device", "cpu")
    assert out["examples"] == N and out["probes"] == 3
    model = build_model("simple_cnn", num_classes=CLASSES, image_size=SIZE)
    model.load_state_dict(torch.load(run_dir / "run" / "model.pt", weights_only=True))
    x, y = reference_examples(run_dir / "train.npz", 0, 1000, seed=0)
    per = trace_fisher(model, x, generator=0, return_per_example=True).double()
    assert out["trace_fisher"] == pytest.approx(per.mean().item(), rel=1e-4)
    assert out["trace_fisher_stderr"] == pytest.approx(per.std().item() / math.sqrt(N), rel=1e-3)
    est = trace_hessian(model, x, y, num_probes=3, generator=0)
    assert out["trace_hessian"] == pytest.approx(est.estimate, rel=1e-3, abs=1e-3)
    assert out["trace_hessian_stderr"] == pytest.approx(est.stderr, rel=1e-3, abs=1e-3)


@pytest.mark.slow  # a fresh interpreter imports torch (~5-13 s)
def test_the_command_runs_as_python_m_fisherlab(run_dir):
    """``python -m fisherlab trace`` in a fresh interpreter prints value +- stderr lines."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "fisherlab", "trace", "--weights", str(run_dir / "run" / "model.pt"),
                          "--data", str(run_dir / "train.npz"), "--examples", "10", "--hessian", "--probes", "2"],
                         capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("Tr(F) = ") and " +- " in lines[0] and "10 examples" in lines[0], out.stdout
    assert lines[1].startswith("Tr(H) = ") and "2 Rademacher probes" in lines[1], out.stdout
    assert float(lines[0].split()[2]) > 0


def test_version_and_help(capsys):
    from fisherlab import __version__

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"fisherlab {__version__}"
    with pytest.raises(SystemExit) as e:
        main(["trace", "--help"])
    text = capsys.readouterr().out
    assert e.value.code == 0 and all(f"--{a}" in text for a in ("weights", "data", "examples", "hessian", "model"))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--weights", "{tmp}/nothing.pt", "--data", "{root}/train.npz"], "no such file"),
        (["--weights", "{tmp}/lone.pt", "--data", "{root}/train.npz"], "name the architecture with --model"),
        (["--weights", "{tmp}/lone.pt", "--data", "{root}/train.npz", "--model", "simple_cnn"],
         "not a state_dict of simple_cnn"),
        (["--weights", "{tmp}/lone.pt", "--data", "{root}/train.npz", "--model", "vgg99"], "unknown model 'vgg99'"),
        (["--weights", "{root}/run/model.pt", "--data", "{tmp}/missing.npz"], "missing.npz"),
        (["--weights", "{root}/run/model.pt", "--data", "{root}/train.npz", "--val-size", "60"], "--val-size 60"),
        (["--weights", "{root}/run/model.pt", "--data", "{root}/train.npz", "--val-size", "-1"], "--val-size"),
    ],
)
def test_bad_inputs_are_named(run_dir, tmp_path, capsys, args, message):
    torch.save(build_model("simple_cnn", num_classes=CLASSES, image_size=SIZE).state_dict(), tmp_path / "lone.pt")
    args = [a.format(tmp=tmp_path, root=run_dir) for a in args]
    with pytest.raises(SystemExit) as e:
        main(["trace", *args, "--device", "cpu"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err, err


@pytest.mark.parametrize("args", [["--examples", "0"], ["--probes", "x"], ["--model-kwargs", "[1]"],
                                  ["--model-kwargs", "{nope"]])  # fmt: skip
def test_bad_arguments_are_refused_by_the_parser(run_dir, capsys, args):
    with pytest.raises(SystemExit) as e:
        main(["trace", "--weights", str(run_dir / "run" / "model.pt"), "--data", str(run_dir / "train.npz"), *args])
    assert e.value.code == 2 and "error: argument" in capsys.readouterr().err


def test_the_console_script_is_declared():
    """pyproject.toml declares ``fisherlab = fisherlab.cli:main``; the installed
    distribution declares the same once it has been (re)installed from this checkout."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"fisherlab": "fisherlab.cli:main"}
    module, _, attr = scripts["fisherlab"].partition(":")
    assert getattr(__import__(module, fromlist=[attr]), attr) is main
    installed = [ep for ep in metadata.entry_points(group="console_scripts") if ep.name == "fisherlab"]
    assert all(ep.value == scripts["fisherlab"] for ep in installed)

"""The ``fisherlab`` command (also ``python -m fisherlab``).

``fisherlab demo``
    the paper's core finding at laptop scale, offline: SimpleCNN on the synthetic data
    set trained at a learning rate eta, at eta/10 (the paper's small-lr baseline,
    Section 4) and at eta/10 with the Fisher penalty (Eq. 3). Each run writes
    metrics.csv, curvature.csv and summary.json under --out, and a table of test
    accuracy and Tr(F) is printed at the end.

``fisherlab trace``
    Tr(F) (Eq. 2), and with --hessian Tr(H) (Hutchinson, Supplement B), of saved
    weights on examples of a prepared data set (the canonical ``.npz``), each printed
    as value +- standard error.

``fisherlab --version``
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._version import __version__
from .hessian.spec import HessianSpec
from .runs.rundir import RunDir

_HESSIAN = HessianSpec()  # the default number of probes of Tr(H), as the pipeline's


def demo(out: str, epochs: int, lr: float, alpha: float, n_train: int, device: str) -> None:
    """Three short SimpleCNN runs on synthetic data; see the module docstring."""
    from . import TrainConfig, train
    from .data import make_synthetic
    from .experiment import to_device
    from .runs.runio import write_run

    data = to_device(
        make_synthetic(n_train, seed=0, split="train"),
        make_synthetic(n_train // 4, seed=0, split="val"),
        make_synthetic(n_train // 4, seed=0, split="test"),
        device=device,
    )
    runs = {
        f"lr{lr:g}": TrainConfig(lr=lr),
        f"lr{lr / 10:g}": TrainConfig(lr=lr / 10),
        f"lr{lr / 10:g}-fp{alpha:g}": TrainConfig(lr=lr / 10, regularizer="fp",
                                                   regularizer_kwargs={"alpha": alpha}),
    }  # fmt: skip
    table = []
    for name, cfg in runs.items():
        cfg.epochs, cfg.fisher_every, cfg.fisher_examples, cfg.device = epochs, 10, 256, device
        print(f"== {name}")
        t0 = time.perf_counter()
        result = train(cfg, data, checkpoint=RunDir(f"{out}/{name}").checkpoint, log=print)
        write_run(result, f"{out}/{name}", wall_seconds=time.perf_counter() - t0)
        s = result.summary
        table.append((name, s["status"], s["final_train_acc"], s["test_acc_at_best_val"],
                      s["max_trace_fisher"]))  # fmt: skip
    print(f"\n{'run':22s} {'status':8s} {'train acc':>9s} {'test acc':>9s} {'max Tr(F)':>10s}")
    for name, status, tr, te, fisher in table:
        print(f"{name:22s} {status:8s} {tr:9.3f} {te:9.3f} {fisher:10.4g}")
    print(f"\noutputs: {out}/<run>/{{{RunDir.METRICS},{RunDir.CURVATURE},{RunDir.SUMMARY}}}")


# --- fisherlab trace ---------------------------------------------------------------------------


class CommandError(Exception):
    """A problem with the command's inputs, reported as one line (exit status 2)."""


def run_config(weights: Path) -> tuple[dict[str, Any], Path] | None:
    """The resolved training config of the run that wrote ``weights``: the ``config`` of
    the ``summary.json`` beside it (``<run>/model.pt``) or one level up
    (``<run>/snapshots/<name>.pt``); None when there is none."""
    for folder in (weights.parent, weights.parent.parent):
        path = Path(RunDir(folder).summary)
        if path.is_file():
            try:
                config = json.loads(path.read_text()).get("config")
            except (OSError, ValueError) as e:
                raise CommandError(f"{path}: not a readable {RunDir.SUMMARY} ({e})") from e
            if isinstance(config, dict) and "model" in config:
                return config, path
    return None


def measurement_examples(n: int, examples: int, seed: int) -> np.ndarray:
    """``min(examples, n)`` distinct indices of the split, sorted, drawn with
    ``numpy.random.default_rng(seed)`` (as :func:`fisherlab.hessian.trace_hessian_of_weights`
    draws its examples with seed 0)."""
    k = min(examples, n)
    return np.sort(np.random.default_rng(seed).choice(n, k, replace=False))


def measure(
    weights: str | Path,
    data: str | Path,
    *,
    model: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
    examples: int = 1000,
    val_size: int = 0,
    split_seed: int = 0,
    seed: int = 0,
    exact: bool = False,
    hessian: bool = False,
    probes: int = _HESSIAN.num_probes,
    device: str = "auto",
) -> dict[str, Any]:
    """Tr(F) (and with ``hessian`` Tr(H)) of the state_dict in ``weights`` on examples of
    the data set file ``data``, as the pipeline measures them.

    The model is ``model`` with ``model_kwargs``, or else the run's own (the ``config`` of
    the run's summary.json, :func:`run_config`). Of the file, a validation split of
    ``val_size`` examples is set aside first (``split_seed``; pass the run's ``val_size``
    to reproduce the pipeline's training split), the rest is normalised with its own
    channel statistics (as in training) and ``examples`` of it are drawn
    (:func:`measurement_examples`).

    - Tr(F) = mean over the examples of ||grad_theta log p(yhat|x)||^2 with yhat sampled
      from the model (``exact``: every class, weighted by p(y|x)), Eq. 2;
      its standard error is the standard deviation of the per-example values / sqrt(N).
    - Tr(H): Hutchinson with ``probes`` Rademacher probes on the mean cross-entropy loss
      of the examples with the file's labels (Supplement B); its standard error is over
      the probes.
    """
    from .curvature import trace_fisher, trace_hessian
    from .data import load_dataset, split_validation
    from .experiment import resolve_device, to_device
    from .models import MODELS, build_model

    weights, data = Path(weights), Path(data)
    for name, value, low in (("examples", examples, 1), ("probes", probes, 1), ("val_size", val_size, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise CommandError(f"--{name.replace('_', '-')} must be an integer >= {low}, got {value!r}")
    if hessian and probes < 2:
        raise CommandError("--probes must be >= 2 for a standard error of Tr(H)")
    if not weights.is_file():
        raise CommandError(f"--weights {weights}: no such file")
    source = "--model"
    if model is None:
        found = run_config(weights)
        if found is None:
            raise CommandError(f"no {RunDir.SUMMARY} with a config beside {weights} or one level up: "
                               f"name the architecture with --model (one of {sorted(MODELS)})")  # fmt: skip
        config, where = found
        model, source = config["model"], str(where)
        model_kwargs = {**config.get("model_kwargs", {}), **(model_kwargs or {})}
    model_kwargs = model_kwargs or {}

    full = load_dataset(data)  # raises DatasetFormatError naming the file
    if val_size >= len(full):
        raise CommandError(f"--val-size {val_size} leaves no training example of {len(full)} in {data}")
    train_idx, _ = split_validation(len(full), val_size, split_seed)
    split = to_device(full.subset(train_idx), None, None, device=resolve_device(device)).train
    idx = measurement_examples(len(split), examples, seed)
    x, y = split.batch(idx)

    try:
        net = build_model(model, num_classes=split.num_classes, **model_kwargs)
    except (ValueError, TypeError) as e:
        raise CommandError(f"model {model!r} (from {source}) with {model_kwargs}: {e}") from e
    try:
        state = torch.load(weights, map_location=x.device, weights_only=True)
        net.load_state_dict(state)
    except Exception as e:  # unpickling errors, missing or mismatched tensors
        raise CommandError(f"--weights {weights} are not a state_dict of {model} {model_kwargs} for "
                           f"{split.num_classes} classes: {type(e).__name__}: {e}") from e  # fmt: skip
    net.to(x.device)

    per = trace_fisher(net, x, generator=seed, exact=exact, return_per_example=True).double()
    n = len(per)
    out: dict[str, Any] = {
        "weights": str(weights), "data": str(data), "model": model, "model_kwargs": model_kwargs,
        "examples": n, "val_size": val_size, "split_seed": split_seed, "seed": seed,
        "labels": "exact" if exact else "sampled",
        "trace_fisher": per.mean().item(),
        "trace_fisher_stderr": per.std().item() / math.sqrt(n) if n > 1 else math.nan,
    }  # fmt: skip
    if hessian:
        est = trace_hessian(net, x, y, num_probes=probes, generator=seed)
        out.update(trace_hessian=est.estimate, trace_hessian_stderr=est.stderr, probes=probes)
    return out


def _format(out: dict[str, Any]) -> str:
    labels = "every label weighted by p(y|x)" if out["labels"] == "exact" else "labels sampled from the model"
    lines = [f"Tr(F) = {out['trace_fisher']:.6g} +- {out['trace_fisher_stderr']:.2g}   "
             f"({out['examples']} examples of {out['data']}, {labels}, seed {out['seed']})"]  # fmt: skip
    if "trace_hessian" in out:
        lines.append(f"Tr(H) = {out['trace_hessian']:.6g} +- {out['trace_hessian_stderr']:.2g}   "
                     f"(Hutchinson, {out['probes']} Rademacher probes, the file's labels)")  # fmt: skip
    return "\n".join(lines)


# --- the command line --------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not JSON ({e}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object, e.g. '{{\"in_channels\": 1}}', got {text!r}")
    return value


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="fisherlab", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--version", action="version", version=f"fisherlab {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="three short SimpleCNN runs on synthetic data")
    d.add_argument("--out", default="results/demo")
    d.add_argument("--epochs", type=int, default=5)
    d.add_argument("--lr", type=float, default=0.01, help="eta; the baseline uses eta/10")
    d.add_argument("--alpha", type=float, default=0.01, help="FP coefficient (Eq. 3)")
    d.add_argument("--n-train", type=int, default=4000)
    d.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")

    t = sub.add_parser(
        "trace", help="Tr(F) (and Tr(H)) of saved weights on a prepared data set",
        description="Tr(F) (Eq. 2), and with --hessian Tr(H) (Hutchinson, Supplement B), of saved weights "
                    "on examples of a prepared data set, printed as value +- standard error.",
        epilog=f"example: fisherlab trace --weights results/<run>/{RunDir.MODEL} --data results/data/cifar10/train.npz "
               f"--val-size 5000 --hessian   (the architecture is read from results/<run>/{RunDir.SUMMARY})",
    )  # fmt: skip
    t.add_argument("--weights", required=True, type=Path,
                   help=f"a state_dict (a run's {RunDir.MODEL}, or {RunDir.SNAPSHOTS}/<name>.pt)")
    t.add_argument("--data", required=True, type=Path, help="a data set file in the canonical .npz format")
    t.add_argument("--model", help=f"the architecture (default: the run's, from the {RunDir.SUMMARY} beside "
                   "--weights or one level up)")
    t.add_argument("--model-kwargs", type=_json_object, default=None, metavar="JSON",
                   help="constructor arguments, e.g. '{\"in_channels\": 1, \"image_size\": 16}' "
                        "(added to the run's own)")
    t.add_argument("--examples", type=_positive_int, default=1000, help="examples measured (default 1000)")
    t.add_argument("--val-size", type=int, default=0,
                   help="validation examples set aside first, as in training (the run's val_size; default 0)")
    t.add_argument("--split-seed", type=int, default=0, help="seed of that split (default 0)")
    t.add_argument("--seed", type=int, default=0, help="seed of the examples, labels and probes (default 0)")
    t.add_argument("--exact", action="store_true", help="Tr(F) over every label weighted by p(y|x) "
                   "instead of one sampled label per example")
    t.add_argument("--hessian", action="store_true", help="also Tr(H)")
    t.add_argument("--probes", type=_positive_int, default=_HESSIAN.num_probes,
                   help=f"Hutchinson probes for Tr(H) (default {_HESSIAN.num_probes})")
    t.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, ...")
    t.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return ap


def main(argv: list[str] | None = None) -> None:
    ap = parser()
    args = ap.parse_args(argv)
    if args.command == "demo":
        if not (args.epochs > 0 and args.lr > 0 and args.alpha >= 0 and args.n_train >= 40):
            ap.error("need --epochs > 0, --lr > 0, --alpha >= 0 and --n-train >= 40")
        demo(args.out, args.epochs, args.lr, args.alpha, args.n_train, args.device)
        return
    from .data import DatasetFormatError

    try:
        out = measure(args.weights, args.data, model=args.model, model_kwargs=args.model_kwargs,
                      examples=args.examples, val_size=args.val_size, split_seed=args.split_seed,
                      seed=args.seed, exact=args.exact, hessian=args.hessian, probes=args.probes,
                      device=args.device)  # fmt: skip
    except (CommandError, DatasetFormatError) as e:
        print(f"fisherlab trace: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    from .runs.rundir import json_safe

    print(json.dumps(json_safe(out)) if args.json else _format(out))


if __name__ == "__main__":
    main()

"""Is a changed training loop bit-identical to another version's? (issue 23, item 4)

Trains a set of tiny runs (synthetic 16x16 images, a SimpleCNN, a few seconds each on
one CPU thread) that go through every path of :func:`fisherlab.training.trainer.train`: every
regularizer family, the early Tr(F) cadence and ``until="crossing"``, divergence (a
non-finite loss, and a regularizer refusing non-finite logits), keep_epochs and
keep_best snapshots, resampled measurement examples, training-set groups, the test
split every epoch, stop requests within an epoch and at an epoch's end, a crash and
its resume, and a tracker sink. For each run it records what the run leaves behind:
the result (status, metrics, curvature, summary, final weights), the text log, the rows
the sink received, how often ``should_stop`` was polled, and every file written (the
checkpoint and its previous generation after each attempt, the snapshots).

Wall-clock values (``seconds``, ``eval_seconds``, ``measure_seconds``,
``seconds_per_epoch`` and the times in log lines) are set to 0 before anything is
compared; everything else must be equal bit for bit: tensors by their bytes, dtype and
shape, and each checkpoint and snapshot by the SHA-256 of ``torch.save`` of it (key
order, storage sharing and all) once its timings are zeroed.

Usage (from the repository root, one thread)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/trainer_equivalence.py \\
        --reference ../fisherlab-old/src --candidate src

runs every scenario under each source tree (``PYTHONPATH``, in a subprocess), prints
one line per scenario and exits 1 on any difference, naming the first differing item.
``--dump DIR`` (inside a subprocess) writes one tree's records as pickles.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import math
import os
import pickle
import re
import subprocess
import sys
import tempfile
from pathlib import Path

TIMING = {"seconds", "eval_seconds", "measure_seconds", "seconds_per_epoch"}


# ------------------------------------------------------------------ one tree's records


def canonical(obj):
    """``obj`` as plain, comparable Python: tensors as (dtype, shape, sha256 of bytes),
    timings as 0.0, NaN as the string "nan" (dicts keep their order, which
    :func:`first_difference` compares too)."""
    import torch

    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().clone()  # its own storage: exactly its elements' bytes
        return ("tensor", str(t.dtype), tuple(t.shape), hashlib.sha256(bytes(t.untyped_storage())).hexdigest())
    if isinstance(obj, dict):
        return {k: 0.0 if k in TIMING else canonical(v) for k, v in obj.items()}  # in order: compared with it
    if isinstance(obj, list):
        return [canonical(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(canonical(v) for v in obj)
    if isinstance(obj, float) and math.isnan(obj):
        return "nan"
    return obj


def zero_timing(obj):
    """A copy of a loaded checkpoint with every timing value set to 0.0."""
    if isinstance(obj, dict):
        return {k: 0.0 if k in TIMING else zero_timing(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [zero_timing(v) for v in obj]
    return obj


def file_record(path: Path):
    """A file the run wrote: the SHA-256 of torch.save of its timing-free content, and
    the content itself (canonical) to say where two differ."""
    import torch

    obj = zero_timing(torch.load(path, weights_only=True))
    buf = io.BytesIO()
    torch.save(obj, buf)
    return {"sha256": hashlib.sha256(buf.getvalue()).hexdigest(), "content": canonical(obj)}


def files_in(folder: Path) -> dict:
    return {str(p.relative_to(folder)): file_record(p) for p in sorted(folder.rglob("*")) if p.is_file()
            and not p.name.startswith(".")}


def scenarios():
    """name -> (config overrides, attempts); an attempt is (should_stop poll at which the
    flag turns on or None, crash after this many batches or None)."""
    fp = {"regularizer": "fp", "regularizer_kwargs": {"alpha": 0.01, "every": 4}}
    return {
        "fp_snapshots_best": ({**fp, "keep_epochs": [0, 2], "keep_best": "val_acc"}, [(None, None)]),
        "fp_early_cadence": ({**fp, "fisher_every": 5, "fisher_every_early": 2, "epsilon": 1.384}, [(None, None)]),
        "until_crossing": ({**fp, "fisher_every_early": 2, "epsilon": 1.384, "until": "crossing", "epochs": 6,
                           "keep_epochs": [0, 1, 2]}, [(None, None)]),
        "diverged_loss": ({"regularizer": "none", "lr": 1e5, "keep_epochs": [0, 1, 3], "keep_best": "val_acc"},
                          [(None, None), (None, None)]),
        "diverged_at_epoch_end": ({"regularizer": "none", "lr": 1e5, "fisher_every": 0, "divergence_check_every": 50,
                                   "keep_epochs": [0, 1]}, [(None, None)]),
        "diverged_fp_logits": ({**fp, "lr": 1e5, "divergence_check_every": 50}, [(None, None)]),
        "resample_groups_test": ({"regularizer": "gpr", "regularizer_kwargs": {"alpha": 0.01},
                                  "fisher_resample": True, "fisher_epoch_end": False, "fisher_every": 4,
                                  "test_every_epoch": True, "keep_best": "test_acc", "groups": True},
                                 [(None, None)]),
        "train_best_whole": ({"regularizer": "mixup", "regularizer_kwargs": {"beta": 0.4}, "keep_best": "train_acc",
                              "train_eval_examples": 0, "fisher_every": 0}, [(None, None)]),
        "stop_mid_epoch": ({**fp, "keep_epochs": [1, 2], "keep_best": "val_acc"}, [(3, None), (4, None), (None, None)]),
        "stop_epoch_end": ({**fp, "keep_best": "val_acc"}, [(7, None), (None, None)]),
        "crash_then_resume": ({"regularizer": "gp", "regularizer_kwargs": {"alpha": 0.01}}, [(None, 9), (None, None)]),
        "finished_again": ({**fp, "epochs": 1}, [(None, None), (None, None)]),
        "sam": ({"regularizer": "sam", "regularizer_kwargs": {"rho": 0.05}}, [(2, None), (None, None)]),
    }


def dump(out: Path) -> None:
    import torch

    torch.set_num_threads(1)
    from fisherlab import TrainConfig, TrainData, train
    from fisherlab.data import DeviceData, make_synthetic
    from fisherlab.tracking import Sink

    def split(n, name):
        return make_synthetic(n, num_classes=4, image_size=16, seed=3, split=name)

    train_ds = split(192, "train")
    mean, std = DeviceData(train_ds).mean.flatten().tolist(), DeviceData(train_ds).std.flatten().tolist()
    splits = DeviceData(train_ds, augment=True), DeviceData(split(64, "val"), mean=mean, std=std), \
        DeviceData(split(64, "test"), mean=mean, std=std)
    groups = {"clean": torch.arange(0, 192, 3), "noisy": torch.cat([torch.arange(1, 192, 3), torch.arange(2, 192, 3)])}

    class Crashing(DeviceData):
        def __init__(self, src, left):
            self.__dict__.update(src.__dict__)
            self.left = left

        def batches(self, *a, **k):
            for b in super().batches(*a, **k):
                if self.left == 0:
                    raise KeyboardInterrupt("crash")
                self.left -= 1
                yield b

    class Rows(Sink):
        def __init__(self):
            self.rows = []

        def log_metrics(self, metrics, step):
            self.rows.append((step, {k: 0.0 if k.split("/")[-1] in TIMING else v for k, v in metrics.items()}))

        def flush(self):
            self.rows.append("flush")

    out.mkdir(parents=True, exist_ok=True)
    for name, (overrides, attempts) in scenarios().items():
        overrides = dict(overrides)
        with_groups = overrides.pop("groups", False)
        base = dict(model="simple_cnn", model_kwargs={"image_size": 16}, epochs=3, batch_size=32, lr=0.05,
                    weight_decay=1e-4, milestones=[2], fisher_examples=32, fisher_every=5, train_eval_examples=64,
                    group_examples=32, seed=1)  # fmt: skip
        cfg = TrainConfig(**{**base, **overrides})
        record = {"attempts": []}
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            ckpt, snaps = tmp / "ckpt" / "checkpoint.pt", tmp / "snapshots"
            ckpt.parent.mkdir()
            for stop_at, crash_after in attempts:
                polls, lines, sink = [], [], Rows()

                def should_stop(stop_at=stop_at, polls=polls):
                    polls.append(None)
                    return stop_at is not None and len(polls) >= stop_at

                tr = splits[0] if crash_after is None else Crashing(splits[0], crash_after)
                data = TrainData(tr, splits[1], splits[2], groups if with_groups else None)
                attempt = {}
                try:
                    r = train(cfg, data, checkpoint=ckpt, log=[lines.append, sink], should_stop=should_stop,
                              snapshots=snaps, progress=False)
                    attempt["result"] = canonical({"status": r.status, "metrics": r.metrics, "curvature": r.curvature,
                                                   "summary": r.summary, "model": r.model.state_dict()})
                except KeyboardInterrupt as e:
                    attempt["result"] = f"raised {e}"
                attempt["log"] = [re.sub(r"\d+\.\d+s", "Ts", line).replace(str(tmp), "<tmp>") for line in lines]
                attempt["sink"] = sink.rows
                attempt["polls"] = len(polls)
                kept = files_in(snaps) if snaps.exists() else {}
                attempt["files"] = {**files_in(ckpt.parent), **{f"snapshots/{k}": v for k, v in kept.items()}}
                record["attempts"].append(attempt)
        with open(out / f"{name}.pkl", "wb") as f:
            pickle.dump(record, f)
        statuses = [a["result"] if isinstance(a["result"], str) else a["result"]["status"] for a in record["attempts"]]
        print(f"  {name}: {statuses}", flush=True)


# ------------------------------------------------------------------ compare two trees


def first_difference(a, b, where="") -> str | None:
    if type(a) is not type(b):
        return f"{where}: {type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, dict):
        if list(a) != list(b):
            return f"{where}: keys {list(a)} vs {list(b)}"
        return next((d for k in a if (d := first_difference(a[k], b[k], f"{where}/{k}"))), None)
    if isinstance(a, (list, tuple)):
        if len(a) != len(b):
            return f"{where}: length {len(a)} vs {len(b)}"
        return next((d for i, (x, y) in enumerate(zip(a, b)) if (d := first_difference(x, y, f"{where}[{i}]"))), None)
    return None if a == b else f"{where}: {a!r} vs {b!r}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference", help="the source tree (a PYTHONPATH) of the reference version")
    p.add_argument("--candidate", help="the source tree (a PYTHONPATH) of the version to check")
    p.add_argument("--dump", help="(internal) write this interpreter's records to DIR")
    args = p.parse_args()
    if args.dump:
        dump(Path(args.dump))
        return 0
    if not (args.reference and args.candidate):
        p.error("give --reference and --candidate (or --dump DIR)")
    with tempfile.TemporaryDirectory() as tmp:
        records = {}
        for label, src in (("reference", args.reference), ("candidate", args.candidate)):
            print(f"{label}: {Path(src).resolve()}", flush=True)
            env = {**os.environ, "PYTHONPATH": str(Path(src).resolve()), "OMP_NUM_THREADS": "1"}
            subprocess.run([sys.executable, __file__, "--dump", f"{tmp}/{label}"], env=env, check=True)
            records[label] = {p.stem: pickle.loads(p.read_bytes()) for p in sorted(Path(tmp, label).glob("*.pkl"))}
        ref, cand = records["reference"], records["candidate"]
        failures = 0
        for name in scenarios():
            diff = first_difference(ref[name], cand[name], name)
            files = sum(len(a["files"]) for a in ref[name]["attempts"])
            print(f"{'IDENTICAL' if diff is None else 'DIFFERS  '} {name} ({len(ref[name]['attempts'])} attempts, "
                  f"{files} files compared){'' if diff is None else ': ' + diff[:400]}")
            failures += diff is not None
        print(f"{len(scenarios()) - failures} of {len(scenarios())} scenarios identical")
        return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

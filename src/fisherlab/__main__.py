"""``python -m fisherlab demo``: the paper's core finding at laptop scale, offline.

SimpleCNN on the synthetic data set, trained at a learning rate eta, at eta/10 (the
paper's small-lr baseline, Section 4) and at eta/10 with the Fisher penalty (Eq. 3).
Each run writes metrics.csv, curvature.csv and summary.json under --out, and a table
of test accuracy and Tr(F) is printed at the end.
"""

from __future__ import annotations

import argparse
import time

import torch

from . import TrainConfig, train
from .data import make_synthetic
from .experiment import to_device
from .runio import write_run


def demo(out: str, epochs: int, lr: float, alpha: float, n_train: int, device: str) -> None:
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
        result = train(cfg, data, checkpoint=f"{out}/{name}/checkpoint.pt", log=print)
        write_run(result, f"{out}/{name}", wall_seconds=time.perf_counter() - t0)
        s = result.summary
        table.append((name, s["status"], s["final_train_acc"], s["test_acc_at_best_val"],
                      s["max_trace_fisher"]))  # fmt: skip
    print(f"\n{'run':22s} {'status':8s} {'train acc':>9s} {'test acc':>9s} {'max Tr(F)':>10s}")
    for name, status, tr, te, fisher in table:
        print(f"{name:22s} {status:8s} {tr:9.3f} {te:9.3f} {fisher:10.4g}")
    print(f"\noutputs: {out}/<run>/{{metrics.csv,curvature.csv,summary.json}}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m fisherlab", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = ap.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="three short SimpleCNN runs on synthetic data")
    d.add_argument("--out", default="results/demo")
    d.add_argument("--epochs", type=int, default=5)
    d.add_argument("--lr", type=float, default=0.01, help="eta; the baseline uses eta/10")
    d.add_argument("--alpha", type=float, default=0.01, help="FP coefficient (Eq. 3)")
    d.add_argument("--n-train", type=int, default=4000)
    d.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    if not (args.epochs > 0 and args.lr > 0 and args.alpha >= 0 and args.n_train >= 40):
        ap.error("need --epochs > 0, --lr > 0, --alpha >= 0 and --n-train >= 40")
    demo(args.out, args.epochs, args.lr, args.alpha, args.n_train, args.device)


if __name__ == "__main__":
    main()

"""Speed of fisherlab's curvature measurement, Fisher penalty and training loop.

Prints ratios measured side by side in one run. Issue 14 (cheaper epochs), the default:

  E1  per recipe (SimpleCNN/CIFAR-10, VGG-11/CIFAR-100: 45k training, 5k validation, 10k
      test images, batch 128, Tr(F) and Tr(F_B) every 100 steps on 128 examples): an
      epoch's evaluation + measurement seconds / its training seconds, from the trainer
      (target <= 0.15); on the CPU on an epoch scaled down by --e1-scale (every split, the
      training subset and the measurement interval alike, so the ratio is the full one's)
  E2  per model (ResNet-26, WRN-44-3, DenseNet-40-12): trace_fisher on --e2-n (5,000)
      examples / one forward+backward over the same examples in chunks of 128 (target
      <= 1.3x on the CPU with 2 threads); wall and process CPU time, alternating runs,
      the machine's load printed beside them
  E3  by default with --device cuda only: P1 at N = 128 and 5,000 for every model of the
      paper (target <= 2x), one SimpleCNN/CIFAR-10-sized FP epoch with evaluation (50,000
      synthetic training images, target <= 2 s), and P2 for SimpleCNN and VGG-11
      (--only E3 --e3-n 16 --e3-images 512 --e3-models simple_cnn tries it on the CPU)

and the figures of the issue "fisherlab core" (--only P1 P2 P3):

  P1  trace_fisher over N examples / one batched forward+backward over the same N
      (also: a naive per-example loop, torch.func vmap(grad) in chunks of 64, and
      BackPACK's BatchL2Grad when it is installed)
  P2  seconds of an FP training epoch (every=10) / a plain epoch, from the trainer,
      plus the cost of one FP recomputation step / one plain step
  P3  images per second of fisherlab.train / a bare 15-line PyTorch loop over the
      same on-device tensors
  SAM one SAM training step / one plain step (issue 15; not in the default --only)

and issue 11's (--only SWEEP):

  SWEEP  per ResNet-26 sweep of config.yaml (Section 3: Tr(F) and Tr(F_B) on 5,000
         examples, dense until the crossing, then sparse): the Tr(F) measurements of a
         whole run / its training (target < 0.15), from one measurement and one training
         step timed on this machine and the run's count of measurements, for a crossing
         at epoch 1, 3 and 10, with the config's fisher_epoch_end and with it on

Usage: python benchmarks/curvature.py [--device cpu|cuda] [--threads 2] [--only E1 E2 E3]
       [--e1-scale 0.1] [--e1-before] [--e2-n 5000] [--e2-models ...] [--repeat 2]
       [--e3-n 128 5000] [--e3-images 50000] [--e3-models ...]
       python benchmarks/curvature.py --only P1 P2 P3 SAM [--n 512] [--no-references]
       [--models simple_cnn vgg11 wrn44_3 densenet40_12 ...] [--epoch-images 2560]
       python benchmarks/curvature.py --only SWEEP [--sweep-n 512]
"""

from __future__ import annotations

import argparse
import math
import os
import time

import torch
import torch.nn.functional as F
import yaml
from torch.func import functional_call, grad, vmap

from fisherlab import (TrainConfig, TrainData, build_model, build_regularizer, trace_fisher,
                       trace_fisher_batch, train)
from fisherlab.data import DeviceData, make_synthetic

PAPER_MODELS = ["simple_cnn", "vgg11", "wrn44_3", "wrn44_3_skipinit", "densenet40_12", "resnet26", "resnet32",
                "resnet52", "resnet56", "resnet18_fixup"]  # fmt: skip
E1_RECIPES = {"SimpleCNN/CIFAR-10": ("simple_cnn", 10), "VGG-11/CIFAR-100": ("vgg11", 100)}

CLASSES = {
    "simple_cnn": 10,
    "vgg11": 100,
    "wrn44_3": 100,  # CIFAR-100 (200 for TinyImageNet)
    "wrn44_3_skipinit": 100,
    "densenet40_12": 100,
    "resnet26": 10,
    "resnet32": 10,
    "resnet52": 100,
    "resnet56": 100,
    "resnet18_fixup": 1000,  # ImageNet stem; P1 feeds 32x32 inputs
}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def best_time(fn, device, repeat=3):
    """The minimum wall time over ``repeat`` runs, after one warm-up run."""
    fn()
    times = []
    for _ in range(repeat):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return min(times)


# ------------------------------------------------------------------ P1 references


def forward_backward(model, x, y):
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()


def naive_loop(model, x, y):
    total = 0.0
    for i in range(len(x)):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        total += sum(p.grad.pow(2).sum() for p in model.parameters())
    return total / len(x)


def vmap_grad(model, x, y, chunk=64):
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p, xi, yi):
        return F.cross_entropy(functional_call(model, p, (xi[None],)), yi[None])

    total = 0.0
    for xc, yc in zip(x.split(chunk), y.split(chunk)):
        g = vmap(grad(loss), in_dims=(None, 0, 0))(params, xc, yc)
        total += sum(v.pow(2).reshape(len(v), -1).sum(1).sum() for v in g.values())
    return total / len(x)


def backpack_l2(ext, lossfn, x, y):
    """BackPACK's per-example squared gradient norms (model and loss already extended)."""
    from backpack import backpack
    from backpack.extensions import BatchL2Grad

    ext.zero_grad(set_to_none=True)
    with backpack(BatchL2Grad()):
        lossfn(ext(x), y).backward()
    return sum(p.batch_l2.sum() for p in ext.parameters()) / len(x)


def p1(name, device, n, references=True):
    """All rows in eval mode: trace_fisher measures there (BatchNorm with its running
    statistics, Supplement I.2), and per-example gradients are only defined there."""
    model = build_model(name, CLASSES[name]).to(device).eval()
    x = torch.randn(n, 3, 32, 32, device=device)
    y = torch.randint(0, CLASSES[name], (n,), device=device)
    base = best_time(lambda: forward_backward(model, x, y), device)
    rows = {"fisherlab trace_fisher (P1)": lambda: trace_fisher(model, x, generator=0)}
    if references:
        rows = {"naive per-example loop": lambda: naive_loop(model, x, y),
                "torch.func vmap(grad), chunk 64": lambda: vmap_grad(model, x, y), **rows}  # fmt: skip
        try:
            import warnings

            from backpack import extend

            warnings.filterwarnings("ignore", module="backpack")
            warnings.filterwarnings("ignore", message="Full backward hook")
            ext = extend(build_model(name, CLASSES[name]).to(device).eval())
            lossfn = extend(torch.nn.CrossEntropyLoss(reduction="sum"))
            rows["BackPACK BatchL2Grad"] = lambda: backpack_l2(ext, lossfn, x, y)
        except ImportError:
            print(f"  [{name}] BackPACK not installed: skipped")
    print(f"P1 {name}: one batched forward+backward over N={n}: {base:.3f} s")
    for label, fn in rows.items():
        repeat = 1 if "naive" in label else 3
        try:
            print(f"  {label:36s} {best_time(fn, device, repeat) / base:6.2f}x")
        except Exception as e:  # noqa: BLE001  (a reference that does not support the model)
            print(f"  {label:36s} failed: {type(e).__name__}: {str(e).splitlines()[0][:80]}")


# ------------------------------------------------------------------ P2 and P3


def synthetic_data(device, n):
    return TrainData(DeviceData(make_synthetic(n, num_classes=10, seed=0), device=device))


def epoch_seconds(name, data, regularizer, kwargs, device):
    cfg = TrainConfig(model=name, epochs=2, batch_size=128, lr=0.01, regularizer=regularizer,
                      regularizer_kwargs=kwargs, fisher_examples=8, device=str(device))  # fmt: skip
    result = train(cfg, data)
    return min(r["seconds"] for r in result.metrics)  # epoch 1 includes warm-up


def fp_step_ratio(name, device):
    model = build_model(name, 10).to(device)
    x = torch.randn(128, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (128,), device=device)
    plain, fp = build_regularizer("none"), build_regularizer("fp", alpha=0.01, every=1)

    def step(reg):
        model.zero_grad(set_to_none=True)
        reg.backward(model, x, y, step=0, epoch=0)

    return best_time(lambda: step(fp), device) / best_time(lambda: step(plain), device)


def p2(name, device, images):
    data = synthetic_data(device, images)
    plain = epoch_seconds(name, data, "none", {}, device)
    fp = epoch_seconds(name, data, "fp", {"alpha": 0.01, "every": 10}, device)
    print(f"P2 {name}: plain epoch {plain:.2f} s, FP epoch (every=10) {fp:.2f} s: {fp / plain:.3f}x "
          f"({images} images); one FP recomputation step = {fp_step_ratio(name, device):.2f}x a plain step")  # fmt: skip
    return fp


def bare_loop(model, data: DeviceData, batch_size, lr, device):
    """The 15-line reference: same tensors, same model, SGD with momentum."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    gen = torch.Generator(device=device).manual_seed(0)
    sync(device)
    t0 = time.perf_counter()
    order = torch.randperm(len(data), generator=gen, device=device)
    for i in range(0, len(data), batch_size):
        idx = order[i : i + batch_size]
        x, y = data.normalise(data.x[idx]), data.y[idx]
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    sync(device)
    return time.perf_counter() - t0


def p3(name, device, images):
    data = synthetic_data(device, images)
    ours = epoch_seconds(name, data, "none", {}, device)
    model = build_model(name, 10).to(device)
    bare_loop(model, data.train, 128, 0.01, device)  # warm-up
    bare = min(bare_loop(model, data.train, 128, 0.01, device) for _ in range(2))
    print(f"P3 {name}: fisherlab.train {images / ours:.0f} img/s, bare loop {images / bare:.0f} img/s: "
          f"{bare / ours:.3f}x")  # fmt: skip


def sam_step(name, device, batch=128, rho=0.05, repeat=5):
    """One training step (zero_grad, the regularizer's backward, SGD momentum 0.9 and
    weight decay 5e-4) with SAM / the same with plain cross-entropy, train mode, a batch
    of 32x32 inputs. The two are timed alternately after one warm-up step each, and each
    keeps its minimum, so that a change of machine load hits both alike; on the CPU the
    ratio of process CPU times is printed too (less sensitive to other processes on a
    shared machine). Expected about 2x (two forward+backward passes)."""
    model = build_model(name, CLASSES[name]).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, CLASSES[name], (batch,), device=device)
    regs = {"plain": build_regularizer("none"), "sam": build_regularizer("sam", rho=rho)}

    def step(reg):
        opt.zero_grad(set_to_none=True)
        reg.backward(model, x, y, step=0, epoch=0)
        opt.step()

    for reg in regs.values():
        step(reg)
    wall, cpu = {k: float("inf") for k in regs}, {k: float("inf") for k in regs}
    for _ in range(repeat):
        for label, reg in regs.items():
            sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            step(reg)
            sync(device)
            wall[label] = min(wall[label], time.perf_counter() - t0)
            cpu[label] = min(cpu[label], time.process_time() - c0)
    line = (f"SAM {name}: plain step {wall['plain']:.3f} s, SAM step (rho {rho}) {wall['sam']:.3f} s: "
            f"{wall['sam'] / wall['plain']:.2f}x (batch {batch})")  # fmt: skip
    if device.type == "cpu":
        line += f"; CPU time {cpu['plain']:.3f} s vs {cpu['sam']:.3f} s: {cpu['sam'] / cpu['plain']:.2f}x"
    print(line)


# ------------------------------------------------------------------ issue 14: E1, E2, E3


def load() -> str:
    return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def recipe_data(device, num_classes, scale, train=45_000, val=5_000, test=10_000):
    """Synthetic CIFAR-sized splits (32x32, ``scale`` times the paper's sizes)."""

    def split(n, name):
        return make_synthetic(max(1, round(n * scale)), num_classes=num_classes, seed=0, split=name)

    tr = DeviceData(split(train, "train"), device=device)
    stats = {"mean": tr.mean.flatten().tolist(), "std": tr.std.flatten().tolist()}
    return TrainData(tr, DeviceData(split(val, "val"), device=device, **stats),
                     DeviceData(split(test, "test"), device=device, **stats))  # fmt: skip


def recipe_run(model, data, device, *, scale=1.0, fisher_every=100, regularizer="none", kwargs=None, before=False):
    """Three epochs of the recipe (batch 128, Tr(F) and Tr(F_B) on 128 fixed examples every
    ``fisher_every`` steps and at each epoch's end; the training subset scaled with the
    splits). ``before``: evaluation as before issue 14 (every split whole every epoch, in
    batches of 1,000)."""
    cfg = {"model": model, "epochs": 3, "batch_size": 128, "lr": 0.01, "fisher_examples": 128,
           "fisher_every": fisher_every, "train_eval_examples": round(5_000 * scale),
           "regularizer": regularizer, "regularizer_kwargs": kwargs or {}, "device": str(device)}  # fmt: skip
    if before:
        cfg.update(train_eval_examples=0, test_every_epoch=True, eval_batch_size=1000)
    return train(TrainConfig(**cfg), data)


def measurement_seconds(model, data, device, clock="wall"):
    """One of the trainer's measurements: Tr(F) and Tr(F_B) on 128 training examples."""
    x = data.train.batch(range(128))[0]

    def measure():
        trace_fisher(model, x, generator=0)
        trace_fisher_batch(model, x, batch_size=128, generator=0)

    if clock == "wall":
        return best_time(measure, device)
    measure()
    times = []
    for _ in range(3):
        t0 = time.process_time()
        measure()
        times.append(time.process_time() - t0)
    return min(times)


class _ProcessClock:
    """Stands in for the trainer's ``time`` module: its perf_counter is the process's CPU
    time, so that ``seconds`` and ``eval_seconds`` count this process's work only."""

    perf_counter = staticmethod(time.process_time)


def e1(device, scale, before=False, clock="wall"):
    """E1: evaluation + measurement seconds / training seconds of an epoch (the second of
    three: the first warms up, the last evaluates the whole training and test splits).
    At scale 1 as the trainer records it. Scaled down, the measurements are not: each
    costs the same on 128 examples whatever the epoch's size, and a full epoch holds
    352 / 100 + 1 = 4.5 of them; so the run measures at each epoch's end only, one
    measurement is timed apart (m), and E1 = (evaluation + 4.5 s m) / training, the
    evaluation being the epoch's eval_seconds less its one measurement. ``clock="cpu"``:
    process CPU time instead of wall time, for a machine that other work shares (with one
    thread: with more, idle OpenMP threads spin and count)."""
    import fisherlab.training.trainer

    if clock == "cpu":
        fisherlab.training.trainer.time = _ProcessClock
    per_epoch = math.ceil(45_000 / 128) / 100 + 1
    print(f"E1 (target <= 0.15): epochs of {round(45_000 * scale)} training, {round(5_000 * scale)} validation, "
          f"{round(10_000 * scale)} test images (scale {scale:g} of the paper's), {clock} time; {load()}")  # fmt: skip
    for label, (model, classes) in E1_RECIPES.items():
        data = recipe_data(device, classes, scale)
        for name, old in [("now", False)] + [("before issue 14", True)] * before:
            if scale == 1:
                mid = recipe_run(model, data, device, before=old).metrics[1]
                print(f"  {label:20s} {name:16s} train {mid['seconds']:.2f} s, evaluation + measurement "
                      f"{mid['eval_seconds']:.2f} s: {mid['eval_seconds'] / mid['seconds']:.3f}")  # fmt: skip
                continue
            result = recipe_run(model, data, device, scale=scale, fisher_every=0, before=old)
            mid, m = result.metrics[1], measurement_seconds(result.model, data, device, clock)
            evaluation = max(mid["eval_seconds"] - m, 0.0)
            ratio = (evaluation + scale * per_epoch * m) / mid["seconds"]
            print(f"  {label:20s} {name:16s} train {mid['seconds']:.2f} s, evaluation {evaluation:.2f} s, one "
                  f"measurement {m:.3f} s (x {scale * per_epoch:.2f} at this scale): {ratio:.3f}")  # fmt: skip
    print(f"  ({load()})")
    fisherlab.training.trainer.time = time


def chunked_forward_backward(model, x, y, chunk=128):
    model.zero_grad(set_to_none=True)
    for xc, yc in zip(x.split(chunk), y.split(chunk)):
        F.cross_entropy(model(xc), yc, reduction="sum").backward()


def fisher_ratio(name, device, n, repeat, chunk=128):
    """trace_fisher over n examples / a forward+backward over them in chunks of ``chunk``
    (trace_fisher's own chunk), eval mode; alternating runs after a warm-up on one chunk,
    the minimum of each (wall, and on the CPU process CPU time)."""
    model = build_model(name, CLASSES[name]).to(device).eval()
    x = torch.randn(n, 3, 32, 32, device=device)
    y = torch.randint(0, CLASSES[name], (n,), device=device)
    runs = {"fwd+bwd": lambda xs, ys: chunked_forward_backward(model, xs, ys, chunk),
            "trace_fisher": lambda xs, ys: trace_fisher(model, xs, generator=0, chunk_size=chunk)}  # fmt: skip
    for fn in runs.values():
        fn(x[:chunk], y[:chunk])
    wall, cpu = {k: math.inf for k in runs}, {k: math.inf for k in runs}
    for _ in range(repeat):
        for label, fn in runs.items():
            sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            fn(x, y)
            sync(device)
            wall[label] = min(wall[label], time.perf_counter() - t0)
            cpu[label] = min(cpu[label], time.process_time() - c0)
    return wall, cpu


def e2(models, device, n, repeat):
    """E2: trace_fisher / forward+backward over the same n examples."""
    print(f"E2 (target <= 1.3x): trace_fisher on {n} examples / forward+backward over them (chunks of 128); "
          f"min of {repeat}; {load()}")  # fmt: skip
    for name in models:
        wall, cpu = fisher_ratio(name, device, n, repeat)
        line = (f"  {name:16s} fwd+bwd {wall['fwd+bwd']:.2f} s, trace_fisher {wall['trace_fisher']:.2f} s: "
                f"{wall['trace_fisher'] / wall['fwd+bwd']:.3f}x wall")  # fmt: skip
        if device.type == "cpu":
            line += f", {cpu['trace_fisher'] / cpu['fwd+bwd']:.3f}x CPU time"
        print(line + f"   ({load()})")


def e3(device, repeat, ns=(128, 5_000), images=50_000, models=PAPER_MODELS):
    """E3, the GPU figures: P1 at N = 128 and 5,000 for every model, the FP epoch of
    50,000 SimpleCNN images with evaluation, P2 (smaller ``ns``/``images`` try the code
    on the CPU)."""
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{device} (not the GPU figures)"
    print(f"E3 on {where}; {load()}")
    print("  P1 (target <= 2x): trace_fisher / forward+backward over the same N (chunks of 128)")
    for name in models:
        ratios = []
        for n in ns:
            wall, _ = fisher_ratio(name, device, n, repeat)
            ratio, ms = wall["trace_fisher"] / wall["fwd+bwd"], wall["fwd+bwd"] * 1e3
            ratios.append(f"N={n}: {ratio:.2f}x ({ms:.0f} ms fwd+bwd)")
        print(f"    {name:16s} " + "   ".join(ratios))
    data = recipe_data(device, 10, images / 50_000, train=50_000)
    mid = recipe_run("simple_cnn", data, device, regularizer="fp", kwargs={"alpha": 0.01, "every": 10}).metrics[1]
    print(f"  SimpleCNN FP epoch (every=10), {len(data.train)} training + {len(data.val)} validation + "
          f"{len(data.test)} test synthetic images, "
          f"Tr(F) every 100 steps: {mid['seconds']:.2f} s training + {mid['eval_seconds']:.2f} s evaluation and "
          f"measurement = {mid['seconds'] + mid['eval_seconds']:.2f} s (target <= 2 s; paper Table 5: 21 s)")  # fmt: skip
    for name in ("simple_cnn", "vgg11"):
        p2(name, device, images)


# ------------------------------------------------------------------ issue 11: SWEEP

CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "config.yaml")
TRAIN_IMAGES = 45_000  # CIFAR's 50,000 less the 5,000 of the validation split


def measurements(epochs, steps_per_epoch, every_early, every, epoch_end, crossing_epoch):
    """How many times a run measures Tr(F): at initialisation, every ``every_early`` steps
    until the crossing, then every ``every`` steps, and at each epoch's end unless a
    measurement fell on it (the trainer's cadence, fisherlab.training.trainer)."""
    steps = {0}
    cross = round(crossing_epoch * steps_per_epoch)
    for step in range(1, epochs * steps_per_epoch + 1):
        k = every_early if every_early and step <= cross else every
        if (k and step % k == 0) or (epoch_end and step % steps_per_epoch == 0):
            steps.add(step)
    return len(steps)


def sweep_share(device, n, repeat, crossing_epochs=(1, 3, 10)):
    """SWEEP: one measurement (Tr(F) and Tr(F_B), batch B) on ``n`` examples, scaled
    linearly to the sweep's N (both are sums over chunks), and one training step at batch
    B (SGD with momentum, train mode), each the minimum of ``repeat`` timed runs; the share
    is count x measurement / (steps x step)."""
    config = yaml.safe_load(open(CONFIG))
    print(f"SWEEP (target < 0.15): Tr(F) measurements of a ResNet-26 sweep run / its training; {load()}")
    for name, sw in config["sweeps"]["settings"].items():
        recipe = config["settings"][sw["recipe"]]
        if recipe["model"] != "resnet26":
            continue
        classes = 100 if recipe["dataset"] == "cifar100" else 10
        model = build_model("resnet26", classes).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        sizes = sw["batch_size"] if isinstance(sw["batch_size"], list) else [sw["batch_size"] or recipe["batch_size"]]
        big_n = sw.get("fisher_examples") or recipe["fisher_examples"]
        epochs = sw.get("epochs") or recipe["epochs"]
        end = sw.get("fisher_epoch_end", recipe.get("fisher_epoch_end", True))
        for b in sizes:
            x = torch.randn(max(b, n), 3, 32, 32, device=device)
            y = torch.randint(0, classes, (len(x),), device=device)

            def step():
                model.train()
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model(x[:b]), y[:b]).backward()
                opt.step()

            def measure():
                model.eval()
                trace_fisher(model, x[:n], generator=0)
                trace_fisher_batch(model, x[:n], batch_size=b, generator=0)

            t_step, t_meas = best_time(step, device, repeat), best_time(measure, device, repeat) * big_n / n
            spe = math.ceil(TRAIN_IMAGES / b)
            shares = []
            for ce in crossing_epochs:
                runs = {on: measurements(epochs, spe, sw["fisher_every_early"], sw["fisher_every"], on, ce)
                        for on in (end, True)}  # fmt: skip
                share = {on: m * t_meas / (epochs * spe * t_step) for on, m in runs.items()}
                text = f"crossing at epoch {ce}: {runs[end]} measurements {share[end]:.3f}"
                if not end:
                    text += f" (with epoch ends: {runs[True]}, {share[True]:.3f})"
                shares.append(text)
            print(f"  {name} batch {b}: step {t_step:.3f} s, measurement on {big_n} {t_meas:.2f} s "
                  f"(timed on {n}); " + "; ".join(shares))  # fmt: skip


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=512, help="examples for P1")
    ap.add_argument("--models", nargs="+", default=["simple_cnn", "vgg11"])
    ap.add_argument("--epoch-images", type=int, default=2560, help="training-set size for P2/P3")
    ap.add_argument("--only", nargs="+", default=None, help="default: E1 E2, and E3 with --device cuda")
    ap.add_argument("--e1-scale", type=float, default=None,
                    help="E1 epoch size / the paper's (default: 0.1 on the CPU, 1 on a GPU)")
    ap.add_argument("--e1-before", action="store_true", help="E1: also the evaluation as before issue 14")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="E1: wall time, or process CPU time (a shared machine; use with --threads 1)")
    ap.add_argument("--e2-n", type=int, default=5_000, help="examples for E2")
    ap.add_argument("--e2-models", nargs="+", default=["resnet26", "wrn44_3", "densenet40_12"])
    ap.add_argument("--repeat", type=int, default=2, help="E2/E3: timed runs of each (the minimum is kept)")
    ap.add_argument("--e3-n", nargs="+", type=int, default=[128, 5_000], help="E3: the N of P1")
    ap.add_argument("--e3-images", type=int, default=50_000, help="E3: training images of the FP epoch and P2")
    ap.add_argument("--e3-models", nargs="+", default=PAPER_MODELS)
    ap.add_argument("--no-references", action="store_true",
                    help="P1: time trace_fisher only (skip the naive loop, vmap and BackPACK)")
    ap.add_argument("--sweep-n", type=int, default=512, help="SWEEP: examples a measurement is timed on")
    ap.add_argument("--fp-epoch-50k", action="store_true",
                    help="also time one SimpleCNN FP epoch on 50,000 synthetic images")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.only is None:
        args.only = ["E1", "E2", "E3"] if device.type == "cuda" else ["E1", "E2"]
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}")
    if "E1" in args.only:
        e1(device, args.e1_scale or (1.0 if device.type == "cuda" else 0.1), args.e1_before, args.clock)
    if "E2" in args.only:
        e2(args.e2_models, device, args.e2_n, args.repeat)
    if "E3" in args.only:
        e3(device, args.repeat, args.e3_n, args.e3_images, args.e3_models)
    if "SWEEP" in args.only:
        sweep_share(device, args.sweep_n, args.repeat)
    for name in args.models if {"P1", "P2", "P3", "SAM"} & set(args.only) else []:
        if "P1" in args.only:
            p1(name, device, args.n, references=not args.no_references)
        if "P2" in args.only:
            p2(name, device, args.epoch_images)
        if "P3" in args.only:
            p3(name, device, args.epoch_images)
        if "SAM" in args.only:
            sam_step(name, device)
    if args.fp_epoch_50k:
        data = synthetic_data(device, 50_000)
        fp = epoch_seconds("simple_cnn", data, "fp", {"alpha": 0.01, "every": 10}, device)
        print(f"SimpleCNN, FP every=10, 50,000 synthetic 32x32 images: {fp:.2f} s per epoch")


if __name__ == "__main__":
    main()

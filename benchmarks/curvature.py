"""Speed of fisherlab's curvature measurement, Fisher penalty and training loop.

Prints ratios measured side by side in one run (issue "fisherlab core", section Speed):

  P1  trace_fisher over N examples / one batched forward+backward over the same N
      (also: a naive per-example loop, torch.func vmap(grad) in chunks of 64, and
      BackPACK's BatchL2Grad when it is installed)
  P2  seconds of an FP training epoch (every=10) / a plain epoch, from the trainer,
      plus the cost of one FP recomputation step / one plain step
  P3  images per second of fisherlab.train / a bare 15-line PyTorch loop over the
      same on-device tensors
  SAM one SAM training step / one plain step (issue 15; not in the default --only)

Usage: python benchmarks/curvature.py [--device cpu|cuda] [--threads 2] [--n 512]
       [--models simple_cnn vgg11 wrn44_3 densenet40_12 ...] [--epoch-images 2560]
       [--only P1 P2 P3 SAM] [--no-references]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from fisherlab import TrainConfig, TrainData, build_model, build_regularizer, trace_fisher, train
from fisherlab.data import DeviceData, make_synthetic

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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=512, help="examples for P1")
    ap.add_argument("--models", nargs="+", default=["simple_cnn", "vgg11"])
    ap.add_argument("--epoch-images", type=int, default=2560, help="training-set size for P2/P3")
    ap.add_argument("--only", nargs="+", default=["P1", "P2", "P3"])
    ap.add_argument("--no-references", action="store_true",
                    help="P1: time trace_fisher only (skip the naive loop, vmap and BackPACK)")
    ap.add_argument("--fp-epoch-50k", action="store_true",
                    help="also time one SimpleCNN FP epoch on 50,000 synthetic images")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}")
    for name in args.models:
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

"""Noisy-label files (Section 4.1) and the per-group statistics recorded while training
on them (Fig. 5, Fig. 12): exact fraction, determinism, uniformity, the file's checks,
and every group statistic against a brute-force loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fisherlab import TrainConfig, build_model, train
from fisherlab.data import DatasetFormatError, ImageDataset, load_dataset, prepare_synthetic
from fisherlab.data.noise import (
    NoisyLabels,
    apply_noisy_labels,
    load_noisy_labels,
    make_noisy_labels,
    prepare_noisy_labels,
    save_noisy_labels,
)
from fisherlab.experiment import load_data
from fisherlab.training.memorization import group_metrics


def labels(n=50_000, c=100, seed=0):
    return np.random.default_rng(seed).integers(0, c, n).astype(np.int64)


@pytest.mark.parametrize("fraction", [0.25, 0.5])
def test_the_fraction_is_exact(fraction):
    y = labels()
    noisy = make_noisy_labels(y, 100, fraction, seed=3)
    assert noisy.replaced.sum() == fraction * len(y)
    assert np.array_equal(noisy.label[~noisy.replaced], y[~noisy.replaced])
    assert np.array_equal(noisy.clean, y)


def test_same_seed_same_file_and_other_seeds_differ(tmp_path):
    y = labels(5000)
    paths = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        paths.append(tmp_path / f"{name}.csv")
        save_noisy_labels(paths[-1], make_noisy_labels(y, 100, 0.25, seed))
    a, b, c = (p.read_bytes() for p in paths)
    assert a == b
    assert a != c
    na, nc = load_noisy_labels(paths[0]), load_noisy_labels(paths[2])
    assert not np.array_equal(na.replaced, nc.replaced)


def test_replaced_labels_are_uniform_over_the_classes():
    # 25,000 replaced labels over 100 classes; Pearson's chi-square with 99 degrees of
    # freedom. Critical value at the 0.1% level: chi2.ppf(0.999, 99) = 148.23 (tables;
    # scipy.stats.chi2.ppf). Independent of the clean labels: a constant clean label.
    y = np.zeros(50_000, dtype=np.int64)
    noisy = make_noisy_labels(y, 100, 0.5, seed=0)
    counts = np.bincount(noisy.label[noisy.replaced], minlength=100)
    expected = noisy.replaced.sum() / 100
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 148.23, chi2
    # and the chosen examples are spread over the index range (not, e.g., the first ones)
    idx = np.flatnonzero(noisy.replaced)
    assert abs(idx.mean() - len(y) / 2) < 0.01 * len(y)


def test_the_file_records_each_index(tmp_path):
    y = labels(40, c=10)
    noisy = make_noisy_labels(y, 10, 0.25, seed=5)
    save_noisy_labels(tmp_path / "n.csv", noisy)
    lines = (tmp_path / "n.csv").read_text().splitlines()
    assert lines[0] == "# fisherlab noisy labels: fraction=0.25 seed=5 num_classes=10"
    assert lines[1] == "index,clean_label,label,replaced"
    i = int(np.flatnonzero(noisy.replaced)[0])
    assert lines[2 + i] == f"{i},{y[i]},{noisy.label[i]},1"
    back = load_noisy_labels(tmp_path / "n.csv")
    assert (back.fraction, back.seed, back.num_classes) == (0.25, 5, 10)
    for field in ("clean", "label", "replaced"):
        assert np.array_equal(getattr(back, field), getattr(noisy, field))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda ls: ls[1:], "not a fisherlab noisy-label file"),
        (lambda ls: ls[:2] + ["0,1,2"] + ls[3:], "malformed|rows"),
        (lambda ls: ls[:2] + ["0,1,2,0"] + ls[3:], "not marked replaced"),
        (lambda ls: ls[:2] + ["0,1,99,1"] + ls[3:], "out of range"),
        (lambda ls: ls[:-1], "fraction"),
        (lambda ls: ls[:2] + ["a,b,c,d"] + ls[3:], "malformed"),
    ],
)
def test_a_bad_file_is_refused_clearly(tmp_path, edit, message):
    y = np.arange(40, dtype=np.int64) % 10
    odd = np.arange(40) % 2 == 1  # 20 of 40 replaced; row 0 clean, row 39 replaced
    noisy = NoisyLabels(y, np.where(odd, (y + 1) % 10, y), odd, 0.5, 1, 10)
    save_noisy_labels(tmp_path / "ok.csv", noisy)
    assert load_noisy_labels(tmp_path / "ok.csv").n_noisy == 20
    lines = (tmp_path / "ok.csv").read_text().splitlines()
    (tmp_path / "bad.csv").write_text("\n".join(edit(lines)) + "\n")
    with pytest.raises(DatasetFormatError, match=message):
        load_noisy_labels(tmp_path / "bad.csv")


def test_a_file_of_another_dataset_is_refused():
    ds = ImageDataset(np.zeros((20, 4, 4, 3), np.uint8), np.arange(20, dtype=np.int64) % 5, [str(i) for i in range(5)])
    other = make_noisy_labels(np.roll(ds.y, 1), 5, 0.25, 0)
    with pytest.raises(DatasetFormatError, match="clean labels differ"):
        apply_noisy_labels(ds, other)
    with pytest.raises(DatasetFormatError, match="examples"):
        apply_noisy_labels(ds, make_noisy_labels(ds.y[:10], 5, 0.25, 0))


def test_noise_precedes_the_validation_split(tmp_path):
    train_path, test_path = prepare_synthetic(tmp_path / "d", 200, 40, num_classes=4, image_size=16)
    noisy = prepare_noisy_labels(train_path, tmp_path / "noise.csv", 0.25, seed=2)
    data = load_data(train_path, test_path, val_size=50, noise_path=tmp_path / "noise.csv")
    full = load_dataset(train_path)
    from fisherlab.data import split_validation

    train_idx, val_idx = split_validation(200, 50, 0)
    assert torch.equal(data.train.y.cpu(), torch.as_tensor(noisy.label[train_idx]))
    assert torch.equal(data.val.y.cpu(), torch.as_tensor(noisy.label[val_idx]))
    assert torch.equal(data.test.y.cpu(), torch.as_tensor(load_dataset(test_path).y))
    clean, noisy_idx = data.groups["clean"].numpy(), data.groups["noisy"].numpy()
    assert sorted(np.concatenate([clean, noisy_idx]).tolist()) == list(range(150))
    assert np.array_equal(noisy.replaced[train_idx][noisy_idx], np.ones(len(noisy_idx), bool))
    assert len(noisy_idx) + noisy.replaced[val_idx].sum() == 50
    assert full.y.shape == noisy.clean.shape


def test_group_metrics_match_a_brute_force_loop():
    torch.manual_seed(0)
    model = build_model("simple_cnn", num_classes=5, image_size=16).double()
    x = torch.randn(30, 3, 16, 16, dtype=torch.float64)
    y = torch.randint(0, 5, (30,))
    groups = {"clean": torch.arange(0, 30, 2), "noisy": torch.arange(1, 30, 2)}
    samples = {k: (x[v[:6]], y[v[:6]]) for k, v in groups.items()}
    with torch.no_grad():
        correct = model.eval()(x).argmax(1) == y
    row = group_metrics(model, correct, groups, samples)

    def mean_grad(xs, ys):
        total = [torch.zeros_like(p) for p in model.parameters()]
        for xi, yi in zip(xs, ys):
            model.zero_grad()
            F.cross_entropy(model(xi[None]), yi[None]).backward()
            total = [t + p.grad / len(xs) for t, p in zip(total, model.parameters())]
        return torch.cat([t.flatten() for t in total])

    g = {k: mean_grad(*samples[k]) for k in groups}
    for k, idx in groups.items():
        assert row[f"train_acc_{k}"] == pytest.approx(correct[idx].double().mean().item(), abs=1e-15)
        assert row[f"grad_sq_norm_{k}"] == pytest.approx(g[k].pow(2).sum().item(), rel=1e-10)
    cos = (g["clean"] @ g["noisy"] / g["clean"].norm() / g["noisy"].norm()).item()
    assert row["grad_cosine_clean_noisy"] == pytest.approx(cos, abs=1e-10)


def test_training_on_noisy_labels_records_the_groups_and_resumes(tmp_path):
    train_path, test_path = prepare_synthetic(tmp_path / "d", 256, 64, num_classes=4, image_size=16)
    prepare_noisy_labels(train_path, tmp_path / "noise.csv", 0.25, seed=0)
    data = load_data(train_path, test_path, val_size=64, noise_path=tmp_path / "noise.csv")
    cfg = TrainConfig(model="simple_cnn", model_kwargs={"image_size": 16}, epochs=2, batch_size=32, lr=0.05,
                      fisher_examples=16, group_examples=20)  # fmt: skip
    full = train(cfg, data)
    cols = {"train_acc_clean", "train_acc_noisy", "grad_sq_norm_clean", "grad_sq_norm_noisy",
            "grad_cosine_clean_noisy"}  # fmt: skip
    assert cols <= set(full.metrics[0])
    for r in full.metrics:
        assert all(math.isfinite(r[c]) for c in cols)
        n_clean, n_noisy = len(data.groups["clean"]), len(data.groups["noisy"])
        weighted = (r["train_acc_clean"] * n_clean + r["train_acc_noisy"] * n_noisy) / (n_clean + n_noisy)
        assert weighted == pytest.approx(r["train_acc"], abs=1e-12)
    assert full.summary["final_train_acc_noisy"] == full.metrics[-1]["train_acc_noisy"]
    # resumed after the first epoch: the same rows
    first = train(TrainConfig(**{**cfg.to_dict(), "epochs": 1}), data, checkpoint=tmp_path / "c.pt")
    assert first.status == "ok"
    ckpt = torch.load(tmp_path / "c.pt", weights_only=False)
    ckpt["config"]["epochs"] = 2
    ckpt["progress"]["status"] = "running"
    torch.save(ckpt, tmp_path / "c.pt")
    resumed = train(cfg, data, checkpoint=tmp_path / "c.pt")
    drop = {"seconds", "eval_seconds"}
    assert [{k: v for k, v in r.items() if k not in drop} for r in resumed.metrics] == [
        {k: v for k, v in r.items() if k not in drop} for r in full.metrics
    ]

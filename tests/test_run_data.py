"""A run's data files are checked against each other before any training (issue 21,
point 5): test vs training file (classes, their order, image size, channels, non-empty
splits), a noisy-label file vs its name, the run's fraction and its training file, and
archives holding a member twice. Every error names the file(s) and the mismatch."""

from __future__ import annotations

import io
import math
import tarfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

import fisherlab.experiment as experiment
from fisherlab.data import (DatasetFormatError, ImageDataset, check_run_data, make_synthetic, prepare_cifar,
                            prepare_tinyimagenet, save_dataset)
from fisherlab.data.checks import NOISE_NAME, changed_labels_bound, fraction_name
from fisherlab.data.noise import NoisyLabels, make_noisy_labels, prepare_noisy_labels, save_noisy_labels
from fisherlab.experiment import load_data, run_planned
from fisherlab.plan import build_plan
from test_plan import load
from test_prepare import ARCHIVE, FOLDER, SIZES10, _cifar10, _pickled
from test_tinyimagenet import SIZES as TINY_SIZES, _fake as _tiny_fake, _write_zip as _write_tiny_zip


def ds(n=40, classes=10, size=16, channels=3, seed=0, names=None, split="train"):
    d = make_synthetic(max(n, 1), num_classes=classes, image_size=size, seed=seed, split=split)
    x = d.x if channels == 3 else d.x[..., :1].copy()
    return ImageDataset(x[:n], d.y[:n], names or d.classes)


def write(tmp_path, train, test):
    paths = tmp_path / "train.npz", tmp_path / "test.npz"
    save_dataset(paths[0], train)
    save_dataset(paths[1], test)
    return paths


TEN = tuple(f"c{k}" for k in range(10))

# (what is wrong, train, test, val_size, the message, with {train} and {test} for the paths)
SPLIT_CASES = {
    "empty test": (ds(), ds(0, split="test"), 8, "{test} is empty (0 examples)"),
    "empty train": (ds(0), ds(split="test"), 0, "{train} is empty (0 examples)"),
    "20 classes vs 10": (ds(classes=10), ds(classes=20, split="test"), 8, "{test} has 20 classes but {train} has 10"),
    "32 px vs 16 px": (ds(size=16), ds(size=32, split="test"), 8, "{test} has 32x32 images but {train} has 16x16"),
    "grey vs RGB": (ds(channels=3), ds(channels=1, split="test"), 8, "{test} has 1 channel(s) but {train} has 3"),
    "classes in another order": (
        ds(names=TEN), ds(names=TEN[::-1], split="test"), 8,
        "{test} lists the same class names in another order than {train}: class 0 is 'c9' in {test} but 'c0' in {train} "
        "(label k must mean the same class in both)",
    ),
    "other class names": (
        ds(names=TEN), ds(names=TEN[:3] + ("cat",) + TEN[4:], split="test"), 8,
        "{test} lists other class names than {train}: class 3 is 'cat' in {test} but 'c3' in {train} "
        "(label k must mean the same class in both)",
    ),
    "no training split left": (ds(40), ds(split="test"), 40,
                               "val_size 40 leaves no training examples: {train} has 40 (val_size must be below that)"),
}  # fmt: skip


@pytest.mark.parametrize("case", SPLIT_CASES)
def test_a_test_file_that_does_not_fit_fails_in_load_data_naming_both_files(tmp_path, case):
    train, test, val_size, message = SPLIT_CASES[case]
    train_path, test_path = write(tmp_path, train, test)
    with pytest.raises(DatasetFormatError) as e:
        load_data(train_path, test_path, val_size=val_size)
    assert str(e.value) == message.format(train=train_path, test=test_path)


def test_matching_files_pass_and_every_problem_is_listed_at_once(tmp_path):
    train_path, test_path = write(tmp_path, ds(names=TEN), ds(names=TEN, split="test"))
    data = load_data(train_path, test_path, val_size=8)
    assert (len(data.train), len(data.val), len(data.test)) == (32, 8, 40)
    train_path, test_path = write(tmp_path, ds(), ds(0, classes=20, size=32, channels=1, split="test"))
    with pytest.raises(DatasetFormatError) as e:
        load_data(train_path, test_path, val_size=40)
    lines = str(e.value).splitlines()
    assert lines[0] == "5 problems with the data of this run:"
    assert lines[1:] == [f"- {test_path} is empty (0 examples)",
                         f"- val_size 40 leaves no training examples: {train_path} has 40 (val_size must be below that)",
                         f"- {test_path} has 20 classes but {train_path} has 10",
                         f"- {test_path} has 32x32 images but {train_path} has 16x16",
                         f"- {test_path} has 1 channel(s) but {train_path} has 3"]  # fmt: skip


def test_a_test_file_of_another_dtype_is_named(tmp_path):
    # dtype and label range are per-file properties: load_dataset refuses them, naming the file
    train_path, test_path = write(tmp_path, ds(), ds(split="test"))
    t = ds(split="test")
    np.savez(test_path, x=t.x.astype(np.float32), y=t.y, classes=np.asarray(t.classes))
    with pytest.raises(DatasetFormatError, match=f"^{test_path}: x must be a uint8 numpy array, got dtype float32"):
        load_data(train_path, test_path, val_size=8)
    np.savez(test_path, x=t.x, y=t.y + 10, classes=np.asarray(t.classes))
    with pytest.raises(DatasetFormatError, match=f"^{test_path}: labels out of range"):
        load_data(train_path, test_path, val_size=8)


# --- noisy-label files ------------------------------------------------------------------------


@pytest.fixture
def train_file(tmp_path):
    train_path, test_path = write(tmp_path, ds(400, classes=10), ds(40, classes=10, split="test"))
    (tmp_path / "noise").mkdir()
    return train_path, test_path, tmp_path / "noise"


def test_a_genuine_noise_file_named_as_the_plan_names_it_passes(train_file):
    train_path, test_path, noise = train_file
    prepare_noisy_labels(train_path, noise / "frac0.25_seed3.csv", 0.25, seed=3)
    data = load_data(train_path, test_path, val_size=40, noise_path=noise / "frac0.25_seed3.csv", noise_fraction=0.25)
    assert len(data.groups["noisy"]) + len(data.groups["clean"]) == 360


def test_noise_of_fraction_09_saved_as_025(train_file):
    train_path, test_path, noise = train_file
    path = noise / "frac0.25_seed0.csv"
    prepare_noisy_labels(train_path, path, 0.9, seed=0)
    with pytest.raises(DatasetFormatError) as e:
        load_data(train_path, test_path, val_size=40, noise_path=path)
    assert str(e.value) == f"{path} holds noise of fraction 0.9 but its name says 0.25"
    with pytest.raises(DatasetFormatError) as e:  # and the run's configured fraction
        load_data(train_path, test_path, val_size=40, noise_path=path, noise_fraction=0.25)
    assert str(e.value).splitlines()[1:] == [f"- {path} holds noise of fraction 0.9 but its name says 0.25",
                                             f"- {path} holds noise of fraction 0.9 but the run is configured for 0.25"]


def test_noise_of_another_seed_or_fraction_than_the_run(train_file):
    train_path, test_path, noise = train_file
    prepare_noisy_labels(train_path, noise / "frac0.5_seed1.csv", 0.5, seed=2)
    with pytest.raises(DatasetFormatError) as e:
        load_data(train_path, test_path, val_size=40, noise_path=noise / "frac0.5_seed1.csv")
    assert str(e.value) == f"{noise / 'frac0.5_seed1.csv'} was made with seed 2 but its name says seed 1"
    prepare_noisy_labels(train_path, noise / "frac0.5_seed2.csv", 0.5, seed=2)
    with pytest.raises(DatasetFormatError) as e:
        load_data(train_path, test_path, val_size=40, noise_path=noise / "frac0.5_seed2.csv", noise_fraction=0.25)
    assert str(e.value) == f"{noise / 'frac0.5_seed2.csv'} holds noise of fraction 0.5 but the run is configured for 0.25"


def test_noise_of_another_training_file(train_file):
    train_path, test_path, noise = train_file
    y = ds(400, classes=10).y
    fix = "; delete the noisy-label file to have the pipeline make it again from this training set"
    cases = {
        "longer": (make_noisy_labels(np.concatenate([y, y[:5]]), 10, 0.25, 0),
                   "{noise} vs {train}: the noisy-label file belongs to another dataset: it has 405 examples and "
                   "10 classes, the training set 400 and 10" + fix),
        "classes": (make_noisy_labels(y, 12, 0.25, 0),
                    "{noise} vs {train}: the noisy-label file belongs to another dataset: it has 400 examples and "
                    "12 classes, the training set 400 and 10" + fix),
        "labels": (make_noisy_labels(np.roll(y, 1), 10, 0.25, 0),
                   "{noise} vs {train}: the noisy-label file belongs to another dataset: its clean labels differ "
                   "from the training set's labels at "),
    }  # fmt: skip
    for name, (noisy, message) in cases.items():
        path = noise / f"{name}.csv"
        save_noisy_labels(path, noisy)
        with pytest.raises(DatasetFormatError) as e:
            load_data(train_path, test_path, val_size=40, noise_path=path)
        assert str(e.value).startswith(message.format(noise=path, train=train_path)), name


def test_replaced_labels_that_did_not_change_are_not_uniform_noise(train_file):
    # 200 of 400 marked replaced (fraction 0.5: load_noisy_labels accepts the count), but
    # only 100 of them changed, where uniform labels over 10 classes change 180 +- 4.2
    train_path, test_path, noise = train_file
    y = ds(400, classes=10).y
    replaced = np.arange(400) % 2 == 0
    label = np.where(replaced & (np.arange(400) % 4 == 0), (y + 1) % 10, y)
    path = noise / "frac0.5_seed0.csv"
    save_noisy_labels(path, NoisyLabels(y, label, replaced, 0.5, 0, 10))
    with pytest.raises(DatasetFormatError) as e:
        load_data(train_path, test_path, val_size=40, noise_path=path, noise_fraction=0.5)
    assert str(e.value).startswith(f"{path} changes 100 of the 200 labels it marks replaced (fraction 0.5 of 400), "
                                   "but labels drawn uniformly from 10 classes change 180.0 of them in expectation")


def _binomial_tail(n, p, t):
    """P(|K - n p| > t) for K ~ Binomial(n, p), by summing the pmf (log-gamma)."""
    total = 0.0
    for k in range(n + 1):
        if abs(k - n * p) > t:
            log_pmf = (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
                       + (k * math.log(p) if k else 0.0) + ((n - k) * math.log1p(-p) if n - k else 0.0))  # fmt: skip
            total += math.exp(log_pmf)
    return total


@pytest.mark.parametrize("n, c", [(1, 10), (20, 2), (100, 10), (1000, 100), (2000, 3)])
def test_the_changed_labels_bound_against_the_exact_binomial_tail(n, c):
    bound = changed_labels_bound(n, c)
    assert _binomial_tail(n, 1 - 1 / c, bound) <= 1e-9
    if n >= 100:  # and not loose: within 30% of the exact two-sided 1e-9 quantile
        assert _binomial_tail(n, 1 - 1 / c, bound / 1.3) > 1e-9


def test_genuine_noise_files_never_raise_the_alarm():
    y = np.random.default_rng(0).integers(0, 3, 300).astype(np.int64)
    train = ImageDataset(np.zeros((300, 2, 2, 1), np.uint8), y, ("a", "b", "c"))
    for seed in range(200):
        for fraction in (0.1, 0.5, 1.0):
            noisy = make_noisy_labels(y, 3, fraction, seed)
            check_run_data(train, train, noise=noisy, noise_path=f"frac{fraction:.4g}_seed{seed}.csv",
                           noise_fraction=fraction)  # fmt: skip


# --- no training before the checks: a planned run of the demo config -------------------------


def _no_training(monkeypatch):
    calls = []

    def train(*args, **kwargs):
        calls.append(args)
        raise AssertionError("train was called")

    monkeypatch.setattr(experiment, "train", train)
    return calls


def _demo_plan(tmp_path):
    cfg = load("configs/demo.yaml", {"data": {"root": str(tmp_path / "data")}})
    return build_plan(cfg)


def test_a_planned_run_with_a_bad_test_file_fails_before_training(tmp_path, monkeypatch):
    calls = _no_training(monkeypatch)
    spec = _demo_plan(tmp_path).run("demo_digits/lrgrid/lr0.03/seed0")
    root = Path(spec.inputs["train"]).parent
    root.mkdir(parents=True)
    save_dataset(spec.inputs["train"], ds(400, classes=10, channels=1))
    save_dataset(spec.inputs["test"], ds(40, classes=20, channels=1, split="test"))
    with pytest.raises(DatasetFormatError) as e:
        run_planned(spec, spec.inputs, device="cpu", checkpoint=tmp_path / "ck.pt", out_dir=tmp_path / "run",
                    log=lambda s: None)  # fmt: skip
    assert str(e.value) == f"{spec.inputs['test']} has 20 classes but {spec.inputs['train']} has 10"
    assert calls == [] and not (tmp_path / "ck.pt").exists() and not (tmp_path / "run").exists()


def test_a_planned_noisy_run_with_a_mislabelled_noise_file_fails_before_training(tmp_path, monkeypatch):
    calls = _no_training(monkeypatch)
    spec = _demo_plan(tmp_path).run("demo_noisy/noise0.25/baseline/seed0")
    assert spec.fields["label_noise"] == 0.25 and spec.inputs["noise"].endswith("/noise/frac0.25_seed0.csv")
    Path(spec.inputs["noise"]).parent.mkdir(parents=True)
    save_dataset(spec.inputs["train"], ds(400, classes=10, channels=1))
    save_dataset(spec.inputs["test"], ds(40, classes=10, channels=1, split="test"))
    prepare_noisy_labels(spec.inputs["train"], spec.inputs["noise"], 0.9, seed=0)  # 0.9 saved as 0.25
    with pytest.raises(DatasetFormatError, match="noise of fraction 0.9 but the run is configured for 0.25"):
        run_planned(spec, spec.inputs, device="cpu", checkpoint=tmp_path / "ck.pt", out_dir=tmp_path / "run",
                    log=lambda s: None)  # fmt: skip
    assert calls == [] and not (tmp_path / "ck.pt").exists() and not (tmp_path / "run").exists()
    # the genuine file passes the checks and reaches training
    prepare_noisy_labels(spec.inputs["train"], spec.inputs["noise"], 0.25, seed=0)
    with pytest.raises(AssertionError, match="train was called"):
        run_planned(spec, spec.inputs, device="cpu", checkpoint=tmp_path / "ck.pt", out_dir=tmp_path / "run",
                    log=lambda s: None)  # fmt: skip
    assert len(calls) == 1


# --- archives holding a member twice ----------------------------------------------------------


@pytest.mark.parametrize("second", ["cifar-10-batches-py/data_batch_2", "./cifar-10-batches-py/data_batch_2"])
def test_a_cifar_tarball_holding_a_member_twice_is_refused(tmp_path, second):
    files = _pickled(_cifar10())
    tarball = tmp_path / ARCHIVE["cifar10"]
    with tarfile.open(tarball, "w:gz") as tar:
        for name, blob in [*((f"{FOLDER['cifar10']}/{m}", b) for m, b in files.items()),
                           (second, _pickled(_cifar10(seed=1))["data_batch_2"])]:  # fmt: skip
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    with pytest.raises(DatasetFormatError) as e:
        prepare_cifar("cifar10", tmp_path / "out", source=tarball, expected_sizes=SIZES10)
    assert str(e.value).startswith(f"{tarball}: the archive holds member cifar-10-batches-py/data_batch_2 more than once")
    assert not (tmp_path / "out").exists()


def test_a_tinyimagenet_zip_holding_a_member_twice_is_refused(tmp_path):
    fake = _tiny_fake()
    archive = _write_tiny_zip(tmp_path / "tiny-imagenet-200.zip", fake["members"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile's "Duplicate name"
        with zipfile.ZipFile(archive, "a") as zf:
            zf.writestr("tiny-imagenet-200/wnids.txt", fake["members"]["wnids.txt"][::-1])
    with pytest.raises(DatasetFormatError) as e:
        prepare_tinyimagenet(tmp_path / "out", source=archive, expected_sizes=TINY_SIZES)
    assert str(e.value).startswith(f"{archive}: the archive holds member tiny-imagenet-200/wnids.txt more than once")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("fraction", [0.25, 0.5, 0.8, 0.1234567, 1e-5])
def test_the_noise_file_the_plan_names_is_the_name_the_check_reads(fraction):
    """The plan writes a noise file's name (``plan.settings.noise_file``); the check parses
    it (``NOISE_NAME``) with the plan's own number format, so the two cannot drift apart."""
    from fisherlab.plan.settings import noise_file

    name = Path(noise_file({"data": {"root": "results/data"}}, "cifar10", fraction, 3)).name
    parsed = NOISE_NAME.match(name)
    assert parsed and int(parsed["seed"]) == 3, name
    assert fraction_name(float(parsed["fraction"])) == fraction_name(fraction), name

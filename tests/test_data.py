"""Tests for fisherlab.data: format, split, synthetic data, augmentation and on-device loading."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_same_dataset
import torch

from fisherlab.data import (
    DatasetFormatError,
    DeviceData,
    ImageDataset,
    augment_batch,
    channel_stats,
    load_dataset,
    make_synthetic,
    save_dataset,
    split_validation,
)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FISHERLAB_SHARED_DATA", REPO.parent / "shared" / "data"))


def _tiny(n: int = 12, size: int = 8, channels: int = 3, num_classes: int = 3, seed: int = 0) -> ImageDataset:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, size, size, channels), dtype=np.uint8)
    y = np.arange(n, dtype=np.int64) % num_classes
    return ImageDataset(x, y, tuple(f"c{k}" for k in range(num_classes)))


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- ImageDataset ----------------------------------------------------------------------


def test_image_dataset_basics() -> None:
    ds = _tiny()
    assert len(ds) == 12 and ds.num_classes == 3
    sub = ds.subset([3, 0, 5])
    np.testing.assert_array_equal(sub.x, ds.x[[3, 0, 5]])
    np.testing.assert_array_equal(sub.y, ds.y[[3, 0, 5]])
    assert sub.classes == ds.classes


@pytest.mark.parametrize(
    ("x", "y", "classes", "match"),
    [
        (np.zeros((2, 4, 4, 3), np.float32), np.zeros(2, np.int64), ("a",), "uint8"),
        (np.zeros((2, 4, 4), np.uint8), np.zeros(2, np.int64), ("a",), "ndim 4"),
        (np.zeros((2, 4, 4, 2), np.uint8), np.zeros(2, np.int64), ("a",), "channels"),
        (np.zeros((2, 4, 4, 3), np.uint8), np.zeros(2, np.int32), ("a",), "int64"),
        (np.zeros((2, 4, 4, 3), np.uint8), np.zeros((2, 1), np.int64), ("a",), "ndim 1"),
        (np.zeros((2, 4, 4, 3), np.uint8), np.zeros(3, np.int64), ("a",), "must match"),
        (np.zeros((2, 4, 4, 3), np.uint8), np.array([0, 2], np.int64), ("a", "b"), "out of range"),
        (np.zeros((2, 4, 4, 3), np.uint8), np.array([0, -1], np.int64), ("a", "b"), "out of range"),
        (np.zeros((2, 4, 4, 3), np.uint8), np.zeros(2, np.int64), (), "at least one"),
        (np.zeros((2, 4, 4, 3), np.uint8), np.zeros(2, np.int64), (1, 2), "str"),
    ],
)
def test_image_dataset_validation(x: np.ndarray, y: np.ndarray, classes: tuple, match: str) -> None:
    with pytest.raises(DatasetFormatError, match=match):
        ImageDataset(x, y, classes)


def test_dataset_format_error_is_value_error() -> None:
    assert issubclass(DatasetFormatError, ValueError)


# --- save / load -----------------------------------------------------------------------


def test_save_load_round_trip(tmp_path: Path) -> None:
    ds = _tiny(channels=1)
    path = tmp_path / "split.npz"
    save_dataset(path, ds)
    back = load_dataset(path)
    assert_same_dataset(back, ds)
    assert back.x.dtype == np.uint8 and back.y.dtype == np.int64
    assert os.listdir(tmp_path) == ["split.npz"]  # no temporary file left behind


def test_save_overwrites_atomically(tmp_path: Path) -> None:
    path = tmp_path / "split.npz"
    save_dataset(path, _tiny(seed=0))
    new = _tiny(seed=1)
    save_dataset(path, new)
    np.testing.assert_array_equal(load_dataset(path).x, new.x)
    assert os.listdir(tmp_path) == ["split.npz"]


def _write_npz(path: Path, **arrays: np.ndarray) -> Path:
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def _good_arrays() -> dict[str, np.ndarray]:
    ds = _tiny()
    return {"x": ds.x, "y": ds.y, "classes": np.asarray(ds.classes)}


def test_load_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.npz"
    with pytest.raises(DatasetFormatError, match="no such dataset file") as info:
        load_dataset(path)
    assert str(path) in str(info.value)


def test_load_truncated_file(tmp_path: Path) -> None:
    path = _write_npz(tmp_path / "t.npz", **_good_arrays())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetFormatError, match="corrupt or truncated") as info:
        load_dataset(path)
    assert str(path) in str(info.value)


def test_load_not_a_zip(tmp_path: Path) -> None:
    path = tmp_path / "junk.npz"
    path.write_bytes(b"not a zip file at all")
    with pytest.raises(DatasetFormatError, match="corrupt or truncated"):
        load_dataset(path)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"y": None}, "missing key"),
        ({"x": np.zeros((12, 8, 8, 3), np.float32)}, "uint8"),
        ({"y": np.zeros(12, np.float64)}, "int64"),
        ({"x": np.zeros((12, 8, 8), np.uint8)}, "ndim 4"),
        ({"y": np.zeros((12, 1), np.int64)}, "ndim 1"),
        ({"y": np.full(12, 3, np.int64)}, "out of range"),
        ({"classes": np.arange(3)}, "unicode"),
        ({"classes": np.array(["a", "b", "c", "d"], dtype=object)}, "corrupt"),  # pickled: refused
    ],
)
def test_load_bad_content(tmp_path: Path, change: dict, match: str) -> None:
    arrays = {**_good_arrays(), **change}
    path = _write_npz(tmp_path / "bad.npz", **{k: v for k, v in arrays.items() if v is not None})
    with pytest.raises(DatasetFormatError, match=match) as info:
        load_dataset(path)
    assert str(path) in str(info.value)


def test_load_shared_cifar_subset() -> None:
    path = SHARED_DATA / "cifar10-subset-train.npz"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    ds = load_dataset(path)
    assert ds.x.shape == (10000, 32, 32, 3)
    assert ds.num_classes == 10 and ds.classes[0] == "airplane"
    np.testing.assert_array_equal(np.bincount(ds.y), np.full(10, 1000))


# --- split_validation ------------------------------------------------------------------


def test_split_validation_partition() -> None:
    train, val = split_validation(100, 30, seed=0)
    assert train.dtype == np.int64 and val.dtype == np.int64
    assert len(train) == 70 and len(val) == 30
    assert not set(train) & set(val)
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(100))
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)


def test_split_validation_seeding() -> None:
    a = split_validation(1000, 100, seed=1)
    b = split_validation(1000, 100, seed=1)
    c = split_validation(1000, 100, seed=2)
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_split_validation_empty_val() -> None:
    train, val = split_validation(10, 0, seed=0)
    np.testing.assert_array_equal(train, np.arange(10))
    assert len(val) == 0 and val.dtype == np.int64


@pytest.mark.parametrize(("n", "n_val"), [(10, -1), (10, 10), (10, 11), (0, 0)])
def test_split_validation_bad_args(n: int, n_val: int) -> None:
    with pytest.raises(ValueError, match="n_val"):
        split_validation(n, n_val, seed=0)


# --- make_synthetic --------------------------------------------------------------------


def test_synthetic_shapes_and_balance() -> None:
    ds = make_synthetic(100, num_classes=10, image_size=16, channels=3, seed=0)
    assert ds.x.shape == (100, 16, 16, 3) and ds.x.dtype == np.uint8
    assert ds.y.shape == (100,) and ds.y.dtype == np.int64
    assert ds.classes == tuple(f"class{k}" for k in range(10))
    np.testing.assert_array_equal(np.bincount(ds.y), np.full(10, 10))
    grey = make_synthetic(7, num_classes=3, image_size=8, channels=1)
    assert grey.x.shape == (7, 8, 8, 1)
    assert sorted(np.bincount(grey.y)) == [2, 2, 3]


def test_synthetic_determinism() -> None:
    a, b = make_synthetic(50, seed=3), make_synthetic(50, seed=3)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, b.y)
    assert not np.array_equal(a.x, make_synthetic(50, seed=4).x)


def test_synthetic_bad_args() -> None:
    with pytest.raises(ValueError, match="channels"):
        make_synthetic(10, channels=2)


def _flat(ds: ImageDataset) -> np.ndarray:
    return ds.x.reshape(len(ds), -1).astype(np.float64)


def _class_means(ds: ImageDataset) -> np.ndarray:
    return np.stack([_flat(ds)[ds.y == k].mean(axis=0) for k in range(ds.num_classes)])


@pytest.fixture(scope="module")
def synthetic_pair() -> tuple[ImageDataset, ImageDataset]:
    return make_synthetic(2000, seed=0, split="train"), make_synthetic(1000, seed=0, split="test")


def test_synthetic_train_test_share_prototypes(synthetic_pair: tuple[ImageDataset, ImageDataset]) -> None:
    train, test = synthetic_pair
    assert not np.array_equal(train.x[:1000], test.x)
    train_means, test_means = _class_means(train), _class_means(test)
    for k in range(10):
        assert np.corrcoef(train_means[k], test_means[k])[0, 1] > 0.9


def test_synthetic_learnable_but_not_trivial(synthetic_pair: tuple[ImageDataset, ImageDataset]) -> None:
    train, test = synthetic_pair
    means = _class_means(train)
    x = _flat(test)
    dists = (x**2).sum(1)[:, None] - 2 * x @ means.T + (means**2).sum(1)[None, :]
    accuracy = (dists.argmin(axis=1) == test.y).mean()
    assert 0.5 < accuracy < 0.98


# --- channel_stats ---------------------------------------------------------------------


def test_channel_stats_matches_numpy() -> None:
    ds = make_synthetic(2500, image_size=8, seed=1)  # > one chunk
    mean, std = channel_stats(ds)
    x = ds.x.astype(np.float64) / 255.0
    np.testing.assert_allclose(mean, x.mean(axis=(0, 1, 2)), rtol=1e-10)
    np.testing.assert_allclose(std, x.std(axis=(0, 1, 2)), rtol=1e-8)
    assert all(isinstance(v, float) for v in mean + std)


# --- augment_batch ---------------------------------------------------------------------


def _images(b: int = 16, size: int = 8, channels: int = 3, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(1, 256, size=(b, size, size, channels), dtype=np.uint8))


def test_augment_preserves_shape_and_dtype() -> None:
    x = _images()
    out = augment_batch(x, _generator(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    xf = x.float()
    assert augment_batch(xf, _generator(0)).dtype == torch.float32


def test_augment_determinism() -> None:
    x = _images()
    a, b = augment_batch(x, _generator(0)), augment_batch(x, _generator(0))
    assert torch.equal(a, b)
    assert not torch.equal(a, augment_batch(x, _generator(1)))


def test_augment_identity_without_pad_or_flip() -> None:
    x = _images()
    assert torch.equal(augment_batch(x, _generator(0), pad=0, flip=False), x)


def test_augment_outputs_are_padded_crops() -> None:
    pad = 4
    x = _images(b=12, size=8)
    out = augment_batch(x, _generator(5), pad=pad)
    padded = torch.nn.functional.pad(x, (0, 0, pad, pad, pad, pad))
    size = x.shape[1]
    for i in range(len(x)):
        candidates = [
            window.flip(1) if flipped else window
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            for window in [padded[i, dy : dy + size, dx : dx + size]]
            for flipped in (False, True)
        ]
        assert any(torch.equal(out[i], c) for c in candidates), f"example {i} is not a padded crop"


def test_augment_flip_rate() -> None:
    # With pad=0, a flipped example equals its mirror image; images are asymmetric.
    x = _images(b=4000, size=4, channels=1)
    out = augment_batch(x, _generator(0), pad=0)
    flipped = (out == x.flip(2)).flatten(1).all(1) & ~(out == x).flatten(1).all(1)
    assert 0.45 < flipped.float().mean().item() < 0.55


def test_augment_rejects_generator_on_other_device() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    with pytest.raises(ValueError, match="generator is on"):
        augment_batch(_images(), torch.Generator(device="cuda"))


# --- DeviceData ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def device_data() -> DeviceData:
    return DeviceData(make_synthetic(500, image_size=16, seed=2))


def test_device_data_attributes(device_data: DeviceData) -> None:
    assert len(device_data) == 500 and device_data.num_classes == 10
    assert device_data.x.dtype == torch.uint8 and device_data.x.shape == (500, 16, 16, 3)
    assert device_data.y.dtype == torch.int64


def test_normalise_standardises_channels(device_data: DeviceData) -> None:
    z = device_data.normalise(device_data.x)
    assert z.dtype == torch.float32 and z.shape == (500, 3, 16, 16) and z.is_contiguous()
    z64 = z.double()
    zeros, ones = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    torch.testing.assert_close(z64.mean(dim=(0, 2, 3)), zeros, atol=1e-4, rtol=0)
    torch.testing.assert_close(z64.std(dim=(0, 2, 3), correction=0), ones, atol=1e-4, rtol=0)


def test_normalise_uses_given_stats() -> None:
    data = DeviceData(_tiny(), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    expected = (data.x.permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25
    torch.testing.assert_close(data.normalise(data.x), expected)


def test_device_data_bad_stats() -> None:
    with pytest.raises(ValueError, match="3 values"):
        DeviceData(_tiny(), mean=(0.5,), std=(0.2,))
    with pytest.raises(ValueError, match="positive"):
        DeviceData(_tiny(), mean=(0.5,) * 3, std=(0.2, 0.0, 0.2))


@pytest.mark.parametrize(("drop_last", "sizes"), [(False, [128, 128, 128, 116]), (True, [128, 128, 128])])
def test_batches_cover_epoch(drop_last: bool, sizes: list[int]) -> None:
    data = DeviceData(_tiny(n=500, num_classes=500))  # label == index identifies each example
    labels = []
    for x, y in data.batches(128, _generator(0), drop_last=drop_last):
        assert x.shape == (len(y), 3, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
        labels.append(y)
    assert [len(y) for y in labels] == sizes
    seen = torch.cat(labels).tolist()
    assert len(set(seen)) == len(seen) == sum(sizes)
    assert seen != sorted(seen)  # shuffled
    if not drop_last:
        assert sorted(seen) == list(range(500))


def test_batches_deterministic(device_data: DeviceData) -> None:
    a = [y for _, y in device_data.batches(64, _generator(3))]
    b = [y for _, y in device_data.batches(64, _generator(3))]
    c = [y for _, y in device_data.batches(64, _generator(4))]
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not all(torch.equal(u, v) for u, v in zip(a, c))


def test_batches_without_augmentation_are_normalised_gathers() -> None:
    data = DeviceData(_tiny(n=40))
    gen = _generator(7)
    order = torch.randperm(40, generator=_generator(7))
    for i, (x, y) in enumerate(data.batches(16, gen)):
        idx = order[16 * i : 16 * (i + 1)]
        torch.testing.assert_close(x, data.normalise(data.x[idx]), rtol=0, atol=0)
        assert torch.equal(y, data.y[idx])


def test_batches_with_augmentation_match_augment_batch() -> None:
    data = DeviceData(_tiny(n=40), augment=True)
    order = torch.randperm(40, generator=(ref := _generator(9)))
    expected = data.normalise(augment_batch(data.x[order[:16]], ref, pad=4))
    x, _ = next(data.batches(16, _generator(9)))
    torch.testing.assert_close(x, expected, rtol=0, atol=0)
    assert not torch.equal(x, data.normalise(data.x[order[:16]]))


def test_flip_only_augmentation_mirrors_whole_images_and_never_shifts() -> None:
    data = DeviceData(_tiny(n=40), augment="flip")
    order = torch.randperm(40, generator=(ref := _generator(3)))
    x, _ = next(data.batches(40, _generator(3)))
    plain = data.normalise(data.x[order])
    mirrored = plain.flip(3)
    same = (x == plain).flatten(1).all(1)
    flipped = (x == mirrored).flatten(1).all(1)
    assert bool((same | flipped).all())  # each image is itself or its mirror: no crop
    assert 5 < int(flipped.sum()) < 35 and 5 < int(same.sum()) < 35
    with pytest.raises(ValueError, match="augment"):
        DeviceData(_tiny(n=4), augment="rotate")


def test_batch_and_eval_batches() -> None:
    data = DeviceData(_tiny(n=40), augment=True)
    x, y = data.batch([3, 1])  # no generator: no augmentation
    torch.testing.assert_close(x, data.normalise(data.x[[3, 1]]))
    assert y.tolist() == data.y[[3, 1]].tolist()
    evals = list(data.eval_batches(16))
    assert [len(y) for _, y in evals] == [16, 16, 8]
    torch.testing.assert_close(torch.cat([x for x, _ in evals]), data.normalise(data.x))
    assert torch.equal(torch.cat([y for _, y in evals]), data.y)


def test_batches_argument_errors(device_data: DeviceData) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        device_data.batches(0, _generator(0))
    with pytest.raises(ValueError, match="needs a generator"):
        device_data.batches(8, None)
    assert len(list(device_data.batches(100, None, shuffle=False))) == 5

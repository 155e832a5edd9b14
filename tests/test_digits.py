"""Tests for fisherlab.data.digits: scikit-learn's bundled digits in the canonical format."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_same_dataset

from fisherlab.data import DatasetFormatError, load_dataset
from fisherlab.data import digits as dg

sklearn_datasets = pytest.importorskip("sklearn.datasets")


@pytest.fixture(scope="module")
def reference():
    """scikit-learn's own loader: images (1797, 8, 8) float in 0..16, labels."""
    return sklearn_datasets.load_digits()


def test_read_digits_matches_sklearn_loader(reference) -> None:
    ds = dg.read_digits()
    assert ds.x.shape == (dg.NUM_IMAGES, 8, 8, 1) and ds.x.dtype == np.uint8
    assert ds.y.dtype == np.int64 and ds.classes == tuple("0123456789")
    np.testing.assert_array_equal(ds.y, reference.target)
    # independent conversion, one pixel at a time
    expected = np.array([[int(round(v * 255 / 16)) for v in row] for row in reference.data], dtype=np.uint8)
    np.testing.assert_array_equal(ds.x.reshape(len(ds), 64), expected)
    assert ds.x.min() == 0 and ds.x.max() == 255
    assert np.bincount(ds.y).min() >= 170  # about 180 images per class


def test_upsample_is_nearest_neighbour() -> None:
    ds = dg.read_digits()
    up = dg.upsample(ds.subset(np.arange(5)), 2)
    assert up.x.shape == (5, 16, 16, 1)
    for n in range(5):
        for i in range(16):
            for j in range(16):
                assert up.x[n, i, j, 0] == ds.x[n, i // 2, j // 2, 0]
    np.testing.assert_array_equal(up.y, ds.y[:5])
    assert dg.upsample(ds, 1).x.shape == ds.x.shape
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError):
            dg.upsample(ds, bad)


def test_make_digits_split() -> None:
    full = dg.upsample(dg.read_digits(), 2)
    train, test = dg.make_digits(n_test=497, seed=3)
    assert len(train) == 1300 and len(test) == 497
    assert train.x.shape[1:] == (16, 16, 1)
    perm = np.random.default_rng(3).permutation(dg.NUM_IMAGES)
    np.testing.assert_array_equal(test.x, full.x[perm[:497]])
    np.testing.assert_array_equal(train.y, full.y[perm[497:]])
    again, _ = dg.make_digits(n_test=497, seed=3)
    np.testing.assert_array_equal(again.x, train.x)
    other, _ = dg.make_digits(n_test=497, seed=4)
    assert not np.array_equal(other.y, train.y)
    for bad in (0, dg.NUM_IMAGES):
        with pytest.raises(ValueError):
            dg.make_digits(n_test=bad)


def test_prepare_digits_round_trip(tmp_path: Path) -> None:
    paths = dg.prepare_digits(tmp_path / "digits", n_test=100, seed=1, factor=2)
    ref_train, ref_test = dg.make_digits(n_test=100, seed=1, factor=2)
    for path, ref in zip(paths, (ref_train, ref_test)):
        got = load_dataset(path)
        assert_same_dataset(got, ref)


def _write_csv(path: Path, rows: list[list[float]]) -> Path:
    with gzip.open(path, "wt") as f:
        for row in rows:
            f.write(",".join(str(v) for v in row) + "\n")
    return path


def test_read_digits_rejects_bad_files(tmp_path: Path) -> None:
    good = [[0.0] * 64 + [3.0], [16.0] * 64 + [9.0]]
    ds = dg.read_digits(_write_csv(tmp_path / "ok.csv.gz", good))
    assert ds.y.tolist() == [3, 9] and ds.x[1].min() == 255
    bad = {
        "columns": [[0.0] * 63 + [3.0]],
        "pixel": [[17.0] + [0.0] * 63 + [3.0]],
        "label": [[0.0] * 64 + [10.0]],
        "fraction": [[0.5] + [0.0] * 63 + [3.0]],
    }
    for name, rows in bad.items():
        with pytest.raises(DatasetFormatError):
            dg.read_digits(_write_csv(tmp_path / f"{name}.csv.gz", rows))


def test_missing_sklearn_names_the_dependency(monkeypatch) -> None:
    monkeypatch.setattr(dg.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="scikit-learn"):
        dg.digits_csv_path()


def test_simple_cnn_takes_upsampled_digits() -> None:
    torch = pytest.importorskip("torch")
    from fisherlab.data import DeviceData
    from fisherlab.models import build_model

    train, _ = dg.make_digits(n_test=497, seed=0)
    x, y = DeviceData(train.subset(np.arange(8))).batch(np.arange(8))
    model = build_model("simple_cnn", num_classes=10, image_size=16, in_channels=1)
    assert model(x).shape == (8, 10) and torch.isfinite(model(x)).all()

"""Tests for fisherlab.data.imagenet: a local ILSVRC2012 folder -> canonical .npz, box-resized to 32x32.

Every dataset here is a small fake built in ``tmp_path`` in the real layouts
(``train/<wnid>/<wnid>_<n>.JPEG``; ``val/<wnid>/ILSVRC2012_val_<8 digits>.JPEG`` or
``val/ILSVRC2012_val_<8 digits>.JPEG`` with Kaggle's ``LOC_val_solution.csv``; and the
Kaggle ``ILSVRC/Data/CLS-LOC/`` tree), with real JPEGs of several sizes and aspect ratios,
one greyscale, one CMYK and one PNG named ``.JPEG`` (all three occur in ILSVRC2012).

Pixels are compared with independent references computed in numpy from the JPEG decoded
on its own: exact k x k block means where the size is a multiple of 32, and the exact
area average (within a bound, on smooth content) for other sizes.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_same_dataset
from PIL import Image

from fisherlab.data import (
    DatasetFormatError,
    load_dataset,
    prepare_imagenet,
    read_imagenet,
)

# Written in this order; the class index is the sorted order of the wnids (ImageFolder's).
WNIDS_WRITTEN = ["n04067472", "n01443537", "n02124075"]
WNIDS = sorted(WNIDS_WRITTEN)
# (file number, (width, height), kind) per train image; ImageFolder sorts file names as strings,
# so "_10026" comes before "_2".
TRAIN = {
    "n04067472": [(2, (80, 60), "smooth"), (10026, (96, 64), "smooth"), (7, (50, 70), "grey")],
    "n01443537": [(5, (64, 64), "smooth"), (31, (45, 33), "constant"), (300, (120, 90), "cmyk")],
    "n02124075": [(1, (33, 47), "smooth"), (12, (96, 96), "png")],
}
# val image number -> (wnid, (width, height))
VAL = {
    1: ("n02124075", (80, 60)), 2: ("n01443537", (64, 96)), 3: ("n04067472", (70, 50)),
    4: ("n01443537", (50, 50)), 5: ("n02124075", (96, 64)), 6: ("n04067472", (32, 32)),
}
SIZES = (sum(len(v) for v in TRAIN.values()), len(VAL))


def _content(seed: int, w: int, h: int, kind: str) -> np.ndarray:
    """Smooth content (about one wave across the image), a constant colour, or greyscale."""
    rng = np.random.default_rng(seed)
    if kind == "constant":
        return np.broadcast_to(rng.integers(30, 220, 3).astype(np.uint8), (h, w, 3)).copy()
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    chans = []
    for _ in range(1 if kind == "grey" else 3):
        base, amp, ph = rng.uniform(70, 180), rng.uniform(15, 40), rng.uniform(0, 6)
        chans.append(base + amp * np.sin(2 * np.pi * (0.6 * xx / w + 0.4 * yy / h) + ph))
    img = np.clip(np.round(np.stack(chans, -1)), 0, 255).astype(np.uint8)
    return img[..., 0] if kind == "grey" else img


def _encode(img: np.ndarray, kind: str) -> bytes:
    buf = io.BytesIO()
    pil = Image.fromarray(img)
    if kind == "png":
        pil.save(buf, format="PNG")  # a PNG behind a .JPEG name, as n02105855_2933.JPEG
    elif kind == "cmyk":
        pil.convert("CMYK").save(buf, format="JPEG", quality=95)
    else:
        pil.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _decoded(blob: bytes) -> np.ndarray:
    """The independent reference decode, RGB uint8 (H, W, 3)."""
    return np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"))


def _fake() -> dict:
    files: dict[str, tuple[bytes, str]] = {}  # relative path (train/<wnid>/name or val/name) -> (bytes, kind)
    seed = 0
    for wnid in WNIDS_WRITTEN:
        for n, (w, h), kind in TRAIN[wnid]:
            files[f"train/{wnid}/{wnid}_{n}.JPEG"] = (_encode(_content(seed := seed + 1, w, h, kind), kind), kind)
    for k, (wnid, (w, h)) in VAL.items():
        blob = _encode(_content(seed := seed + 1, w, h, "smooth"), "jpeg")
        files[f"val/ILSVRC2012_val_{k:08d}.JPEG"] = (blob, "smooth")
    train = sorted(((rel, WNIDS.index(rel.split("/")[1])) for rel in files if rel.startswith("train/")),
                   key=lambda t: (t[1], t[0]))
    val = sorted(((f"val/ILSVRC2012_val_{k:08d}.JPEG", WNIDS.index(w)) for k, (w, _) in VAL.items()),
                 key=lambda t: (t[1], t[0]))
    return {"files": files, "train": train, "val": val}


def _solution_csv(rows: list[tuple[str, str]]) -> str:
    lines = ["ImageId,PredictionString"]
    lines += [f"{stem},{wnid} 10 20 30 40 {wnid} 1 2 3 4" for stem, wnid in rows]
    return "\n".join(lines) + "\n"


def _write(root: Path, fake: dict, val_layout: str = "sorted") -> Path:
    """Write the fake under ``root``: val sorted into val/<wnid>/, or raw val/*.JPEG plus LOC_val_solution.csv."""
    for rel, (blob, _) in fake["files"].items():
        path = root / rel
        if rel.startswith("val/") and val_layout == "sorted":
            k = int(rel[-13:-5])
            path = root / "val" / VAL[k][0] / path.name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blob)
    if val_layout == "raw":
        rows = [(f"ILSVRC2012_val_{k:08d}", w) for k, (w, _) in sorted(VAL.items(), key=lambda t: -t[0])]
        (root / "LOC_val_solution.csv").write_text(_solution_csv(rows))
    return root


def _area_average(img: np.ndarray, size: int) -> np.ndarray:
    """Exact area-weighted box average of ``img`` (H, W, C) onto a size x size grid."""

    def weights(n_in: int) -> np.ndarray:
        s = n_in / size
        edges = np.arange(n_in + 1)
        lo, hi = np.arange(size)[:, None] * s, (np.arange(size)[:, None] + 1) * s
        m = np.clip(np.minimum(hi, edges[1:]) - np.maximum(lo, edges[:-1]), 0, None)
        return m / m.sum(1, keepdims=True)

    h, w, _ = img.shape
    return np.einsum("ih,hwc,jw->ijc", weights(h), img.astype(np.float64), weights(w))


def _check_pixels(x: np.ndarray, expected: list, fake: dict) -> None:
    for i, (rel, _) in enumerate(expected):
        blob, kind = fake["files"][rel]
        ref_img = _decoded(blob)
        h, w, _ = ref_img.shape
        got = x[i].astype(np.float64)
        if h % 32 == 0 and w % 32 == 0:  # integer ratio: the block means, rounded to the nearest level
            blocks = ref_img.astype(np.float64).reshape(32, h // 32, 32, w // 32, 3).mean(axis=(1, 3))
            # (Pillow's reduce() divides in fixed point: for 3x3 blocks it can be 0.56 off, never a level)
            assert np.abs(got - blocks).max() < 0.6, rel
        else:
            # Pillow's BOX gives each source pixel wholly to one output pixel, so its footprint differs
            # from the exact one by up to half a source pixel at each end, per axis; with one rounding
            # after each pass that bounds the gap to the exact area average by
            # 1 + (largest step between neighbouring pixels along x + along y) / 2 on smooth content.
            area = _area_average(ref_img, 32)
            f = ref_img.astype(np.float64)
            steps = np.abs(np.diff(f, axis=1)).max() + np.abs(np.diff(f, axis=0)).max()
            assert np.abs(got - area).max() <= 1.0 + steps / 2, rel
            assert np.abs(got - area).mean() <= 1.0, rel
        if kind == "grey":
            assert (x[i, ..., 0] == x[i, ..., 1]).all() and (x[i, ..., 1] == x[i, ..., 2]).all()


# --- the whole preparation -----------------------------------------------------------------------


def test_prepare_sorted_val(tmp_path: Path) -> None:
    fake = _fake()
    source = _write(tmp_path / "imagenet", fake)
    out = tmp_path / "out"
    paths = prepare_imagenet(source, out, expected_sizes=SIZES)
    assert paths == (out / "train.npz", out / "test.npz")
    assert sorted(p.name for p in out.iterdir()) == ["test.npz", "train.npz"]
    train, test = load_dataset(paths[0]), load_dataset(paths[1])
    assert train.classes == tuple(WNIDS) == test.classes  # sorted wnids
    assert train.x.shape == (SIZES[0], 32, 32, 3) and train.x.dtype == np.uint8
    assert test.x.shape == (SIZES[1], 32, 32, 3) and test.y.dtype == np.int64
    np.testing.assert_array_equal(train.y, [label for _, label in fake["train"]])
    np.testing.assert_array_equal(test.y, [label for _, label in fake["val"]])
    # ImageFolder order: class by class, then file names sorted as strings
    assert [rel.split("/")[-1] for rel, _ in fake["train"]][:3] == [
        "n01443537_300.JPEG", "n01443537_31.JPEG", "n01443537_5.JPEG"
    ]
    _check_pixels(train.x, fake["train"], fake)
    _check_pixels(test.x, fake["val"], fake)


def test_raw_val_with_ground_truth_matches_sorted(tmp_path: Path) -> None:
    fake = _fake()
    ref_train, ref_test = read_imagenet(_write(tmp_path / "sorted", fake), expected_sizes=SIZES)
    train, test = read_imagenet(_write(tmp_path / "raw", fake, val_layout="raw"), expected_sizes=SIZES)
    for ref, got in ((ref_train, train), (ref_test, test)):
        assert_same_dataset(got, ref)
    # the ground truth may also be named explicitly, from anywhere
    raw = tmp_path / "raw"
    moved = shutil.move(raw / "LOC_val_solution.csv", tmp_path / "gt.csv")
    _, test2 = read_imagenet(raw, expected_sizes=SIZES, val_ground_truth=moved)
    np.testing.assert_array_equal(test2.y, ref_test.y)


def test_kaggle_layout(tmp_path: Path) -> None:
    fake = _fake()
    ref_train, ref_test = read_imagenet(_write(tmp_path / "sorted", fake), expected_sizes=SIZES)
    kaggle = tmp_path / "kaggle"
    _write(kaggle / "ILSVRC" / "Data" / "CLS-LOC", fake, val_layout="raw")
    shutil.move(kaggle / "ILSVRC" / "Data" / "CLS-LOC" / "LOC_val_solution.csv", kaggle / "LOC_val_solution.csv")
    train, test = read_imagenet(kaggle, expected_sizes=SIZES)
    np.testing.assert_array_equal(train.x, ref_train.x)
    np.testing.assert_array_equal(test.y, ref_test.y)


def test_workers_give_the_same_result(tmp_path: Path) -> None:
    source = _write(tmp_path / "imagenet", _fake())
    one = read_imagenet(source, expected_sizes=SIZES)
    two = read_imagenet(source, expected_sizes=SIZES, workers=2)
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a.x, b.x)
        np.testing.assert_array_equal(a.y, b.y)


def test_size_and_expected_sizes(tmp_path: Path) -> None:
    source = _write(tmp_path / "imagenet", _fake())
    train, test = read_imagenet(source, size=16, expected_sizes=None)
    assert train.x.shape == (SIZES[0], 16, 16, 3) and len(test) == SIZES[1]
    with pytest.raises(DatasetFormatError, match=r"train split has 8 images, expected 1281167"):
        read_imagenet(source)  # the default is the real size
    with pytest.raises(ValueError, match="size"):
        read_imagenet(source, size=-1)


# --- errors: DatasetFormatError naming the file, nothing written ---------------------------------


def _case_no_train(root: Path) -> None:
    shutil.rmtree(root / "train")


def _case_no_val(root: Path) -> None:
    shutil.rmtree(root / "val")


def _case_empty_class(root: Path) -> None:
    for p in (root / "train" / "n02124075").iterdir():
        p.unlink()


def _case_unknown_val_class(root: Path) -> None:
    (root / "val" / "n04067472").rename(root / "val" / "n09999999")


def _case_mixed_val(root: Path) -> None:
    shutil.copy(next((root / "val" / "n04067472").iterdir()), root / "val" / "ILSVRC2012_val_00000099.JPEG")


def _case_undecodable(root: Path) -> None:
    (root / "train" / "n01443537" / "n01443537_5.JPEG").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")


def _case_truncated(root: Path) -> None:
    p = root / "train" / "n04067472" / "n04067472_2.JPEG"
    p.write_bytes(p.read_bytes()[:300])


def _raw(change):
    """A case on the raw val layout: convert to raw first, then apply ``change``."""

    def apply(root: Path) -> None:
        shutil.rmtree(root / "val")
        _write(root, _fake(), val_layout="raw")
        change(root)

    return apply


def _gt_drop_line(root: Path) -> None:
    csv = root / "LOC_val_solution.csv"
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join(lines[:-1]) + "\n")


def _gt_extra_line(root: Path) -> None:
    with open(root / "LOC_val_solution.csv", "a") as f:
        f.write("ILSVRC2012_val_00000077,n01443537 1 2 3 4\n")


def _gt_unknown_wnid(root: Path) -> None:
    csv = root / "LOC_val_solution.csv"
    csv.write_text(csv.read_text().replace("n04067472", "n09999999"))


ERROR_CASES = {
    "no_train": (_case_no_train, r"no train/ folder; expected <source>/train/<wnid>/\*\.JPEG"),
    "no_val": (_case_no_val, r"val: missing folder"),
    "empty_class": (_case_empty_class, r"train/n02124075: class folder holds no images"),
    "unknown_val_class": (_case_unknown_val_class, r"val: class folder\(s\) \['n09999999'\] are not classes"),
    "mixed_val": (_case_mixed_val, r"holds both class folders .* and loose images"),
    "undecodable": (_case_undecodable, r"n01443537_5\.JPEG: not a decodable image"),
    "truncated": (_case_truncated, r"n04067472_2\.JPEG: not a decodable image"),
    "raw_val_without_ground_truth": (
        _raw(lambda root: (root / "LOC_val_solution.csv").unlink()),
        r"holds images directly .* no ground truth .*LOC_val_solution\.csv.*val/<wnid>/",
    ),
    "ground_truth_misses_an_image": (_raw(_gt_drop_line), r"LOC_val_solution\.csv: gives no label for 1 image"),
    "ground_truth_lists_absent_image": (
        _raw(_gt_extra_line), r"LOC_val_solution\.csv: lists 1 image\(s\) missing .*ILSVRC2012_val_00000077"
    ),
    "ground_truth_unknown_wnid": (_raw(_gt_unknown_wnid), r"LOC_val_solution\.csv, line \d: wnid 'n09999999'"),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_bad_source(tmp_path: Path, case: str) -> None:
    change, match = ERROR_CASES[case]
    source = _write(tmp_path / "imagenet", _fake())
    change(source)
    out = tmp_path / "out"
    with pytest.raises(DatasetFormatError, match=match) as err:
        prepare_imagenet(source, out, expected_sizes=SIZES)
    assert str(source) in str(err.value)
    assert not out.exists()


def test_bad_image_in_a_worker(tmp_path: Path) -> None:
    source = _write(tmp_path / "imagenet", _fake())
    _case_undecodable(source)
    with pytest.raises(DatasetFormatError, match=r"n01443537_5\.JPEG: not a decodable image"):
        read_imagenet(source, expected_sizes=SIZES, workers=2)


@pytest.mark.parametrize("sizes, match", [((9, 6), r"train split has 8 images, expected 9"),
                                           ((8, 50000), r"val \(test\) split has 6 images, expected 50000")])
def test_wrong_counts(tmp_path: Path, sizes: tuple[int, int], match: str) -> None:
    source = _write(tmp_path / "imagenet", _fake())
    out = tmp_path / "out"
    with pytest.raises(DatasetFormatError, match=match):
        prepare_imagenet(source, out, expected_sizes=sizes)
    assert not out.exists()


def test_missing_source(tmp_path: Path) -> None:
    with pytest.raises(DatasetFormatError, match="absent: no such directory"):
        prepare_imagenet(tmp_path / "absent", tmp_path / "out")
    assert not (tmp_path / "out").exists()

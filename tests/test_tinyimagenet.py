"""Tests for fisherlab.data.tinyimagenet: tiny-imagenet-200 (zip or folder) -> canonical .npz at 32x32.

Every archive here is a small fake built in ``tmp_path`` in the official layout
(``tiny-imagenet-200/wnids.txt``, ``words.txt``, ``train/<wnid>/images/<wnid>_<k>.JPEG``,
``val/images/val_<k>.JPEG``, ``val/val_annotations.txt``, ``test/images/``), with real
64x64 JPEGs written by Pillow (one greyscale), inside a real zip. Nothing is downloaded.

Pixel values are checked against an independent reference: each JPEG decoded on its own
(64x64, RGB) and averaged over 2x2 blocks with numpy, and, looser, against the content
drawn before JPEG compression (which catches a channel or orientation mix-up).
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_same_dataset
from PIL import Image

import fisherlab.data.tinyimagenet as tin
from fisherlab.data import (
    DatasetFormatError,
    download_tinyimagenet,
    load_dataset,
    prepare_tinyimagenet,
    read_tinyimagenet,
)

# wnids.txt order is deliberately not sorted: the class index must follow the file.
WNIDS = ["n02124075", "n01443537", "n09246464", "n04067472"]
WORDS = {
    "n02124075": "Egyptian cat",
    "n01443537": "goldfish, Carassius auratus",
    "n09246464": "cliff, drop, drop-off",
    "n04067472": "reel",
    "n00001740": "entity",  # words.txt covers all of WordNet, not just the 200 classes
}
TRAIN_K = [10, 0, 2, 1]  # written in this order; natural order is 0, 1, 2, 10 (lexicographic: 0, 1, 10, 2)
N_VAL = 11  # val_0 .. val_10
VAL_WNID = [WNIDS[i] for i in (2, 0, 3, 1, 1, 0, 2, 3, 0, 3, 2)]  # val_k -> wnid
GREY = f"train/{WNIDS[1]}/images/{WNIDS[1]}_2.JPEG"
SIZES = (len(WNIDS) * len(TRAIN_K), N_VAL)
ROOT = "tiny-imagenet-200"


# --- fakes in the official layout --------------------------------------------------------------


def _content(seed: int, grey: bool = False) -> np.ndarray:
    """A smooth 64x64 image (a colour plus gentle waves), distinct per seed; uint8 HWC or HW."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:64, 0:64].astype(float)
    chans = []
    for _ in range(1 if grey else 3):
        base, amp, fx, fy, ph = rng.uniform(50, 200), rng.uniform(10, 40), *rng.uniform(0.5, 2, 2), rng.uniform(0, 6)
        chans.append(base + amp * np.sin(2 * np.pi * (fx * xx + fy * yy) / 64 + ph))
    img = np.clip(np.round(np.stack(chans, -1)), 0, 255).astype(np.uint8)
    return img[..., 0] if grey else img


def _jpeg(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _fake() -> dict:
    """Members (path under tiny-imagenet-200/ -> bytes) plus the expected train / val lists."""
    members: dict[str, bytes] = {
        "wnids.txt": "".join(f"{w}\n" for w in WNIDS).encode(),
        "words.txt": "".join(f"{w}\t{n}\n" for w, n in sorted(WORDS.items())).encode(),
    }
    content: dict[str, np.ndarray] = {}
    seed = 0
    train, val = [], []
    for label, wnid in enumerate(WNIDS):
        boxes = []
        for k in TRAIN_K:
            rel = f"train/{wnid}/images/{wnid}_{k}.JPEG"
            content[rel] = _content(seed := seed + 1, grey=rel == GREY)
            members[rel] = _jpeg(content[rel])
            boxes.append(f"{wnid}_{k}.JPEG\t0\t0\t63\t63\n")
        members[f"train/{wnid}/{wnid}_boxes.txt"] = "".join(boxes).encode()
        train += [(f"train/{wnid}/images/{wnid}_{k}.JPEG", label) for k in sorted(TRAIN_K)]
    lines = []
    for k in (3, 0, 10, 1, 2, 4, 5, 6, 7, 8, 9):  # annotation order differs from file order
        rel = f"val/images/val_{k}.JPEG"
        content[rel] = _content(seed := seed + 1)
        members[rel] = _jpeg(content[rel])
        lines.append(f"val_{k}.JPEG\t{VAL_WNID[k]}\t{k}\t{2 * k}\t{40 + k}\t{50 + k}\n")
    members["val/val_annotations.txt"] = "".join(lines).encode()
    val = [(f"val/images/val_{k}.JPEG", WNIDS.index(VAL_WNID[k])) for k in range(N_VAL)]
    members["test/images/test_0.JPEG"] = _jpeg(_content(999))  # unlabelled: ignored
    return {"members": members, "content": content, "train": train, "val": val}


def _write_zip(path: Path, members: dict[str, bytes], root: str = ROOT) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        dirs = sorted({"/".join(m.split("/")[:i]) for m in members for i in range(1, m.count("/") + 1)})
        for d in ([""] if root else []) + dirs:  # directory entries, as `zip -r` writes them
            zf.writestr(f"{root}/{d}/".replace("//", "/"), b"")
        for rel, blob in members.items():
            zf.writestr(f"{root}/{rel}" if root else rel, blob)
    return path


def _write_folder(path: Path, members: dict[str, bytes]) -> Path:
    for rel, blob in members.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_bytes(blob)
    return path


def _block_mean(img: np.ndarray, f: int) -> np.ndarray:
    h, w, c = img.shape
    return img.astype(np.float64).reshape(h // f, f, w // f, f, c).mean(axis=(1, 3))


def _decoded(blob: bytes) -> np.ndarray:
    """The independent reference decode: the JPEG as a 64x64 RGB array."""
    return np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"))


def _check_split(x: np.ndarray, y: np.ndarray, expected: list, fake: dict, size: int = 32) -> None:
    assert x.shape == (len(expected), size, size, 3) and x.dtype == np.uint8
    np.testing.assert_array_equal(y, [label for _, label in expected])
    f = 64 // size
    for i, (rel, _) in enumerate(expected):
        ref = _block_mean(_decoded(fake["members"][rel]), f)
        assert np.abs(x[i] - ref).max() <= 1.0, rel  # box filter = f x f block means of the decoded JPEG
        drawn = fake["content"][rel]
        drawn = np.repeat(drawn[..., None], 3, -1) if drawn.ndim == 2 else drawn
        assert np.abs(x[i] - _block_mean(drawn, f)).mean() < 2.0, rel  # JPEG loss only: RGB order, orientation


# --- the whole preparation -----------------------------------------------------------------------


def test_prepare_from_zip(tmp_path: Path) -> None:
    fake = _fake()
    archive = _write_zip(tmp_path / "tiny-imagenet-200.zip", fake["members"])
    out = tmp_path / "out"
    paths = prepare_tinyimagenet(out, source=archive, expected_sizes=SIZES)
    assert paths == (out / "train.npz", out / "test.npz")
    assert sorted(p.name for p in out.iterdir()) == ["test.npz", "train.npz"]  # no temporary files
    train, test = load_dataset(paths[0]), load_dataset(paths[1])

    # classes: wnids.txt order, names from words.txt
    assert train.classes == tuple(WORDS[w] for w in WNIDS) == test.classes
    # train: class by class, natural file order within a class; pixels = 2x2 block means
    _check_split(train.x, train.y, fake["train"], fake)
    assert list(train.y) == [c for c in range(4) for _ in TRAIN_K]
    # val (the test split): labels from val_annotations.txt, in val_0, val_1, ..., val_10 order
    _check_split(test.x, test.y, fake["val"], fake)
    np.testing.assert_array_equal(test.y, [WNIDS.index(w) for w in VAL_WNID])

    # the greyscale JPEG became RGB with three equal channels
    assert Image.open(io.BytesIO(fake["members"][GREY])).mode == "L"
    g = fake["train"].index((GREY, 1))
    assert (train.x[g, ..., 0] == train.x[g, ..., 1]).all() and (train.x[g, ..., 1] == train.x[g, ..., 2]).all()


def test_box_filter_is_exact_block_mean(tmp_path: Path) -> None:
    """64 -> 32 is the mean of each 2x2 block, rounded once (half up): exactly floor(mean + 1/2).

    (Pillow's two-pass ``resize(..., BOX)`` rounds to 8 bits after each pass, which is up to
    one level too high and biased upwards by about half a level.)
    """
    fake = _fake()
    train, _ = read_tinyimagenet(_write_zip(tmp_path / "t.zip", fake["members"]), expected_sizes=SIZES)
    refs = np.stack([_block_mean(_decoded(fake["members"][rel]), 2) for rel, _ in fake["train"]])
    np.testing.assert_array_equal(train.x, np.floor(refs + 0.5))
    assert abs((train.x - refs).mean()) < 0.2  # half-up rounding of quarter values: +1/8 on average


@pytest.mark.parametrize("size", [64, 16])
def test_other_sizes(tmp_path: Path, size: int) -> None:
    fake = _fake()
    train, test = read_tinyimagenet(_write_zip(tmp_path / "t.zip", fake["members"]), size=size, expected_sizes=SIZES)
    _check_split(train.x, train.y, fake["train"], fake, size=size)
    _check_split(test.x, test.y, fake["val"], fake, size=size)
    if size == 64:  # native resolution: exactly the decoded JPEG
        np.testing.assert_array_equal(train.x[0], _decoded(fake["members"][fake["train"][0][0]]))


@pytest.mark.parametrize(
    "layout", ["folder_with_zip", "folder_with_extracted", "extracted_itself", "both", "zip_no_root"]
)
def test_other_layouts_match_zip(tmp_path: Path, layout: str) -> None:
    fake = _fake()
    ref_train, ref_test = read_tinyimagenet(_write_zip(tmp_path / "ref.zip", fake["members"]), expected_sizes=SIZES)
    root = tmp_path / "root"
    root.mkdir()
    if layout in ("folder_with_zip", "both"):
        _write_zip(root / "tiny-imagenet-200.zip", fake["members"])
    if layout in ("folder_with_extracted", "extracted_itself", "both"):
        _write_folder(root / ROOT, fake["members"])
    source = {"extracted_itself": root / ROOT, "zip_no_root": root / "flat.zip"}.get(layout, root)
    if layout == "zip_no_root":  # members at the top of the zip, no tiny-imagenet-200/ folder
        _write_zip(source, fake["members"], root="")
    train_path, test_path = prepare_tinyimagenet(tmp_path / "out", source=source, expected_sizes=SIZES)
    for ref, path in ((ref_train, train_path), (ref_test, test_path)):
        got = load_dataset(path)
        assert_same_dataset(got, ref)


def test_class_names(tmp_path: Path) -> None:
    fake = _fake()
    members = fake["members"]
    archive = _write_zip(tmp_path / "a.zip", members)
    train, _ = read_tinyimagenet(archive, expected_sizes=SIZES, class_names="wnids")
    assert train.classes == tuple(WNIDS)
    # words.txt lacking a wnid: that class falls back to its wnid
    members["words.txt"] = "".join(f"{w}\t{n}\n" for w, n in WORDS.items() if w != WNIDS[2]).encode()
    train, _ = read_tinyimagenet(_write_zip(tmp_path / "b.zip", members), expected_sizes=SIZES)
    assert train.classes == (WORDS[WNIDS[0]], WORDS[WNIDS[1]], WNIDS[2], WORDS[WNIDS[3]])
    # no words.txt at all: the wnids
    del members["words.txt"]
    train, test = read_tinyimagenet(_write_zip(tmp_path / "c.zip", members), expected_sizes=SIZES)
    assert train.classes == tuple(WNIDS) == test.classes
    with pytest.raises(ValueError, match="class_names"):
        read_tinyimagenet(archive, class_names="names")


def test_expected_sizes(tmp_path: Path) -> None:
    archive = _write_zip(tmp_path / "t.zip", _fake()["members"])
    train, test = read_tinyimagenet(archive, expected_sizes=None)
    assert (len(train), len(test)) == SIZES
    with pytest.raises(DatasetFormatError, match="train split has 16 images, expected 100000"):
        read_tinyimagenet(archive)  # the default is the real size


# --- errors: DatasetFormatError naming the file, nothing written ---------------------------------


def _drop(prefix: str):
    def change(m: dict) -> None:
        for rel in [r for r in m if r.startswith(prefix)]:
            del m[rel]

    return change


def _set(rel: str, value):
    def change(m: dict) -> None:
        m[rel] = value(m[rel]) if callable(value) else value

    return change


def _replace_in(rel: str, old: str, new: str):
    return _set(rel, lambda b: b.decode().replace(old, new, 1).encode())


TRAIN_JPEG = f"train/{WNIDS[3]}/images/{WNIDS[3]}_1.JPEG"
ERROR_CASES = {
    "missing_wnids": (_drop("wnids.txt"), r"wnids\.txt"),
    "empty_wnids": (_set("wnids.txt", b"\n"), r"wnids\.txt: lists no wnids"),
    "duplicate_wnid": (_set("wnids.txt", f"{WNIDS[0]}\n{WNIDS[1]}\n{WNIDS[0]}\n".encode()), r"listed twice"),
    "missing_annotations": (_drop("val/val_annotations.txt"), r"val/val_annotations\.txt: missing file"),
    "missing_wnid_folder": (_drop(f"train/{WNIDS[2]}/"), rf"train/{WNIDS[2]}/images: missing folder"),
    "unknown_train_folder": (
        _set("train/n00000001/images/n00000001_0.JPEG", _jpeg(_content(5))),
        r"\['n00000001'\] are not wnids listed in wnids\.txt",
    ),
    "annotation_unknown_wnid": (
        _replace_in("val/val_annotations.txt", f"val_10.JPEG\t{VAL_WNID[10]}", "val_10.JPEG\tn99999999"),
        r"val_annotations\.txt, line 3: wnid 'n99999999' \(for val_10\.JPEG\) is not listed",
    ),
    "annotation_missing_image": (_drop("val/images/val_4.JPEG"), r"line 6: image val_4\.JPEG is missing"),
    "unannotated_image": (_set("val/images/val_11.JPEG", _jpeg(_content(7))), r"no label for 1 image.*val_11\.JPEG"),
    "malformed_annotation": (_replace_in("val/val_annotations.txt", "\t", " "), r"line 1: expected 'file<TAB>wnid"),
    "undecodable_jpeg": (_set(TRAIN_JPEG, b"<html>not a JPEG</html>"), rf"{TRAIN_JPEG}: not a decodable image"),
    "truncated_jpeg": (_set(TRAIN_JPEG, lambda b: b[: len(b) // 2]), rf"{TRAIN_JPEG}: not a decodable image"),
}


@pytest.mark.parametrize("layout", ["zip", "folder"])
@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_bad_content(tmp_path: Path, case: str, layout: str) -> None:
    change, match = ERROR_CASES[case]
    fake = _fake()
    change(fake["members"])
    if layout == "zip":
        source = _write_zip(tmp_path / "tiny-imagenet-200.zip", fake["members"])
        if case == "missing_wnids":
            match = r"no tiny-imagenet-200/wnids\.txt in the archive"
    else:
        source = _write_folder(tmp_path / "src" / ROOT, fake["members"]).parent
        if case == "missing_wnids":
            match = r"tiny-imagenet-200/wnids\.txt: missing file"
    out = tmp_path / "out"
    with pytest.raises(DatasetFormatError, match=match) as err:
        prepare_tinyimagenet(out, source=source, expected_sizes=SIZES)
    assert str(source) in str(err.value)
    assert not out.exists()


@pytest.mark.parametrize("sizes, match", [((17, 11), r"train split has 16 images, expected 17"),
                                           ((16, 10), r"val \(test\) split has 11 images, expected 10")])
def test_wrong_counts(tmp_path: Path, sizes: tuple[int, int], match: str) -> None:
    archive = _write_zip(tmp_path / "t.zip", _fake()["members"])
    out = tmp_path / "out"
    with pytest.raises(DatasetFormatError, match=match) as err:
        prepare_tinyimagenet(out, source=archive, expected_sizes=sizes)
    assert str(archive) in str(err.value)
    assert not out.exists()


def test_truncated_zip(tmp_path: Path) -> None:
    archive = _write_zip(tmp_path / "tiny-imagenet-200.zip", _fake()["members"])
    blob = archive.read_bytes()
    archive.write_bytes(blob[: len(blob) // 2])  # the central directory at the end is gone
    out = tmp_path / "out"
    with pytest.raises(DatasetFormatError, match="truncated or corrupt zip archive") as err:
        prepare_tinyimagenet(out, source=archive, expected_sizes=SIZES)
    assert str(archive) in str(err.value)
    assert not out.exists()


def test_corrupt_member(tmp_path: Path) -> None:
    """Damaged compressed data inside an intact zip: a CRC / inflate error naming the member."""
    archive = _write_zip(tmp_path / "tiny-imagenet-200.zip", _fake()["members"])
    with zipfile.ZipFile(archive) as zf:
        info = zf.getinfo(f"{ROOT}/{TRAIN_JPEG}")
    blob = bytearray(archive.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)  # local header, then data
    for i in range(start + 20, start + 60):
        blob[i] ^= 0x5A
    archive.write_bytes(bytes(blob))
    out = tmp_path / "out"
    with pytest.raises(DatasetFormatError, match=rf"member {ROOT}/{TRAIN_JPEG}: truncated or corrupt zip"):
        prepare_tinyimagenet(out, source=archive, expected_sizes=SIZES)
    assert not out.exists()


def test_not_a_zip_and_missing_source(tmp_path: Path) -> None:
    bogus = tmp_path / "tiny-imagenet-200.zip"
    bogus.write_bytes(b"<html>404 not found</html>")
    with pytest.raises(DatasetFormatError, match="truncated or corrupt zip archive"):
        read_tinyimagenet(bogus, expected_sizes=SIZES)
    with pytest.raises(DatasetFormatError, match="no such file or directory"):
        read_tinyimagenet(tmp_path / "absent.zip", expected_sizes=SIZES)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetFormatError, match=r"empty: holds neither tiny-imagenet-200\.zip"):
        read_tinyimagenet(tmp_path / "empty", expected_sizes=SIZES)


def test_failure_leaves_existing_output_untouched(tmp_path: Path) -> None:
    out = tmp_path / "out"
    fake = _fake()
    prepare_tinyimagenet(out, source=_write_zip(tmp_path / "good.zip", fake["members"]), expected_sizes=SIZES)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    del fake["members"]["val/val_annotations.txt"]  # the train split alone would read fine
    with pytest.raises(DatasetFormatError):
        prepare_tinyimagenet(out, source=_write_zip(tmp_path / "bad.zip", fake["members"]), expected_sizes=SIZES)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"source= .* or download_root="):
        prepare_tinyimagenet(tmp_path / "out")
    with pytest.raises(ValueError, match="size"):
        read_tinyimagenet(tmp_path, size=0)
    assert not (tmp_path / "out").exists()


# --- download (the URL fetch monkeypatched: no network) ---------------------------------------------


def test_official_url_and_checksum() -> None:
    assert tin.TINYIMAGENET_URL == "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
    assert tin.TINYIMAGENET_MD5 == "90528d7ca1a48142e341f4ef8d21d0de"


def _fake_fetch(payload: bytes, calls: list):
    def fetch(url: str, out) -> None:
        calls.append(url)
        for i in range(0, len(payload), 1000):  # streamed in pieces
            out.write(payload[i : i + 1000])

    return fetch


def test_download_checks_md5_and_skips_when_present(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    payload = _write_zip(tmp_path / "made.zip", _fake()["members"]).read_bytes()
    monkeypatch.setattr(tin, "TINYIMAGENET_MD5", hashlib.md5(payload).hexdigest())
    calls: list = []
    monkeypatch.setattr(tin, "_fetch", _fake_fetch(payload, calls))
    root = tmp_path / "downloads"
    path = download_tinyimagenet(root)
    assert path == root / "tiny-imagenet-200.zip" and path.read_bytes() == payload
    assert calls == [tin.TINYIMAGENET_URL]
    assert [p.name for p in root.iterdir()] == ["tiny-imagenet-200.zip"]  # no temporary file left
    assert download_tinyimagenet(root) == path and len(calls) == 1  # present, checksum matches: no fetch

    train_path, _ = prepare_tinyimagenet(tmp_path / "out", download_root=root, expected_sizes=SIZES)
    assert len(calls) == 1 and len(load_dataset(train_path)) == SIZES[0]


def test_download_checksum_mismatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list = []
    monkeypatch.setattr(tin, "_fetch", _fake_fetch(b"<html>captive portal</html>" * 100, calls))
    root = tmp_path / "downloads"
    with pytest.raises(DatasetFormatError, match=r"MD5 [0-9a-f]{32}, expected 90528d7ca1a48142e341f4ef8d21d0de"):
        download_tinyimagenet(root)
    assert calls and list(root.iterdir()) == []  # the bad download is removed, nothing renamed into place
    out = tmp_path / "out"
    with pytest.raises(DatasetFormatError, match="MD5"):
        prepare_tinyimagenet(out, download_root=root, expected_sizes=SIZES)
    assert not out.exists() and list(root.iterdir()) == []


def test_download_interrupted_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(url: str, out) -> None:
        out.write(b"partial")
        raise ConnectionResetError("peer went away")

    monkeypatch.setattr(tin, "_fetch", broken)
    root = tmp_path / "downloads"
    with pytest.raises(ConnectionResetError):
        download_tinyimagenet(root)
    assert list(root.iterdir()) == []


def test_existing_file_with_wrong_md5(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list = []
    monkeypatch.setattr(tin, "_fetch", _fake_fetch(b"x", calls))
    root = tmp_path / "downloads"
    root.mkdir()
    (root / "tiny-imagenet-200.zip").write_bytes(b"half a download")
    with pytest.raises(DatasetFormatError, match=r"tiny-imagenet-200\.zip: MD5 .* differs .*delete it"):
        download_tinyimagenet(root)
    assert not calls and (root / "tiny-imagenet-200.zip").read_bytes() == b"half a download"  # left alone

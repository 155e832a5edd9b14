"""Tests for fisherlab.data.cifar: CIFAR-10/100 python-pickle distribution -> canonical .npz.

Every archive here is a small fake built in ``tmp_path`` in the true source format:
pickled dicts with byte-string keys and a uint8 (N, 3072) CHW ``data`` array, inside a
``.tar.gz`` with the original member names. Nothing is downloaded.
"""

from __future__ import annotations

import io
import pickle
import struct
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_same_dataset

from fisherlab.data import (
    DatasetFormatError,
    download_cifar,
    load_dataset,
    make_synthetic,
    prepare_cifar,
    prepare_synthetic,
    read_cifar_python,
)

C10_NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
C100_NAMES = [f"fine_{k:02d}".encode() for k in range(100)]
N_BATCH, N_TEST = 4, 5  # CIFAR-10 fakes: 5 train batches of 4, a test batch of 5
SIZES10 = (5 * N_BATCH, N_TEST)


# --- fakes in the original format -----------------------------------------------------------


def _batch(rng: np.random.Generator, n: int, label_key: bytes, num_classes: int, label: bytes) -> dict:
    return {
        b"batch_label": label,
        label_key: [int(v) for v in rng.integers(0, num_classes, n)],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }


def _cifar10(seed: int = 0) -> dict[str, dict]:
    rng = np.random.default_rng(seed)
    files = {f"data_batch_{i}": _batch(rng, N_BATCH, b"labels", 10, b"training batch %d of 5" % i) for i in range(1, 6)}
    files["test_batch"] = _batch(rng, N_TEST, b"labels", 10, b"testing batch 1 of 1")
    files["batches.meta"] = {b"label_names": list(C10_NAMES), b"num_cases_per_batch": N_BATCH, b"num_vis": 3072}
    return files


def _cifar100(seed: int = 0) -> dict[str, dict]:
    rng = np.random.default_rng(seed)
    files = {"train": _batch(rng, 12, b"fine_labels", 100, b"training batch 1 of 1"),
             "test": _batch(rng, 6, b"fine_labels", 100, b"testing batch 1 of 1")}
    for b in (files["train"], files["test"]):
        b[b"coarse_labels"] = [v // 5 for v in b[b"fine_labels"]]
    files["meta"] = {b"fine_label_names": list(C100_NAMES), b"coarse_label_names": [b"c%d" % k for k in range(20)]}
    return files


FOLDER = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
ARCHIVE = {"cifar10": "cifar-10-python.tar.gz", "cifar100": "cifar-100-python.tar.gz"}


def _pickled(files: dict[str, dict | bytes]) -> dict[str, bytes]:
    return {m: v if isinstance(v, bytes) else pickle.dumps(v, protocol=2) for m, v in files.items()}


def _write_tar(path: Path, folder: str, files: dict[str, dict | bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        d = tarfile.TarInfo(folder)
        d.type, d.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(d)
        for member, blob in _pickled(files).items():
            info = tarfile.TarInfo(f"{folder}/{member}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


def _write_folder(path: Path, files: dict[str, dict | bytes]) -> Path:
    path.mkdir(parents=True)
    for member, blob in _pickled(files).items():
        (path / member).write_bytes(blob)
    return path


def _expected(files: dict[str, dict], members: list[str], label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    rows = np.concatenate([files[m][b"data"] for m in members])
    labels = np.concatenate([files[m][label_key] for m in members]).astype(np.int64)
    return rows, labels


def _check_pixels(x: np.ndarray, rows: np.ndarray, rng: np.random.Generator, samples: int = 400) -> None:
    """Brute force: x[i, h, w, c] == rows[i, c*1024 + h*32 + w]."""
    for i in range(min(2, len(x))):  # every pixel of the first images
        for h in range(32):
            for w in range(32):
                for c in range(3):
                    assert x[i, h, w, c] == rows[i, c * 1024 + h * 32 + w]
    for i, h, w, c in zip(*(rng.integers(0, n, samples) for n in (len(x), 32, 32, 3))):
        assert x[i, h, w, c] == rows[i, c * 1024 + h * 32 + w]


# --- CIFAR-10 / CIFAR-100 ----------------------------------------------------------------------


def test_cifar10_from_tarball(tmp_path: Path) -> None:
    files = _cifar10()
    tarball = _write_tar(tmp_path / ARCHIVE["cifar10"], FOLDER["cifar10"], files)
    out = tmp_path / "out"
    paths = prepare_cifar("cifar10", out, source=tarball, expected_sizes=SIZES10)
    assert paths == (out / "train.npz", out / "test.npz")
    assert sorted(p.name for p in out.iterdir()) == ["test.npz", "train.npz"]  # no temporary files

    train, test = load_dataset(paths[0]), load_dataset(paths[1])
    assert train.x.shape == (20, 32, 32, 3) and train.x.dtype == np.uint8
    assert test.x.shape == (5, 32, 32, 3) and test.y.dtype == np.int64
    assert train.classes == tuple(n.decode() for n in C10_NAMES) == test.classes

    rows, labels = _expected(files, [f"data_batch_{i}" for i in range(1, 6)], b"labels")
    np.testing.assert_array_equal(train.y, labels)  # batch 1 first, order kept
    np.testing.assert_array_equal(train.y[:N_BATCH], files["data_batch_1"][b"labels"])
    _check_pixels(train.x, rows, np.random.default_rng(1))
    np.testing.assert_array_equal(train.x, rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    test_rows, test_labels = _expected(files, ["test_batch"], b"labels")
    np.testing.assert_array_equal(test.y, test_labels)
    _check_pixels(test.x, test_rows, np.random.default_rng(2))


def test_channel_order_is_rgb(tmp_path: Path) -> None:
    """A pure-red / green / blue image (first / second / third 1024 values) lands in HWC channel 0 / 1 / 2."""
    files = _cifar10()
    for c in range(3):
        files["test_batch"][b"data"][c] = 0
        files["test_batch"][b"data"][c, c * 1024 : (c + 1) * 1024] = 255
    tarball = _write_tar(tmp_path / ARCHIVE["cifar10"], FOLDER["cifar10"], files)
    _, test = read_cifar_python(tarball, "cifar10", expected_sizes=SIZES10)
    for c in range(3):
        assert (test.x[c, :, :, c] == 255).all()
        assert (np.delete(test.x[c], c, axis=-1) == 0).all()


@pytest.mark.parametrize("layout", ["folder_with_tarball", "folder_with_extracted", "extracted_itself", "both"])
def test_cifar10_other_layouts_match_tarball(tmp_path: Path, layout: str) -> None:
    files = _cifar10(seed=5)
    ref_train, ref_test = read_cifar_python(
        _write_tar(tmp_path / "ref.tar.gz", FOLDER["cifar10"], files), "cifar10", expected_sizes=SIZES10
    )
    root = tmp_path / "root"
    root.mkdir()
    if layout in ("folder_with_tarball", "both"):
        _write_tar(root / ARCHIVE["cifar10"], FOLDER["cifar10"], files)
    if layout in ("folder_with_extracted", "extracted_itself", "both"):
        _write_folder(root / FOLDER["cifar10"], files)
    source = root / FOLDER["cifar10"] if layout == "extracted_itself" else root
    out = tmp_path / "out"
    train_path, test_path = prepare_cifar("cifar10", out, source=source, expected_sizes=SIZES10)
    for ref, path in ((ref_train, train_path), (ref_test, test_path)):
        got = load_dataset(path)
        assert_same_dataset(got, ref)


def test_cifar100_fine_labels(tmp_path: Path) -> None:
    files = _cifar100()
    tarball = _write_tar(tmp_path / ARCHIVE["cifar100"], FOLDER["cifar100"], files)
    train_path, test_path = prepare_cifar("cifar100", tmp_path / "out", source=tarball, expected_sizes=(12, 6))
    train, test = load_dataset(train_path), load_dataset(test_path)
    assert train.x.shape == (12, 32, 32, 3) and test.x.shape == (6, 32, 32, 3)
    assert train.num_classes == 100 and train.classes == tuple(n.decode() for n in C100_NAMES)
    np.testing.assert_array_equal(train.y, files["train"][b"fine_labels"])  # fine, not coarse
    np.testing.assert_array_equal(test.y, files["test"][b"fine_labels"])
    _check_pixels(train.x, files["train"][b"data"], np.random.default_rng(3))
    # the extracted folder gives the same
    _write_folder(tmp_path / "ex" / FOLDER["cifar100"], files)
    train2, _ = read_cifar_python(tmp_path / "ex", "cifar100", expected_sizes=(12, 6))
    np.testing.assert_array_equal(train2.x, train.x)


def test_expected_sizes_none_disables_check(tmp_path: Path) -> None:
    tarball = _write_tar(tmp_path / ARCHIVE["cifar10"], FOLDER["cifar10"], _cifar10())
    train, test = read_cifar_python(tarball, "cifar10", expected_sizes=None)
    assert (len(train), len(test)) == SIZES10
    with pytest.raises(DatasetFormatError, match="50000"):  # the default is the real size
        read_cifar_python(tarball, "cifar10")


# --- Python 2 pickles, as in the real distribution --------------------------------------------


def _py2_pickle(obj: object) -> bytes:
    """Pickle ``obj`` as Python 2's cPickle (protocol 2) would: str as BINSTRING, numpy.core globals."""

    def enc(v: object) -> bytes:
        if v is None:
            return b"N"
        if isinstance(v, bool):
            return b"\x88" if v else b"\x89"
        if isinstance(v, int):
            return b"K" + bytes([v]) if 0 <= v < 256 else b"J" + struct.pack("<i", v)
        if isinstance(v, bytes):
            return b"U" + bytes([len(v)]) + v if len(v) < 256 else b"T" + struct.pack("<I", len(v)) + v
        if isinstance(v, tuple):
            return b"(" + b"".join(map(enc, v)) + b"t"
        if isinstance(v, list):
            return b"](" + b"".join(map(enc, v)) + b"e"
        if isinstance(v, dict):
            return b"}(" + b"".join(enc(k) + enc(x) for k, x in v.items()) + b"u"
        if isinstance(v, np.ndarray):
            assert v.dtype == np.uint8
            dtype = b"cnumpy\ndtype\n" + enc((b"u1", 0, 1)) + b"R" + enc((3, b"|", None, None, None, -1, -1, 0)) + b"b"
            state = b"(" + enc(1) + enc(tuple(v.shape)) + dtype + enc(False) + enc(v.tobytes()) + b"t"
            new = b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + enc((0,)) + enc(b"b") + b"\x87R"
            return new + state + b"b"
        raise TypeError(type(v))

    return b"\x80\x02" + enc(obj) + b"."


def test_python2_pickles(tmp_path: Path) -> None:
    files = _cifar10(seed=7)
    tarball = _write_tar(
        tmp_path / ARCHIVE["cifar10"], FOLDER["cifar10"], {m: _py2_pickle(v) for m, v in files.items()}
    )
    train, test = read_cifar_python(tarball, "cifar10", expected_sizes=SIZES10)
    rows, labels = _expected(files, [f"data_batch_{i}" for i in range(1, 6)], b"labels")
    np.testing.assert_array_equal(train.y, labels)
    np.testing.assert_array_equal(train.x, rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    assert test.classes[0] == "airplane"


# --- errors: DatasetFormatError naming the file, nothing written -------------------------------


class _Evil:
    def __reduce__(self):  # noqa: ANN204
        return (print, ("this must never run",))


def _mutate(member: str, change: Callable[[dict], object]) -> Callable[[dict], None]:
    def apply(files: dict) -> None:
        change(files[member])  # mutates the batch dict in place

    return apply


ERROR_CASES = {
    "missing_member": (lambda f: f.pop("test_batch"), r"lacks member.*cifar-10-batches-py/test_batch"),
    "missing_data_key": (_mutate("data_batch_2", lambda b: b.pop(b"data")), r"data_batch_2.*lacks key.*'data'"),
    "missing_labels_key": (_mutate("test_batch", lambda b: b.pop(b"labels")), r"test_batch.*lacks key.*'labels'"),
    "wrong_row_length": (
        _mutate("data_batch_3", lambda b: b.__setitem__(b"data", b[b"data"][:, :3000])),
        r"data_batch_3.*shape \(4, 3000\).*3072",
    ),
    "flat_data": (
        _mutate("data_batch_1", lambda b: b.__setitem__(b"data", b[b"data"].ravel())),
        r"data_batch_1.*shape \(12288,\)",
    ),
    "label_count": (
        _mutate("data_batch_4", lambda b: b[b"labels"].append(1)),
        r"data_batch_4.*4 images but 5",
    ),
    "label_out_of_range": (
        _mutate("data_batch_5", lambda b: b[b"labels"].__setitem__(0, 10)),
        r"data_batch_5.*\[0, 10\)",
    ),
    "negative_label": (
        _mutate("test_batch", lambda b: b[b"labels"].__setitem__(2, -1)),
        r"test_batch.*\[0, 10\)",
    ),
    "nine_classes": (
        _mutate("batches.meta", lambda b: b[b"label_names"].pop()),
        r"batches\.meta.*9 classes, expected 10",
    ),
    "not_a_pickle": (lambda f: f.__setitem__("data_batch_1", b"garbage, not a pickle"), r"data_batch_1.*not a valid"),
    "not_a_dict": (lambda f: f.__setitem__("data_batch_1", pickle.dumps([1, 2], protocol=2)), r"data_batch_1.*dict"),
    "code_in_pickle": (
        lambda f: f.__setitem__("batches.meta", pickle.dumps(_Evil(), protocol=2)),
        r"batches\.meta.*print is not allowed",
    ),
}


@pytest.mark.parametrize("layout", ["tarball", "folder"])
@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_bad_content(tmp_path: Path, case: str, layout: str, capsys: pytest.CaptureFixture) -> None:
    change, match = ERROR_CASES[case]
    files = _cifar10()
    change(files)
    if layout == "tarball":
        source = _write_tar(tmp_path / ARCHIVE["cifar10"], FOLDER["cifar10"], files)
    else:
        source = _write_folder(tmp_path / "src" / FOLDER["cifar10"], files).parent
        if case == "missing_member":
            match = r"test_batch: missing file"
    out = tmp_path / "out"
    with pytest.raises(DatasetFormatError, match=match) as err:
        prepare_cifar("cifar10", out, source=source, expected_sizes=SIZES10)
    assert str(source) in str(err.value)
    assert not out.exists()
    assert "must never run" not in capsys.readouterr().out


def test_truncated_tarball(tmp_path: Path) -> None:
    tarball = _write_tar(tmp_path / ARCHIVE["cifar10"], FOLDER["cifar10"], _cifar10())
    blob = tarball.read_bytes()
    tarball.write_bytes(blob[: len(blob) // 2])
    out = tmp_path / "out"
    with pytest.raises(DatasetFormatError, match="truncated or corrupt") as err:
        prepare_cifar("cifar10", out, source=tarball, expected_sizes=SIZES10)
    assert str(tarball) in str(err.value)
    assert not out.exists()


def test_not_a_tarball(tmp_path: Path) -> None:
    bogus = tmp_path / ARCHIVE["cifar10"]
    bogus.write_bytes(b"<html>404 not found</html>")
    with pytest.raises(DatasetFormatError, match="corrupt tar archive"):
        read_cifar_python(bogus, "cifar10", expected_sizes=SIZES10)


@pytest.mark.parametrize("sizes, match", [((21, 5), "train split has 20 examples, expected 21"),
                                           ((20, 4), "test split has 5 examples, expected 4")])
def test_wrong_expected_size(tmp_path: Path, sizes: tuple[int, int], match: str) -> None:
    tarball = _write_tar(tmp_path / ARCHIVE["cifar10"], FOLDER["cifar10"], _cifar10())
    out = tmp_path / "out"
    with pytest.raises(DatasetFormatError, match=match) as err:
        prepare_cifar("cifar10", out, source=tarball, expected_sizes=sizes)
    assert str(tarball) in str(err.value)
    assert not out.exists()


def test_failure_leaves_existing_output_untouched(tmp_path: Path) -> None:
    out = tmp_path / "out"
    good = _write_tar(tmp_path / "good.tar.gz", FOLDER["cifar10"], _cifar10(seed=1))
    prepare_cifar("cifar10", out, source=good, expected_sizes=SIZES10)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    files = _cifar10(seed=2)
    files.pop("test_batch")  # the train split alone would read fine
    bad = _write_tar(tmp_path / "bad.tar.gz", FOLDER["cifar10"], files)
    with pytest.raises(DatasetFormatError):
        prepare_cifar("cifar10", out, source=bad, expected_sizes=SIZES10)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_missing_source(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(DatasetFormatError, match="no such file or directory") as err:
        prepare_cifar("cifar10", out, source=tmp_path / "absent.tar.gz", expected_sizes=SIZES10)
    assert "absent.tar.gz" in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetFormatError, match=r"empty: holds neither cifar-10-python\.tar\.gz"):
        prepare_cifar("cifar10", out, source=tmp_path / "empty", expected_sizes=SIZES10)
    assert not out.exists()


def test_wrong_dataset_for_archive(tmp_path: Path) -> None:
    tarball = _write_tar(tmp_path / "x.tar.gz", FOLDER["cifar10"], _cifar10())
    with pytest.raises(DatasetFormatError, match=r"lacks member.*cifar-100-python/train"):
        read_cifar_python(tarball, "cifar100", expected_sizes=None)


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown CIFAR dataset"):
        read_cifar_python(tmp_path, "cifar1000")
    with pytest.raises(ValueError, match="source= .* or download_root="):
        prepare_cifar("cifar10", tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- synthetic ---------------------------------------------------------------------------------


def test_prepare_synthetic(tmp_path: Path) -> None:
    paths = prepare_synthetic(tmp_path / "a", n_train=30, n_test=12, num_classes=3, image_size=16, seed=4)
    assert paths == (tmp_path / "a" / "train.npz", tmp_path / "a" / "test.npz")
    for path, n, split in ((paths[0], 30, "train"), (paths[1], 12, "test")):
        got, ref = load_dataset(path), make_synthetic(n, num_classes=3, image_size=16, seed=4, split=split)
        assert_same_dataset(got, ref)
    again = prepare_synthetic(tmp_path / "b", n_train=30, n_test=12, num_classes=3, image_size=16, seed=4)
    for p, q in zip(paths, again):
        a, b = load_dataset(p), load_dataset(q)
        np.testing.assert_array_equal(a.x, b.x)
        np.testing.assert_array_equal(a.y, b.y)
    assert not np.array_equal(load_dataset(paths[0]).x[:12], load_dataset(paths[1]).x)


# --- download (torchvision monkeypatched: no network) -------------------------------------------


@pytest.mark.parametrize(
    "name, make, cls_name", [("cifar10", _cifar10, "CIFAR10"), ("cifar100", _cifar100, "CIFAR100")]
)
def test_download_cifar_uses_torchvision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name, make, cls_name) -> None:
    import torchvision.datasets

    calls = []
    files = make()

    class FakeCIFAR:
        def __init__(self, root, train=True, transform=None, target_transform=None, download=False) -> None:
            calls.append({"root": root, "download": download})
            root = Path(root)
            if download and not (root / FOLDER[name]).exists():  # as torchvision: tarball + extracted dir
                _write_tar(root / ARCHIVE[name], FOLDER[name], files)
                with tarfile.open(root / ARCHIVE[name]) as tar:
                    tar.extractall(root, filter="data")

    monkeypatch.setattr(torchvision.datasets, cls_name, FakeCIFAR)
    root = tmp_path / "downloads"
    path = download_cifar(name, root)
    assert len(calls) == 1 and calls[0]["download"] is True and Path(calls[0]["root"]) == root
    assert path == root / FOLDER[name]
    sizes = (len(files["train"][b"data"]), len(files["test"][b"data"])) if name == "cifar100" else SIZES10
    train, _ = read_cifar_python(path, name, expected_sizes=sizes)
    assert len(train) == sizes[0]

    train_path, _ = prepare_cifar(name, tmp_path / "out", download_root=root, expected_sizes=sizes)
    assert len(calls) == 2 and calls[1]["download"] is True
    assert len(load_dataset(train_path)) == sizes[0]

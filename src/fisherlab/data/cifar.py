"""CIFAR-10 / CIFAR-100 (Krizhevsky, 2009) -> the canonical ``.npz`` format.

The paper's experiments (Jastrzebski et al., ICML 2021) use CIFAR-10 and CIFAR-100.
Both are read from the original "python version" distribution:

- ``cifar-10-python.tar.gz`` holding ``cifar-10-batches-py/`` with ``data_batch_1`` ..
  ``data_batch_5``, ``test_batch`` and ``batches.meta``;
- ``cifar-100-python.tar.gz`` holding ``cifar-100-python/`` with ``train``, ``test``
  and ``meta``.

Each batch is a pickled dict (written by Python 2; keys are byte strings) with
``data``, a uint8 array (N, 3072) whose rows are CHW row-major images (1024 red,
1024 green, then 1024 blue values, each 32 x 32 row-major), and the labels in
``labels`` (CIFAR-10) or ``fine_labels`` (CIFAR-100). The class names are
``label_names`` in ``batches.meta`` (CIFAR-10) or ``fine_label_names`` in ``meta``
(CIFAR-100). Images are converted to HWC uint8, labels to int64.

The pickles are loaded with an unpickler that only resolves the few globals a
numpy array needs, so a tampered file cannot run code.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fisherlab.data.format import DatasetFormatError, ImageDataset, write_splits
from fisherlab.data.synthetic import make_synthetic

_SIDE = 32
_ROW = 3 * _SIDE * _SIDE  # 3072 values per image


@dataclass(frozen=True)
class _Spec:
    archive: str  # tarball file name
    folder: str  # top-level directory inside the tarball
    train: tuple[str, ...]  # train batch members, in order
    test: tuple[str, ...]
    meta: str
    label_key: str
    names_key: str
    num_classes: int


_SPECS = {
    "cifar10": _Spec(
        archive="cifar-10-python.tar.gz",
        folder="cifar-10-batches-py",
        train=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test=("test_batch",),
        meta="batches.meta",
        label_key="labels",
        names_key="label_names",
        num_classes=10,
    ),
    "cifar100": _Spec(
        archive="cifar-100-python.tar.gz",
        folder="cifar-100-python",
        train=("train",),
        test=("test",),
        meta="meta",
        label_key="fine_labels",
        names_key="fine_label_names",
        num_classes=100,
    ),
}


def _spec(name: str) -> _Spec:
    if name not in _SPECS:
        raise ValueError(f"unknown CIFAR dataset {name!r}; expected one of {sorted(_SPECS)}")
    return _SPECS[name]


# --- reading ------------------------------------------------------------------------------


def read_cifar_python(
    source: str | os.PathLike,
    name: str,
    *,
    expected_sizes: tuple[int | None, int | None] | None = (50000, 10000),
) -> tuple[ImageDataset, ImageDataset]:
    """Read CIFAR-10 or CIFAR-100 (Krizhevsky, 2009) from its original python-pickle distribution.

    ``name`` is ``"cifar10"`` or ``"cifar100"`` (fine labels). ``source`` is the tarball
    (``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``), read member by member
    without extracting it; a folder holding that tarball; a folder holding the extracted
    directory (``cifar-10-batches-py/`` / ``cifar-100-python/``); or that directory
    itself. An extracted directory is preferred over a tarball in the same folder.

    Returns ``(train, test)`` with ``x`` uint8 (N, 32, 32, 3) HWC RGB, ``y`` int64, and
    the class names in the order of the meta file. Train batches are concatenated in
    order (``data_batch_1`` first).

    ``expected_sizes`` is the required ``(n_train, n_test)``, by default the real
    (50000, 10000); ``None`` (or a ``None`` entry) skips that check.

    Raises :class:`DatasetFormatError`, naming the file, if the source, a member or a
    key is missing, the tarball holds a needed member twice, is truncated or corrupt, a pickle is malformed, data are
    not (N, 3072) uint8 values, label counts or ranges are wrong, the meta file does not
    name exactly 10 / 100 classes, or a split has the wrong number of examples.
    """
    spec = _spec(name)
    members = _read_members(Path(source), spec)
    classes = _read_classes(members, spec)
    sizes = (None, None) if expected_sizes is None else tuple(expected_sizes)
    if len(sizes) != 2:
        raise ValueError(f"expected_sizes must be (n_train, n_test) or None, got {expected_sizes!r}")
    splits = []
    for split, names, expected in (("train", spec.train, sizes[0]), ("test", spec.test, sizes[1])):
        xs, ys = zip(*(_read_batch(members, m, spec) for m in names))
        x, y = np.concatenate(xs), np.concatenate(ys)
        if expected is not None and len(y) != expected:
            where = members.describe(names[0]) if len(names) == 1 else f"{members.origin} ({', '.join(names)})"
            raise DatasetFormatError(
                f"{where}: {name} {split} split has {len(y)} examples, expected {expected}"
            )
        splits.append(ImageDataset(x, y, classes))
    return splits[0], splits[1]


class _Members:
    """The raw bytes of the needed files, and where they came from (for error messages)."""

    def __init__(self, origin: Path, data: dict[str, bytes], in_tar: bool, folder: str) -> None:
        self.origin, self.data, self.in_tar, self.folder = origin, data, in_tar, folder

    def describe(self, member: str) -> str:
        if self.in_tar:
            return f"{self.origin}: member {self.folder}/{member}"
        return str(self.origin / member)


def _read_members(source: Path, spec: _Spec) -> _Members:
    needed = (*spec.train, *spec.test, spec.meta)
    if source.is_file():
        return _read_tar(source, spec, needed)
    if source.is_dir():
        for directory in (source / spec.folder, source):
            if (directory / spec.meta).is_file():
                return _read_folder(directory, needed)
        if (source / spec.archive).is_file():
            return _read_tar(source / spec.archive, spec, needed)
        raise DatasetFormatError(
            f"{source}: holds neither {spec.archive}, nor an extracted {spec.folder}/ directory "
            f"(with {spec.meta}), nor is it such a directory"
        )
    raise DatasetFormatError(f"{source}: no such file or directory (expected {spec.archive} or a folder holding it)")


def _read_folder(directory: Path, needed: tuple[str, ...]) -> _Members:
    data = {}
    for member in needed:
        path = directory / member
        if not path.is_file():
            raise DatasetFormatError(f"{path}: missing file (an extracted CIFAR directory needs {list(needed)})")
        data[member] = path.read_bytes()
    return _Members(directory, data, in_tar=False, folder=directory.name)


def _read_tar(path: Path, spec: _Spec, needed: tuple[str, ...]) -> _Members:
    wanted = {f"{spec.folder}/{m}": m for m in needed}
    data: dict[str, bytes] = {}
    seen: set[str] = set()
    try:
        with tarfile.open(path, mode="r:*") as tar:
            for info in tar:  # one sequential pass: no index of the whole archive needed
                name = info.name.removeprefix("./")
                member = wanted.get(name)
                if member is None:
                    continue
                if name in seen:  # extracting it would keep the later copy: which one is meant?
                    raise DatasetFormatError(
                        f"{path}: the archive holds member {name} more than once; refusing to guess which "
                        f"copy is meant (the {spec.archive} distribution holds each member once)"
                    )
                seen.add(name)
                if not info.isfile():
                    continue
                f = tar.extractfile(info)
                if f is None:
                    continue
                data[member] = f.read()
                if len(data[member]) != info.size:
                    raise EOFError(f"member {info.name} is truncated")
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise DatasetFormatError(f"{path}: truncated or corrupt tar archive ({type(e).__name__}: {e})") from e
    missing = [f"{spec.folder}/{m}" for m in needed if m not in data]
    if missing:
        raise DatasetFormatError(f"{path}: archive lacks member(s) {missing}; is it the {spec.archive} distribution?")
    return _Members(path, data, in_tar=True, folder=spec.folder)


# Globals a pickled numpy array (from numpy 1.x or 2.x, or Python 2) needs, and nothing else.
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),  # how Python 3 pickles bytes under protocols 0-2
    ("codecs", "encode"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # noqa: ANN201
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module.removeprefix("numpy.core.")  # avoid numpy 2's deprecation shim
        return super().find_class(module, name)


def _unpickle(members: _Members, member: str) -> dict[str, object]:
    where = members.describe(member)
    try:
        obj = _SafeUnpickler(io.BytesIO(members.data[member]), encoding="bytes").load()
    except Exception as e:  # noqa: BLE001 - any failure to unpickle means a bad file
        raise DatasetFormatError(f"{where}: not a valid CIFAR pickle ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict):
        raise DatasetFormatError(f"{where}: expected a pickled dict, got {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _require(batch: dict[str, object], keys: tuple[str, ...], where: str) -> None:
    missing = [k for k in keys if k not in batch]
    if missing:
        raise DatasetFormatError(f"{where}: pickle lacks key(s) {missing}; found {sorted(batch)}")


def _read_classes(members: _Members, spec: _Spec) -> tuple[str, ...]:
    where = members.describe(spec.meta)
    meta = _unpickle(members, spec.meta)
    _require(meta, (spec.names_key,), where)
    raw = meta[spec.names_key]
    if not isinstance(raw, (list, tuple)) or not all(isinstance(c, (bytes, str)) for c in raw):
        raise DatasetFormatError(f"{where}: {spec.names_key!r} must be a list of strings")
    if len(raw) != spec.num_classes:
        raise DatasetFormatError(f"{where}: {spec.names_key!r} names {len(raw)} classes, expected {spec.num_classes}")
    try:
        return tuple(c.decode("utf-8") if isinstance(c, bytes) else c for c in raw)
    except UnicodeDecodeError as e:
        raise DatasetFormatError(f"{where}: class name is not valid UTF-8 ({e})") from e


def _read_batch(members: _Members, member: str, spec: _Spec) -> tuple[np.ndarray, np.ndarray]:
    where = members.describe(member)
    batch = _unpickle(members, member)
    _require(batch, ("data", spec.label_key), where)
    data = np.asarray(batch["data"])
    if data.ndim != 2 or data.shape[1] != _ROW:
        raise DatasetFormatError(f"{where}: 'data' has shape {data.shape}, expected (N, {_ROW}) (32x32x3 CHW rows)")
    if data.dtype != np.uint8:
        if data.dtype.kind not in "iu" or (data.size and (data.min() < 0 or data.max() > 255)):
            raise DatasetFormatError(f"{where}: 'data' must hold uint8 pixel values, got dtype {data.dtype}")
        data = data.astype(np.uint8)
    labels = np.asarray(batch[spec.label_key])
    if labels.ndim != 1 or (labels.size and labels.dtype.kind not in "iu"):
        raise DatasetFormatError(
            f"{where}: {spec.label_key!r} must be a flat list of integers, "
            f"got dtype {labels.dtype}, shape {labels.shape}"
        )
    if len(labels) != len(data):
        raise DatasetFormatError(f"{where}: {len(data)} images but {len(labels)} {spec.label_key!r}")
    if labels.size and (labels.min() < 0 or labels.max() >= spec.num_classes):
        raise DatasetFormatError(
            f"{where}: {spec.label_key!r} span [{labels.min()}, {labels.max()}], expected [0, {spec.num_classes})"
        )
    x = data.reshape(-1, 3, _SIDE, _SIDE).transpose(0, 2, 3, 1)  # CHW rows -> HWC
    return np.ascontiguousarray(x), labels.astype(np.int64)


# --- download and prepare -----------------------------------------------------------------


def download_cifar(name: str, root: str | os.PathLike) -> Path:
    """Download CIFAR-10 / CIFAR-100 (Krizhevsky, 2009) into ``root`` via torchvision.

    Uses ``torchvision.datasets.CIFAR10`` / ``CIFAR100`` with ``download=True``, which
    fetches the python-pickle tarball, checks torchvision's MD5 and extracts it (and
    does nothing if it is already there). Returns the extracted directory
    (``root/cifar-10-batches-py`` / ``root/cifar-100-python``), or the tarball if only
    that is present: either is a valid ``source`` for :func:`read_cifar_python`.
    """
    spec = _spec(name)
    import torchvision.datasets as tvd  # deferred: only needed here

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
    cls(root=str(root), train=False, download=True)  # the test split is the cheaper one to load
    for candidate in (root / spec.folder, root / spec.archive):
        if candidate.exists():
            return candidate
    raise DatasetFormatError(
        f"{root}: torchvision reported success but neither {spec.folder}/ nor {spec.archive} is there"
    )


def prepare_cifar(
    name: str,
    out_dir: str | os.PathLike,
    source: str | os.PathLike | None = None,
    download_root: str | os.PathLike | None = None,
    expected_sizes: tuple[int | None, int | None] | None = (50000, 10000),
) -> tuple[Path, Path]:
    """Convert CIFAR-10 / CIFAR-100 (Krizhevsky, 2009) to ``out_dir/train.npz`` and ``out_dir/test.npz``.

    Reads ``source`` (see :func:`read_cifar_python`) if given; otherwise downloads into
    ``download_root`` with :func:`download_cifar`. Both splits are read and validated
    before anything is written, so a bad source leaves ``out_dir`` untouched; each file
    is then written atomically with :func:`save_dataset`. Returns (train path, test path).
    """
    _spec(name)
    if source is None:
        if download_root is None:
            raise ValueError("prepare_cifar needs source= (a local copy) or download_root= (to download)")
        source = download_cifar(name, download_root)
    train, test = read_cifar_python(source, name, expected_sizes=expected_sizes)
    return write_splits(out_dir, train, test)


def prepare_synthetic(
    out_dir: str | os.PathLike,
    n_train: int,
    n_test: int,
    num_classes: int = 10,
    image_size: int = 32,
    seed: int = 0,
    channels: int = 3,
) -> tuple[Path, Path]:
    """Write ``make_synthetic`` data (RGB, or grey with ``channels=1``; splits ``"train"`` /
    ``"test"``) as ``out_dir/train.npz`` / ``test.npz``.

    A stand-in for CIFAR with the same file layout as :func:`prepare_cifar`; returns
    (train path, test path).
    """
    kw = dict(num_classes=num_classes, image_size=image_size, channels=channels, seed=seed)
    train = make_synthetic(n_train, split="train", **kw)
    test = make_synthetic(n_test, split="test", **kw)
    return write_splits(out_dir, train, test)

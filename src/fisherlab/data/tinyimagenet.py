"""TinyImageNet (Le & Yang, 2015) -> the canonical ``.npz`` format, downsized to 32 x 32.

The paper (Section 4, Supplement I.2) trains a Wide ResNet on TinyImageNet "downsized to
32x32 pixels". The official distribution is ``tiny-imagenet-200.zip``, holding::

    tiny-imagenet-200/wnids.txt                        the 200 wnids, one per line
    tiny-imagenet-200/words.txt                        wnid <TAB> names (all of WordNet)
    tiny-imagenet-200/train/<wnid>/images/<wnid>_<k>.JPEG   500 per class, 64x64
    tiny-imagenet-200/train/<wnid>/<wnid>_boxes.txt    (bounding boxes; ignored)
    tiny-imagenet-200/val/images/val_<k>.JPEG          10,000 images, 64x64
    tiny-imagenet-200/val/val_annotations.txt          file <TAB> wnid <TAB> x0 y0 x1 y1
    tiny-imagenet-200/test/images/test_<k>.JPEG        no labels: ignored

Decisions:

- The labelled ``val`` set (10,000 images, 50 per class) is the **test** split: the
  official test set has no labels. (The paper does not use a validation set for
  TinyImageNet, Supplement I.2.)
- Class index = the line order of ``wnids.txt``. ``classes`` holds each wnid's entry of
  ``words.txt`` (e.g. ``"goldfish, Carassius auratus"``), or the wnid where ``words.txt``
  is absent or lacks it; ``class_names="wnids"`` stores the wnids instead.
- Order of examples: train class by class (wnids.txt order), within a class by file name
  in natural order (``_2`` before ``_10``); val by file name in natural order
  (``val_0``, ``val_1``, ...).
- Every image is decoded, converted to RGB (some are greyscale: the grey value is repeated
  in the three channels) and box-filtered to ``size`` x ``size``. For 64 -> 32 this is the
  mean of each 2 x 2 block (``Image.reduce(2)``, one rounding), the box filter of the
  downsampled ImageNet of Chrabaszcz et al. (2017); an exact 2x box average is free of the
  ringing of Lanczos / bicubic and of the aliasing of nearest-neighbour sampling. See
  :func:`fisherlab.data.imagenet.box_resize`.

The zip is read member by member without extracting it; an extracted folder works too.
Everything is read and validated before anything is written.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import urllib.request
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from fisherlab.atomic import atomic_write
from fisherlab.data.format import DatasetFormatError, ImageDataset, write_splits
from fisherlab.data.imagenet import (
    _check_expected,
    _check_size,
    decode_image,
)

logger = logging.getLogger(__name__)

TINYIMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
# MD5 of the official zip as used by common loaders, e.g. ContinualAI/avalanche
# (avalanche/benchmarks/datasets/tiny_imagenet/tiny_imagenet.py, TinyImagenet.md5).
TINYIMAGENET_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
TINYIMAGENET_SIZES = (100000, 10000)  # train images (500 x 200 classes), val images (50 x 200)
_ARCHIVE = "tiny-imagenet-200.zip"
_FOLDER = "tiny-imagenet-200"
_IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
_PROGRESS_EVERY = 20000


def _natural_key(name: str) -> list[object]:
    """``val_2`` before ``val_10``: digit runs compare as numbers."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


# --- the tiny-imagenet-200 tree, in a zip or a folder ----------------------------------------------


class _Tree:
    """Read-only view of the ``tiny-imagenet-200`` directory, inside a zip or on disk.

    Paths are relative to that directory, with ``/`` separators.
    """

    def __init__(self, origin: Path, zf: zipfile.ZipFile | None, prefix: str = "") -> None:
        self.origin, self.zf, self.prefix = origin, zf, prefix
        self.files: dict[str, set[str]] = {}  # zip only: directory -> names of the files in it
        self.dirs: dict[str, set[str]] = {}  # zip only: directory -> names of its subdirectories
        if zf is not None:
            for name in zf.namelist():
                if not name.startswith(prefix) or name.endswith("/"):
                    continue
                parts = name[len(prefix) :].split("/")
                self.files.setdefault("/".join(parts[:-1]), set()).add(parts[-1])
                for i in range(len(parts) - 1):
                    self.dirs.setdefault("/".join(parts[:i]), set()).add(parts[i])

    def describe(self, rel: str) -> str:
        if self.zf is not None:
            return f"{self.origin}: member {self.prefix}{rel}"
        return str(self.origin / rel)

    def is_file(self, rel: str) -> bool:
        if self.zf is not None:
            head, _, name = rel.rpartition("/")
            return name in self.files.get(head, ())
        return (self.origin / rel).is_file()

    def is_dir(self, rel: str) -> bool:
        if self.zf is not None:
            head, _, name = rel.rpartition("/")
            return name in self.dirs.get(head, ())
        return (self.origin / rel).is_dir()

    def list_files(self, rel: str) -> list[str]:
        if self.zf is not None:
            return sorted(self.files.get(rel, ()))
        folder = self.origin / rel
        return sorted(p.name for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []

    def list_dirs(self, rel: str) -> list[str]:
        if self.zf is not None:
            return sorted(self.dirs.get(rel, ()))
        folder = self.origin / rel
        return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []

    def read(self, rel: str) -> bytes:
        if self.zf is None:
            try:
                return (self.origin / rel).read_bytes()
            except OSError as e:
                raise DatasetFormatError(f"{self.describe(rel)}: cannot read ({type(e).__name__}: {e})") from e
        try:
            return self.zf.read(self.prefix + rel)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, KeyError) as e:
            raise DatasetFormatError(
                f"{self.describe(rel)}: truncated or corrupt zip archive ({type(e).__name__}: {e})"
            ) from e

    def read_text(self, rel: str) -> str:
        try:
            return self.read(rel).decode("utf-8")
        except UnicodeDecodeError as e:
            raise DatasetFormatError(f"{self.describe(rel)}: not UTF-8 text ({e})") from e


def _open_zip(path: Path) -> _Tree:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise DatasetFormatError(f"{path}: truncated or corrupt zip archive ({type(e).__name__}: {e})") from e
    names = set(zf.namelist())
    for prefix in (f"{_FOLDER}/", ""):
        if f"{prefix}wnids.txt" in names:
            return _refuse_duplicates(_Tree(path, zf, prefix))
    found = sorted(n for n in names if n.count("/") == 1 and n.endswith("/wnids.txt"))
    if len(found) == 1:
        return _refuse_duplicates(_Tree(path, zf, found[0][: -len("wnids.txt")]))
    zf.close()
    raise DatasetFormatError(
        f"{path}: no {_FOLDER}/wnids.txt in the archive; is it the official {_ARCHIVE}?"
    )


def _refuse_duplicates(tree: _Tree) -> _Tree:
    """A zip may hold two entries of one name; reading it would silently take the later
    one. Refuse the archive, naming the first such member under the tree's folder."""
    seen: set[str] = set()
    for name in tree.zf.namelist():
        if name.startswith(tree.prefix) and not name.endswith("/"):
            if name in seen:
                tree.zf.close()
                raise DatasetFormatError(
                    f"{tree.origin}: the archive holds member {name} more than once; refusing to guess which "
                    f"copy is meant (the official {_ARCHIVE} holds each member once)"
                )
            seen.add(name)
    return tree


def _open_source(source: Path) -> _Tree:
    if source.is_file():
        return _open_zip(source)
    if source.is_dir():
        for directory in (source / _FOLDER, source):
            if (directory / "wnids.txt").is_file():
                return _Tree(directory, None)
        for directory in (source / _FOLDER, source):
            if (directory / "train").is_dir() or (directory / "val").is_dir():
                raise DatasetFormatError(f"{directory / 'wnids.txt'}: missing file (the list of the class wnids)")
        if (source / _ARCHIVE).is_file():
            return _open_zip(source / _ARCHIVE)
        raise DatasetFormatError(
            f"{source}: holds neither {_ARCHIVE}, nor an extracted {_FOLDER}/ directory (with wnids.txt), "
            "nor is it such a directory"
        )
    raise DatasetFormatError(f"{source}: no such file or directory (expected {_ARCHIVE} or a folder holding it)")


# --- metadata ---------------------------------------------------------------------------------


def _read_wnids(tree: _Tree) -> list[str]:
    where = tree.describe("wnids.txt")
    wnids = [line.strip() for line in tree.read_text("wnids.txt").splitlines() if line.strip()]
    if not wnids:
        raise DatasetFormatError(f"{where}: lists no wnids")
    bad = [w for w in wnids if not re.fullmatch(r"[^\s/\\]+", w)]
    if bad:
        raise DatasetFormatError(f"{where}: {bad[0]!r} is not a wnid (one token per line expected)")
    seen: set[str] = set()
    for w in wnids:
        if w in seen:
            raise DatasetFormatError(f"{where}: wnid {w!r} listed twice")
        seen.add(w)
    return wnids


def _read_words(tree: _Tree, wnids: list[str]) -> list[str]:
    """Class names from ``words.txt`` (wnid TAB names); the wnid where missing."""
    if not tree.is_file("words.txt"):
        return list(wnids)
    wanted, names = set(wnids), {}
    for n, line in enumerate(tree.read_text("words.txt").splitlines(), start=1):
        if not line.strip():
            continue
        wnid, tab, words = line.partition("\t")
        if not tab:
            raise DatasetFormatError(f"{tree.describe('words.txt')}, line {n}: expected 'wnid<TAB>names', got {line!r}")
        if wnid.strip() in wanted and words.strip():
            names[wnid.strip()] = words.strip()
    return [names.get(w, w) for w in wnids]


def _is_image(name: str) -> bool:
    return name.lower().endswith(_IMAGE_SUFFIXES)


def _list_train(tree: _Tree, wnids: list[str]) -> tuple[list[str], list[int]]:
    if not tree.is_dir("train"):
        raise DatasetFormatError(f"{tree.describe('train')}: missing folder (train/<wnid>/images/)")
    known = set(wnids)
    unknown = [d for d in tree.list_dirs("train") if d not in known]
    if unknown:
        raise DatasetFormatError(
            f"{tree.describe('train')}: folder(s) {unknown[:5]} are not wnids listed in wnids.txt"
        )
    files: list[str] = []
    labels: list[int] = []
    for k, wnid in enumerate(wnids):
        folder = f"train/{wnid}/images"
        if not tree.is_dir(folder):
            raise DatasetFormatError(f"{tree.describe(folder)}: missing folder for wnid {wnid} of wnids.txt")
        names = sorted((n for n in tree.list_files(folder) if _is_image(n)), key=_natural_key)
        if not names:
            raise DatasetFormatError(f"{tree.describe(folder)}: holds no images")
        files += [f"{folder}/{n}" for n in names]
        labels += [k] * len(names)
    return files, labels


def _list_val(tree: _Tree, wnids: list[str]) -> tuple[list[str], list[int]]:
    ann = "val/val_annotations.txt"
    if not tree.is_file(ann):
        raise DatasetFormatError(f"{tree.describe(ann)}: missing file (the labels of the val images)")
    index = {w: k for k, w in enumerate(wnids)}
    present = {n for n in tree.list_files("val/images") if _is_image(n)}
    labels: dict[str, int] = {}
    for n, line in enumerate(tree.read_text(ann).splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        where = f"{tree.describe(ann)}, line {n}"
        if len(fields) < 2 or not re.fullmatch(r"[^\s/\\]+", fields[0].strip()) or not fields[1].strip():
            raise DatasetFormatError(f"{where}: expected 'file<TAB>wnid<TAB>x0<TAB>y0<TAB>x1<TAB>y1', got {line!r}")
        name, wnid = fields[0].strip(), fields[1].strip()
        if wnid not in index:
            raise DatasetFormatError(f"{where}: wnid {wnid!r} (for {name}) is not listed in wnids.txt")
        if name not in present:
            raise DatasetFormatError(f"{where}: image {name} is missing from {tree.describe('val/images')}")
        if name in labels:
            raise DatasetFormatError(f"{where}: image {name} annotated twice")
        labels[name] = index[wnid]
    unlabelled = sorted(present - labels.keys(), key=_natural_key)
    if unlabelled:
        raise DatasetFormatError(
            f"{tree.describe(ann)}: gives no label for {len(unlabelled)} image(s) of val/images "
            f"(e.g. {unlabelled[0]})"
        )
    names = sorted(labels, key=_natural_key)
    return [f"val/images/{n}" for n in names], [labels[n] for n in names]


def _decode(tree: _Tree, files: list[str], size: int, split: str) -> np.ndarray:
    x = np.empty((len(files), size, size, 3), dtype=np.uint8)
    for i, rel in enumerate(files):
        x[i] = decode_image(tree.read(rel), size, tree.describe(rel))
        if (i + 1) % _PROGRESS_EVERY == 0:
            logger.info("TinyImageNet %s: decoded %d / %d images", split, i + 1, len(files))
    return x


# --- public API ---------------------------------------------------------------------------------


def read_tinyimagenet(
    source: str | os.PathLike,
    size: int = 32,
    expected_sizes: tuple[int | None, int | None] | None = TINYIMAGENET_SIZES,
    class_names: str = "words",
) -> tuple[ImageDataset, ImageDataset]:
    """Read TinyImageNet (Le & Yang, 2015) from ``tiny-imagenet-200.zip`` or its extracted folder.

    ``source`` is the zip (read without extracting); a folder holding it; a folder holding
    the extracted ``tiny-imagenet-200/``; or that directory itself. An extracted directory
    is preferred over a zip in the same folder.

    Returns ``(train, test)``: the 100,000 train images and, as the test split, the 10,000
    labelled val images (the official test set has no labels). ``x`` is uint8
    (N, size, size, 3) RGB, box-filtered from 64 x 64 (2 x 2 block means for ``size`` = 32,
    the paper's resolution); ``y`` is int64, the line index of the wnid in ``wnids.txt``.
    ``classes`` are the ``words.txt`` names (``class_names="words"``, the wnid where none)
    or the wnids (``class_names="wnids"``).

    ``expected_sizes`` is the required ``(n_train, n_test)``, by default the real
    (100000, 10000), checked after listing the files and before decoding any; ``None`` (or
    a ``None`` entry) skips it.

    Raises :class:`DatasetFormatError`, naming the file or member, if the zip is truncated
    or corrupt, or holds a member twice; ``wnids.txt`` or ``val/val_annotations.txt`` is missing or malformed; a
    wnid's ``train/<wnid>/images/`` folder is missing or empty, or ``train/`` holds a folder
    that is not a listed wnid; an annotation names an unknown wnid or a missing image, or a
    val image has no annotation; an image does not decode; or a split has the wrong size.
    """
    size = _check_size(size)
    sizes = _check_expected(expected_sizes)
    if class_names not in ("words", "wnids"):
        raise ValueError(f"class_names must be 'words' or 'wnids', got {class_names!r}")
    tree = _open_source(Path(source))
    try:
        wnids = _read_wnids(tree)
        classes = _read_words(tree, wnids) if class_names == "words" else list(wnids)
        train_files, train_labels = _list_train(tree, wnids)
        val_files, val_labels = _list_val(tree, wnids)
        for split, folder, n, expected in (
            ("train", "train", len(train_files), sizes[0]),
            ("val (test)", "val/images", len(val_files), sizes[1]),
        ):
            if expected is not None and n != expected:
                raise DatasetFormatError(
                    f"{tree.describe(folder)}: TinyImageNet {split} split has {n} images, expected {expected}"
                )
        splits = []
        for split, files, labels in (("train", train_files, train_labels), ("val", val_files, val_labels)):
            x = _decode(tree, files, size, split)
            splits.append(ImageDataset(x, np.asarray(labels, dtype=np.int64), tuple(classes)))
    finally:
        if tree.zf is not None:
            tree.zf.close()
    return splits[0], splits[1]


def _fetch(url: str, out: BinaryIO) -> None:
    """Stream ``url`` into the file object ``out`` (the only network access; tests replace it)."""
    with urllib.request.urlopen(url, timeout=60) as response:
        shutil.copyfileobj(response, out, 1 << 20)


class _HashingWriter:
    def __init__(self, f: BinaryIO) -> None:
        self.f, self.md5, self.n = f, hashlib.md5(usedforsecurity=False), 0

    def write(self, data: bytes) -> int:
        self.md5.update(data)
        self.n += len(data)
        return self.f.write(data)


def _file_md5(path: Path) -> str:
    md5 = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            md5.update(chunk)
    return md5.hexdigest()


def download_tinyimagenet(root: str | os.PathLike) -> Path:
    """Download the official ``tiny-imagenet-200.zip`` into ``root``; return its path.

    Fetches :data:`TINYIMAGENET_URL` (about 248 MB) into a temporary file beside the
    target, checks its MD5 against :data:`TINYIMAGENET_MD5` and only then renames it to
    ``root/tiny-imagenet-200.zip``; on a mismatch (or any error) the temporary file is
    removed and :class:`DatasetFormatError` is raised. If the zip is already there with the
    right MD5, nothing is downloaded. A file already there with another MD5 is left alone
    and reported (delete it to download again).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    path = root / _ARCHIVE
    expected = TINYIMAGENET_MD5
    if path.is_file():
        digest = _file_md5(path)
        if digest == expected:
            return path
        raise DatasetFormatError(
            f"{path}: MD5 {digest} differs from the official {expected}; the file is corrupt, partial or "
            "not the official archive (delete it to download again)"
        )
    logger.info("downloading %s to %s", TINYIMAGENET_URL, path)
    with atomic_write(path) as f:  # the temporary file is removed if this block raises
        writer = _HashingWriter(f)
        _fetch(TINYIMAGENET_URL, writer)  # type: ignore[arg-type]
        digest = writer.md5.hexdigest()
        if digest != expected:
            raise DatasetFormatError(
                f"{TINYIMAGENET_URL}: downloaded {writer.n} bytes with MD5 {digest}, expected {expected}; "
                f"the download was discarded (nothing written to {path})"
            )
    return path


def prepare_tinyimagenet(
    out_dir: str | os.PathLike,
    source: str | os.PathLike | None = None,
    download_root: str | os.PathLike | None = None,
    size: int = 32,
    expected_sizes: tuple[int | None, int | None] | None = TINYIMAGENET_SIZES,
    class_names: str = "words",
) -> tuple[Path, Path]:
    """Convert TinyImageNet to ``out_dir/train.npz`` and ``out_dir/test.npz`` (the labelled val as test).

    Reads ``source`` (see :func:`read_tinyimagenet`) if given; otherwise downloads into
    ``download_root`` with :func:`download_tinyimagenet`. Images are box-filtered to
    ``size`` x ``size`` (default 32, as the paper). Both splits are read and validated
    before anything is written, so a bad source leaves ``out_dir`` untouched; each file is
    then written atomically. Returns (train path, test path).
    """
    if source is None:
        if download_root is None:
            raise ValueError("prepare_tinyimagenet needs source= (a local copy) or download_root= (to download)")
        source = download_tinyimagenet(download_root)
    train, test = read_tinyimagenet(source, size=size, expected_sizes=expected_sizes, class_names=class_names)
    return write_splits(out_dir, train, test)

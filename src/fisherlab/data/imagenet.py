"""ImageNet (ILSVRC2012; Deng et al., 2009) from a local folder -> the canonical ``.npz`` format.

The paper's Section 3 / Supplement I.1 trains ResNet-18 (Fixup) on ImageNet without
augmentation. Nothing is downloaded here (ImageNet needs a registered account): the
user names a local copy, in one of these layouts::

    <source>/train/<wnid>/*.JPEG        1,281,167 images, 1,000 class folders
    <source>/val/<wnid>/*.JPEG          "sorted" val (PyTorch's examples, valprep.sh)
or  <source>/val/*.JPEG                 raw val (ILSVRC2012_img_val.tar, 50,000 files)
    + a ground truth file LOC_val_solution.csv (Kaggle "ImageNet Object Localization
      Challenge": ``ImageId,PredictionString`` with the wnid as the first token),
      found in <source> or passed as ``val_ground_truth=``.

The Kaggle layout ``<source>/ILSVRC/Data/CLS-LOC/{train,val}`` with
``<source>/LOC_val_solution.csv`` is found too. The devkit's ground truth
(``ILSVRC2012_validation_ground_truth.txt`` numbered by ILSVRC2012_ID, whose wnids are in
the MATLAB file ``meta.mat``) is not read: it would need scipy; sort val/ into
val/<wnid>/ or use LOC_val_solution.csv instead.

Classes are the sorted wnids (folder names under train/), the order
``torchvision.datasets.ImageFolder`` gives; ``classes`` holds the wnids. The labelled
validation set is the test split. Within a split, examples are ordered class by class,
and within a class by sorted file name (ImageFolder's order), whichever val layout is used,
so both val layouts give identical arrays.

Resolution: every image is decoded, converted to RGB (greyscale and CMYK included) and
resized *as a whole* (no crop; the aspect ratio is not kept) to ``size`` x ``size`` with
Pillow's box filter, following Chrabaszcz, Loshchilov & Hutter (2017), "A Downsampled
Variant of ImageNet as an Alternative to the CIFAR datasets" (Imagenet32x32): their script
(github.com/PatrykChrabaszcz/Imagenet32_Scripts, image_resizer_imagent.py) converts to
RGB and calls ``im.resize((size, size), alg)`` on the whole image, ``alg`` one of Pillow's
filters (box among them). No EXIF rotation is applied (as ImageFolder). The canonical
format holds a split in memory as one uint8 array, so full resolution is not an option
for 1.28M images: at ``size`` = 32 the train split takes 1281167 * 32 * 32 * 3 bytes
= 3.9 GB of RAM (and of disk), at 64 it takes 15.7 GB.

Images are decoded one at a time (optionally in a ``multiprocessing`` pool) straight into a
preallocated uint8 array. Everything is read and validated before anything is written.
"""

from __future__ import annotations

import csv
import io
import logging
import multiprocessing
import os
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fisherlab.data.format import DatasetFormatError, ImageDataset, write_splits

if TYPE_CHECKING:  # Pillow is imported where an image is decoded: ``import fisherlab.data`` needs only numpy
    from PIL import Image

logger = logging.getLogger(__name__)

IMAGENET_SIZES = (1281167, 50000)  # ILSVRC2012 train / val images
# File extensions torchvision's ImageFolder accepts (IMG_EXTENSIONS), compared case-insensitively.
_IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_GROUND_TRUTH = "LOC_val_solution.csv"
_KAGGLE_ROOT = Path("ILSVRC", "Data", "CLS-LOC")
_PROGRESS_EVERY = 50000

_LAYOUT_HELP = (
    "expected <source>/train/<wnid>/*.JPEG and either <source>/val/<wnid>/*.JPEG (sorted val) or "
    f"<source>/val/*.JPEG with a {_GROUND_TRUTH} ground truth (in <source> or given as val_ground_truth=)"
)


# --- decoding and resizing (shared with fisherlab.data.tinyimagenet) -------------------------


def box_resize(img: Image.Image, size: int) -> Image.Image:
    """Resize the whole of ``img`` to ``size`` x ``size`` with a box filter (no crop).

    A box filter averages, with equal weights, the source pixels that fall in each output
    pixel's footprint. Where both sides are integer multiples of ``size`` (TinyImageNet's
    64 -> 32 is 2x), ``Image.reduce`` computes the mean of each block with a single rounding
    (exactly ``floor(mean + 1/2)`` for 2 x 2 blocks; within 0.56 of the mean for e.g. 3 x 3,
    where Pillow divides in fixed point); Pillow's ``resize(..., Image.BOX)`` would take the
    same pixels but rounds to 8 bits between its horizontal and vertical passes (up to one
    level too high, about +0.5 on average). Other ratios use ``resize(..., Image.BOX)``, as
    Chrabaszcz et al. (2017); there each source pixel goes wholly to one output pixel.
    """
    from PIL import Image

    w, h = img.size
    if (w, h) == (size, size):
        return img
    if w % size == 0 and h % size == 0:
        return img.reduce((w // size, h // size))
    return img.resize((size, size), Image.Resampling.BOX)


def decode_image(blob: bytes, size: int, where: str) -> np.ndarray:
    """Decode an encoded image (JPEG, PNG, ...) to RGB uint8 (size, size, 3) with :func:`box_resize`.

    Greyscale, CMYK, palette and alpha images are converted to RGB (a grey value is
    repeated in the three channels). Raises :class:`DatasetFormatError` naming ``where``
    if the bytes do not decode (unknown format, truncated or corrupt data).
    """
    from PIL import Image

    try:
        with Image.open(io.BytesIO(blob)) as im:
            im.load()  # decode now, so that a truncated file fails here
            rgb = im.convert("RGB")
    except Exception as e:
        raise DatasetFormatError(f"{where}: not a decodable image ({type(e).__name__}: {e})") from e
    return np.asarray(box_resize(rgb, size), dtype=np.uint8)


def _check_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    return int(size)


def _check_expected(expected_sizes: tuple[int | None, int | None] | None) -> tuple[int | None, int | None]:
    sizes = (None, None) if expected_sizes is None else tuple(expected_sizes)
    if len(sizes) != 2:
        raise ValueError(f"expected_sizes must be (n_train, n_test) or None, got {expected_sizes!r}")
    return sizes  # type: ignore[return-value]


# --- ImageNet layout ---------------------------------------------------------------------------


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in _IMG_EXTENSIONS and path.is_file()


def _images_in(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if _is_image(p)), key=lambda p: p.name)


def _find_root(source: Path) -> Path:
    if not source.is_dir():
        raise DatasetFormatError(f"{source}: no such directory; {_LAYOUT_HELP}")
    for root in (source, source / _KAGGLE_ROOT):
        if (root / "train").is_dir():
            return root
    raise DatasetFormatError(f"{source}: no train/ folder; {_LAYOUT_HELP}")


def _list_train(root: Path) -> tuple[tuple[str, ...], list[Path], list[int]]:
    train = root / "train"
    wnids = tuple(sorted(p.name for p in train.iterdir() if p.is_dir()))
    if not wnids:
        raise DatasetFormatError(f"{train}: holds no class folders; {_LAYOUT_HELP}")
    paths: list[Path] = []
    labels: list[int] = []
    for k, wnid in enumerate(wnids):
        files = _images_in(train / wnid)
        if not files:
            raise DatasetFormatError(f"{train / wnid}: class folder holds no images ({', '.join(_IMG_EXTENSIONS)})")
        paths += files
        labels += [k] * len(files)
    return wnids, paths, labels


def _list_val(
    root: Path, source: Path, wnids: tuple[str, ...], val_ground_truth: Path | None
) -> tuple[list[Path], list[int]]:
    val = root / "val"
    if not val.is_dir():
        raise DatasetFormatError(f"{val}: missing folder; {_LAYOUT_HELP}")
    index = {w: k for k, w in enumerate(wnids)}
    subdirs = sorted(p.name for p in val.iterdir() if p.is_dir())
    loose = _images_in(val)
    if subdirs and loose:
        raise DatasetFormatError(
            f"{val}: holds both class folders ({subdirs[0]}, ...) and loose images ({loose[0].name}, ...); "
            "use one val layout"
        )
    if subdirs:  # sorted layout: val/<wnid>/*.JPEG
        unknown = [d for d in subdirs if d not in index]
        if unknown:
            raise DatasetFormatError(f"{val}: class folder(s) {unknown[:5]} are not classes of train/ (wnids)")
        pairs = []
        for wnid in subdirs:
            pairs += [(index[wnid], p) for p in _images_in(val / wnid)]
    elif loose:  # raw layout: val/*.JPEG + ground truth
        gt_path = _ground_truth_path(root, source, val_ground_truth)
        truth = _read_ground_truth(gt_path, index)
        stems = {p.stem for p in loose}
        unlabelled = [p.name for p in loose if p.stem not in truth]
        if unlabelled:
            raise DatasetFormatError(
                f"{gt_path}: gives no label for {len(unlabelled)} image(s) of {val} (e.g. {unlabelled[0]})"
            )
        absent = [stem for stem in truth if stem not in stems]
        if absent:
            raise DatasetFormatError(f"{gt_path}: lists {len(absent)} image(s) missing from {val} (e.g. {absent[0]})")
        pairs = [(truth[p.stem], p) for p in loose]
    else:
        raise DatasetFormatError(f"{val}: holds no images; {_LAYOUT_HELP}")
    pairs.sort(key=lambda t: (t[0], t[1].name))  # class by class, then file name: same for both layouts
    return [p for _, p in pairs], [k for k, _ in pairs]


def _ground_truth_path(root: Path, source: Path, given: Path | None) -> Path:
    if given is not None:
        if not given.is_file():
            raise DatasetFormatError(f"{given}: no such ground-truth file (expected {_GROUND_TRUTH})")
        return given
    for candidate in (source / _GROUND_TRUTH, root / _GROUND_TRUTH):
        if candidate.is_file():
            return candidate
    raise DatasetFormatError(
        f"{root / 'val'}: holds images directly (the raw ILSVRC2012_img_val.tar layout) but no ground truth "
        f"was found: put {_GROUND_TRUTH} (Kaggle ILSVRC CLS-LOC: ImageId,PredictionString) in {source} or pass "
        "val_ground_truth=, or sort val/ into val/<wnid>/ folders (e.g. with valprep.sh from PyTorch's ImageNet "
        "example). The devkit's meta.mat ground truth is not supported."
    )


def _read_ground_truth(path: Path, index: dict[str, int]) -> dict[str, int]:
    """``LOC_val_solution.csv``: header ``ImageId,PredictionString``; the label is the first wnid."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetFormatError(f"{path}: cannot read ground truth ({type(e).__name__}: {e})") from e
    rows = csv.DictReader(io.StringIO(text))
    if rows.fieldnames is None or not {"ImageId", "PredictionString"} <= set(rows.fieldnames):
        raise DatasetFormatError(f"{path}: expected a CSV with header ImageId,PredictionString, got {rows.fieldnames}")
    labels: dict[str, int] = {}
    for row in rows:
        line = rows.line_num
        image_id, prediction = (row.get("ImageId") or "").strip(), (row.get("PredictionString") or "").split()
        if not image_id or not prediction:
            raise DatasetFormatError(f"{path}, line {line}: empty ImageId or PredictionString")
        if prediction[0] not in index:
            raise DatasetFormatError(f"{path}, line {line}: wnid {prediction[0]!r} is not a class of train/")
        if image_id in labels:
            raise DatasetFormatError(f"{path}, line {line}: image {image_id!r} listed twice")
        labels[image_id] = index[prediction[0]]
    return labels


# --- decoding ---------------------------------------------------------------------------------


def _load_file(path: str, size: int) -> np.ndarray:
    """Read and decode one image file (module level, so a multiprocessing pool can run it)."""
    try:
        blob = Path(path).read_bytes()
    except OSError as e:
        raise DatasetFormatError(f"{path}: cannot read ({type(e).__name__}: {e})") from e
    return decode_image(blob, size, path)


def _decode_all(paths: list[Path], size: int, workers: int, split: str) -> np.ndarray:
    x = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    load = partial(_load_file, size=size)
    names = [str(p) for p in paths]
    if workers <= 1:
        results = map(load, names)
        _fill(x, results, split)
    else:
        with multiprocessing.get_context().Pool(workers) as pool:
            _fill(x, pool.imap(load, names, chunksize=256), split)
    return x


def _fill(x: np.ndarray, results, split: str) -> None:
    for i, img in enumerate(results):
        x[i] = img
        if (i + 1) % _PROGRESS_EVERY == 0:
            logger.info("ImageNet %s: decoded %d / %d images", split, i + 1, len(x))


# --- public API ---------------------------------------------------------------------------------


def read_imagenet(
    source: str | os.PathLike,
    size: int = 32,
    expected_sizes: tuple[int | None, int | None] | None = IMAGENET_SIZES,
    workers: int = 1,
    val_ground_truth: str | os.PathLike | None = None,
) -> tuple[ImageDataset, ImageDataset]:
    """Read ImageNet (ILSVRC2012) from a local folder; return ``(train, test)`` downsized to ``size``.

    ``source`` holds ``train/<wnid>/`` and ``val/`` (sorted ``val/<wnid>/`` or raw ``val/*.JPEG``
    with ``LOC_val_solution.csv``; see the module docstring), or ``ILSVRC/Data/CLS-LOC/`` with
    them. The labelled val set is returned as the test split. ``x`` is uint8
    (N, size, size, 3) RGB, each whole image box-resized (no crop, as Chrabaszcz et al.,
    2017); ``y`` int64 indexes ``classes``, the sorted wnids (ImageFolder's order).

    ``expected_sizes`` is the required ``(n_train, n_test)``, by default the real
    (1281167, 50000), checked after listing the files and before decoding any; ``None`` (or
    a ``None`` entry) skips it. ``workers`` > 1 decodes in a ``multiprocessing`` pool of that
    many processes (same result); one process decodes a 500x375 JPEG in about 2 ms, so the
    full train split takes most of an hour with ``workers=1``. Needs ``N * size * size * 3``
    bytes of RAM per split.

    Raises :class:`DatasetFormatError`, naming the file or folder, on a missing or unknown
    layout, an empty class folder, a val class that is not a train class, a missing,
    unknown or incomplete ground truth, an undecodable image or a wrong number of images.
    """
    size = _check_size(size)
    sizes = _check_expected(expected_sizes)
    source = Path(source)
    root = _find_root(source)
    wnids, train_paths, train_labels = _list_train(root)
    val_paths, val_labels = _list_val(
        root, source, wnids, None if val_ground_truth is None else Path(val_ground_truth)
    )
    for split, folder, n, expected in (
        ("train", root / "train", len(train_paths), sizes[0]),
        ("val (test)", root / "val", len(val_paths), sizes[1]),
    ):
        if expected is not None and n != expected:
            raise DatasetFormatError(f"{folder}: ImageNet {split} split has {n} images, expected {expected}")
    splits = []
    for split, paths, labels in (("train", train_paths, train_labels), ("val", val_paths, val_labels)):
        x = _decode_all(paths, size, workers, split)
        splits.append(ImageDataset(x, np.asarray(labels, dtype=np.int64), wnids))
    return splits[0], splits[1]


def prepare_imagenet(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    size: int = 32,
    expected_sizes: tuple[int | None, int | None] | None = IMAGENET_SIZES,
    workers: int = 1,
    val_ground_truth: str | os.PathLike | None = None,
) -> tuple[Path, Path]:
    """Convert a local ImageNet copy to ``out_dir/train.npz`` and ``out_dir/test.npz`` (val as test).

    See :func:`read_imagenet` for the layouts, the class order and the box resizing to
    ``size`` x ``size`` (default 32, as Imagenet32x32 of Chrabaszcz et al., 2017). Both
    splits are read and validated before anything is written, so a bad source leaves
    ``out_dir`` untouched; each file is written atomically. Returns (train path, test path).
    """
    train, test = read_imagenet(
        source, size=size, expected_sizes=expected_sizes, workers=workers, val_ground_truth=val_ground_truth
    )
    return write_splits(out_dir, train, test)

"""On-device batching with the paper's "standard data augmentation" (Supplement I.2).

A whole split lives on one device as a uint8 NHWC tensor; batches are gathered,
augmented (random crop with 4-pixel zero padding + horizontal flip) and normalised
there, with all randomness drawn from one ``torch.Generator`` on the same device.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from fisherlab.data.format import ImageDataset

_STATS_CHUNK = 1024  # examples per chunk in channel_stats


def channel_stats(ds: ImageDataset) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of ``x / 255``, accumulated in float64 chunks."""
    channels = ds.x.shape[3]
    total = np.zeros(channels)
    total_sq = np.zeros(channels)
    for start in range(0, len(ds), _STATS_CHUNK):
        chunk = ds.x[start : start + _STATS_CHUNK].astype(np.float64) / 255.0
        total += chunk.sum(axis=(0, 1, 2))
        total_sq += np.square(chunk).sum(axis=(0, 1, 2))
    count = ds.x.size // channels
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    return tuple(mean.tolist()), tuple(std.tolist())


def augment_batch(x: torch.Tensor, generator: torch.Generator, pad: int = 4, flip: bool = True) -> torch.Tensor:
    """Random crop with ``pad`` pixels of zero padding, then random horizontal flip (p = 0.5).

    ``x`` is (B, H, W, C) of any dtype on any device; the result has the same shape,
    dtype and device. Equivalent to torchvision's ``RandomCrop(H, padding=pad)`` and
    ``RandomHorizontalFlip()`` per example (the paper's standard augmentation uses
    ``pad=4``), vectorised over the batch. Offsets are drawn first, then flips, from
    ``generator``, which must live on ``x.device``.
    """
    _check_generator(generator, x.device)
    b, h, w, _ = x.shape
    padded = F.pad(x, (0, 0, pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b, 1), generator=generator, device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (b, 1), generator=generator, device=x.device)
    cols = torch.arange(w, device=x.device).expand(b, w)
    if flip:
        flipped = torch.rand(b, 1, generator=generator, device=x.device) < 0.5
        cols = torch.where(flipped, cols.flip(1), cols)
    rows = dy + torch.arange(h, device=x.device)
    batch = torch.arange(b, device=x.device)
    return padded[batch[:, None, None], rows[:, :, None], (dx + cols)[:, None, :]]


def _check_generator(generator: torch.Generator, device: torch.device) -> None:
    """Raise ValueError unless ``generator`` lives on ``device`` (the data's device)."""
    gen_device = generator.device
    same_index = gen_device.index is None or device.index is None or gen_device.index == device.index
    if gen_device.type != device.type or not same_index:
        raise ValueError(
            f"generator is on {gen_device} but the data are on {device}; "
            f"create it with torch.Generator(device={str(device)!r})"
        )


class DeviceData:
    """A whole split held on ``device``: ``x`` uint8 (N, H, W, C), ``y`` int64 (N,).

    Batches come out normalised, float32 NCHW: ``(x / 255 - mean) / std`` per channel,
    with ``mean``/``std`` defaulting to :func:`channel_stats` of ``ds``. With
    ``augment=True`` (or ``"crop_flip"``), training batches get the paper's standard
    augmentation (:func:`augment_batch` with ``pad``); with ``augment="flip"``, random
    horizontal flips only (Supplement I.1: "We used random flipping as data augmentation"
    for the CIFAR-10 runs of Section 3). Every generator passed in must be on ``device``.
    """

    def __init__(
        self,
        ds: ImageDataset,
        device: str | torch.device = "cpu",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        augment: bool | str = False,
        pad: int = 4,
    ) -> None:
        if augment not in (False, True, "flip", "crop_flip"):
            raise ValueError(f"augment must be False, True, 'crop_flip' or 'flip', got {augment!r}")
        self.device = torch.device(device)
        self.x = torch.tensor(ds.x, device=self.device)
        self.y = torch.tensor(ds.y, device=self.device)
        self.num_classes = ds.num_classes
        self.augment = bool(augment)
        self.pad = 0 if augment == "flip" else pad  # no padding: the crop is the identity
        if mean is None or std is None:
            stats = channel_stats(ds)
            mean = stats[0] if mean is None else mean
            std = stats[1] if std is None else std
        _check_stats(mean, std, ds.x.shape[3])
        self.mean = _channel_tensor(mean, self.device)
        self.std = _channel_tensor(std, self.device)

    def __len__(self) -> int:
        return len(self.y)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, C) -> contiguous float32 (B, C, H, W), ``(x / 255 - mean) / std``."""
        x = x.permute(0, 3, 1, 2).to(torch.float32).div(255.0)  # a new tensor: the in-place ops are safe
        return x.sub_(self.mean).div_(self.std).contiguous()

    def batch(
        self, indices: torch.Tensor | Sequence[int], generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Gather ``indices``; augment if ``self.augment`` and a generator is given; normalise."""
        idx = torch.as_tensor(indices, dtype=torch.long, device=self.device)
        x = self.x[idx]
        if self.augment and generator is not None:
            x = augment_batch(x, generator, pad=self.pad)
        return self.normalise(x), self.y[idx]

    def batches(
        self,
        batch_size: int,
        generator: torch.Generator | None,
        shuffle: bool = True,
        drop_last: bool = False,
        order: torch.Tensor | None = None,
        start: int = 0,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of ``(x, y)`` batches, shuffled by ``torch.randperm`` on ``generator``.

        The same generator drives augmentation. It may be None only when neither
        shuffling nor augmenting. ``order`` (an epoch's permutation, e.g. from
        :meth:`epoch_order`) and ``start`` (batches already done) resume an epoch midway.
        """
        _check_batch_size(batch_size)
        if generator is None and (shuffle or self.augment):
            raise ValueError("batches() needs a generator to shuffle or augment")
        if generator is not None:
            _check_generator(generator, self.device)
        n = len(self)
        if order is None:
            order = self.epoch_order(generator, shuffle)
        stop = n - n % batch_size if drop_last else n
        return (
            self.batch(order[i : i + batch_size], generator)
            for i in range(start * batch_size, stop, batch_size)
        )

    def epoch_order(self, generator: torch.Generator | None, shuffle: bool = True) -> torch.Tensor:
        """The order of one epoch: ``torch.randperm`` on ``generator``, or 0..N-1."""
        if shuffle:
            return torch.randperm(len(self), generator=generator, device=self.device)
        return torch.arange(len(self), device=self.device)

    def eval_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """All examples in order, in batches of ``batch_size``, never augmented."""
        _check_batch_size(batch_size)
        return (
            (self.normalise(self.x[i : i + batch_size]), self.y[i : i + batch_size])
            for i in range(0, len(self), batch_size)
        )


def _check_stats(mean: Sequence[float], std: Sequence[float], channels: int) -> None:
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"mean and std need {channels} values each, got {len(mean)} and {len(std)}")
    if min(std) <= 0:
        raise ValueError(f"std must be positive, got {tuple(std)}")


def _channel_tensor(values: Sequence[float], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=device).view(1, -1, 1, 1)


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")

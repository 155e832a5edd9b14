"""Data: the canonical ``.npz`` format, synthetic data, validation split and on-device loading."""

from fisherlab.data.cifar import download_cifar, prepare_cifar, prepare_synthetic, read_cifar_python
from fisherlab.data.format import DatasetFormatError, ImageDataset, load_dataset, save_dataset
from fisherlab.data.loader import DeviceData, augment_batch, channel_stats
from fisherlab.data.split import split_validation
from fisherlab.data.synthetic import make_synthetic

__all__ = [
    "DatasetFormatError",
    "DeviceData",
    "ImageDataset",
    "augment_batch",
    "channel_stats",
    "download_cifar",
    "load_dataset",
    "make_synthetic",
    "prepare_cifar",
    "prepare_synthetic",
    "read_cifar_python",
    "save_dataset",
    "split_validation",
]

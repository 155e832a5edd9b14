"""Data: the canonical ``.npz`` format, synthetic data, validation split and on-device loading."""

from fisherlab.data.checks import check_run_data
from fisherlab.data.cifar import download_cifar, prepare_cifar, prepare_synthetic, read_cifar_python
from fisherlab.data.format import DatasetFormatError, ImageDataset, load_dataset, save_dataset
from fisherlab.data.imagenet import prepare_imagenet, read_imagenet
from fisherlab.data.loader import DeviceData, augment_batch, channel_stats
from fisherlab.data.split import split_validation
from fisherlab.data.synthetic import make_synthetic
from fisherlab.data.tinyimagenet import download_tinyimagenet, prepare_tinyimagenet, read_tinyimagenet

__all__ = [
    "DatasetFormatError",
    "DeviceData",
    "ImageDataset",
    "augment_batch",
    "channel_stats",
    "check_run_data",
    "download_cifar",
    "download_tinyimagenet",
    "load_dataset",
    "make_synthetic",
    "prepare_cifar",
    "prepare_imagenet",
    "prepare_synthetic",
    "prepare_tinyimagenet",
    "read_cifar_python",
    "read_imagenet",
    "read_tinyimagenet",
    "save_dataset",
    "split_validation",
]

"""Data for sswp-fast: dataset readers, the seed-0 class-balanced split, batched device-side augmentation and
the batch iterators that feed the search (spec §2)."""

from __future__ import annotations

from sswp_fast.data.augment import (
    EvalTransform,
    SimCLRAugment,
    SupervisedAugment,
    adjust_hue,
    color_jitter,
    gaussian_blur3,
    luma,
)
from sswp_fast.data.datasets import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    DATASET_NAMES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    FolderDataset,
    ImageDataset,
    load_dataset,
)
from sswp_fast.data.loader import DEBUG_SUBSET, FolderBatches, ResidentBatches, build_search_loaders
from sswp_fast.data.split import class_balanced_split, split_list

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "DATASET_NAMES",
    "DEBUG_SUBSET",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "EvalTransform",
    "FolderBatches",
    "FolderDataset",
    "ImageDataset",
    "ResidentBatches",
    "SimCLRAugment",
    "SupervisedAugment",
    "adjust_hue",
    "build_search_loaders",
    "class_balanced_split",
    "color_jitter",
    "gaussian_blur3",
    "load_dataset",
    "luma",
    "split_list",
]

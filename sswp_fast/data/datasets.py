"""Datasets: read CIFAR-10/100, the embedded ``digits`` set and ImageNet-style image folders (spec §2.1).

* :class:`ImageDataset` holds a whole dataset as uint8 CPU tensors (CIFAR, digits); the training code moves it
  to the device once and augments batches there.
* :class:`FolderDataset` indexes an ImageNet-style folder tree that is too big to keep resident and decodes
  batches on demand with Pillow (an optional dependency).
* :func:`load_dataset` picks one of them by name.

CIFAR files are Python pickles. Since a pickle can run arbitrary code, they are read with a restricted unpickler
that only rebuilds numpy arrays. Nothing is ever downloaded.
"""

from __future__ import annotations

import importlib
import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from sswp_fast.errors import DataError

__all__ = [
    "DATASET_NAMES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "ImageDataset",
    "FolderDataset",
    "load_dataset",
    "load_cifar",
]

#: Names accepted by :func:`load_dataset`.
DATASET_NAMES = ("cifar10", "cifar100", "digits", "imagenet", "imagenet-tiny")

# Normalisation statistics of spec §2.4.
CIFAR10_MEAN = (0.49139968, 0.48215827, 0.44653124)
CIFAR10_STD = (0.24703233, 0.24348505, 0.26158768)
CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: File extensions (lower case) that :class:`FolderDataset` treats as images.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

# name -> (image size S, shorter side before the centre crop)
_FOLDER_SIZES = {"imagenet": (224, 256), "imagenet-tiny": (64, 64)}


@dataclass
class ImageDataset:
    """A dataset held in memory: uint8 images [N,3,H,W] and int64 labels [N], all on the CPU."""

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def resident_bytes(self) -> int:
        """Bytes the images and labels take on a device that holds them (the search keeps them there)."""
        return sum(t.numel() * t.element_size()
                   for t in (self.train_images, self.train_labels, self.test_images, self.test_labels))


# --------------------------------------------------------------------------------------------------------------
# CIFAR


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays (and nothing else that needs a global)."""

    _ALLOWED = frozenset(
        {
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
            # Python 3 writes bytes with protocol 2 as _codecs.encode(str, "latin1").
            ("_codecs", "encode"),
        }
    )

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        if module.startswith("numpy") and module.endswith("multiarray"):
            # Resolve both spellings to the module this numpy has (numpy>=2 renamed core to _core).
            try:
                mod = importlib.import_module("numpy._core.multiarray")
            except ImportError:  # numpy 1.x
                mod = importlib.import_module("numpy.core.multiarray")
            return getattr(mod, name)
        return getattr(importlib.import_module(module), name)


def _read_pickle(path: str) -> dict:
    try:
        with open(path, "rb") as fh:
            obj = _ArrayOnlyUnpickler(fh, encoding="bytes").load()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}; check the file's permissions") from None
    except Exception as exc:  # anything a corrupt or hostile pickle raises
        raise DataError(
            f"{path} is not a valid CIFAR pickle ({type(exc).__name__}: {exc}); re-download the dataset"
        ) from None
    if not isinstance(obj, dict):
        raise DataError(f"{path} holds a {type(obj).__name__}, not a CIFAR dict; re-download the dataset")
    return obj


def _field(d: dict, key: str, path: str) -> object:
    for k in (key.encode(), key):
        if k in d:
            return d[k]
    raise DataError(f"{path} has no '{key}' entry; re-download the dataset")


def _read_cifar_file(path: str, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    if not os.path.isfile(path):
        raise DataError(f"{path} is missing; re-download the dataset")
    d = _read_pickle(path)
    try:
        data = np.asarray(_field(d, "data", path))
        labels = np.asarray(_field(d, label_key, path))
        if labels.size == 0:
            labels = labels.astype(np.int64)  # an empty list comes back as float64
    except (TypeError, ValueError):
        raise DataError(f"{path} has malformed data or labels; re-download the dataset") from None
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(
            f"{path} holds data of shape {data.shape} and dtype {data.dtype}, expected (N, 3072) uint8; "
            "re-download the dataset"
        )
    if labels.ndim != 1 or labels.shape[0] != data.shape[0] or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path} holds {labels.shape} labels for {data.shape[0]} images; re-download the dataset")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(
            f"{path} has labels outside 0..{num_classes - 1}; check that the folder matches the dataset name"
        )
    return data, labels.astype(np.int64)


def _cifar_root(data_path: str | None, folder: str, display: str) -> str:
    if data_path is None:
        raise DataError(
            f"{display} needs --data_path: point it at the folder that contains {folder} (nothing is downloaded)"
        )
    data_path = os.path.expanduser(data_path)
    inner = os.path.join(data_path, folder)
    if os.path.isdir(inner):
        return inner
    if os.path.basename(os.path.normpath(data_path)) == folder and os.path.isdir(data_path):
        return data_path
    if not os.path.isdir(data_path):
        raise DataError(
            f"{display} folder {data_path} does not exist; point --data_path at the folder that contains {folder}"
        )
    # Accept a folder with another name that holds the files themselves.
    probe = "test_batch" if folder == "cifar-10-batches-py" else "test"
    if os.path.isfile(os.path.join(data_path, probe)):
        return data_path
    raise DataError(
        f"{data_path} holds no {folder} folder; point --data_path at the folder that contains {folder} "
        "(nothing is downloaded)"
    )


def load_cifar(name: str, data_path: str | None) -> ImageDataset:
    """Read CIFAR-10 (``name='cifar10'``) or CIFAR-100 (``'cifar100'``) from the standard python-version folder.

    ``data_path`` may be the folder that contains ``cifar-10-batches-py`` / ``cifar-100-python`` or that folder
    itself. Any problem (missing folder or file, corrupt pickle, wrong shapes) raises :class:`DataError`.
    """
    if name == "cifar10":
        folder, display, num_classes = "cifar-10-batches-py", "CIFAR-10", 10
        train_files = [f"data_batch_{i}" for i in range(1, 6)]
        test_files, label_key = ["test_batch"], "labels"
        mean, std = CIFAR10_MEAN, CIFAR10_STD
    elif name == "cifar100":
        folder, display, num_classes = "cifar-100-python", "CIFAR-100", 100
        train_files, test_files, label_key = ["train"], ["test"], "fine_labels"
        mean, std = CIFAR100_MEAN, CIFAR100_STD
    else:
        raise ValueError(f"load_cifar handles cifar10 and cifar100, not {name!r}")
    root = _cifar_root(data_path, folder, display)
    for fname in train_files + test_files:
        if not os.path.isfile(os.path.join(root, fname)):
            raise DataError(
                f"{display} folder {root} is missing {fname}; point --data_path at the folder that contains "
                f"{folder} (a complete copy)"
            )

    def read(files: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        parts = [_read_cifar_file(os.path.join(root, f), label_key, num_classes) for f in files]
        data = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
        labels = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
        images = torch.from_numpy(np.ascontiguousarray(data).reshape(-1, 3, 32, 32))
        return images, torch.from_numpy(labels)

    train_images, train_labels = read(train_files)
    test_images, test_labels = read(test_files)
    if train_images.shape[0] == 0 or test_images.shape[0] == 0:
        raise DataError(f"{display} folder {root} has an empty train or test split; re-download the dataset")
    return ImageDataset(name, train_images, train_labels, test_images, test_labels, num_classes, 32, mean, std)


# --------------------------------------------------------------------------------------------------------------
# Image folders (ImageNet, imagenet-tiny)


def _require_pillow() -> object:
    try:
        from PIL import Image
    except ImportError:
        raise DataError("Pillow is needed for image folders: pip install Pillow") from None
    return Image


def _scan_split(split_dir: str, what: str) -> tuple[list[str], list[str], list[int]]:
    """ImageFolder-style scan: (classes, files, class indices); classes are sorted subfolder names."""
    if not os.path.isdir(split_dir):
        raise DataError(
            f"{split_dir} does not exist; --data_path must hold train/<class>/<image> and val/<class>/<image>"
        )
    with os.scandir(split_dir) as it:
        classes = sorted(e.name for e in it if e.is_dir())
    if not classes:
        raise DataError(f"{split_dir} has no class subfolders; arrange {what} as {what}/<class>/<image>")
    files: list[str] = []
    targets: list[int] = []
    for c, cls in enumerate(classes):
        n_before = len(files)
        for dirpath, _dirnames, filenames in sorted(os.walk(os.path.join(split_dir, cls), followlinks=True)):
            for fname in sorted(filenames):
                if fname.lower().endswith(IMAGE_EXTENSIONS):
                    files.append(os.path.join(dirpath, fname))
        targets.extend([c] * (len(files) - n_before))
    if not files:
        raise DataError(
            f"{split_dir} holds no images ({', '.join(IMAGE_EXTENSIONS)}); arrange {what} as {what}/<class>/<image>"
        )
    return classes, files, targets


class FolderDataset:
    """An ImageNet-style folder tree ``root/train/<class>/*`` and ``root/val/<class>/*``, decoded on demand.

    Classes are the sorted subfolder names of ``train/`` (as torchvision's ``ImageFolder``); ``val/`` may hold a
    subset of them. :meth:`load_batch` decodes images with Pillow, converts them to RGB, resizes the shorter side
    to ``resize_size`` (default ``round(S*256/224)``; bilinear, as torchvision's ``Resize``) and centre-crops
    ``S×S`` (``S = image_size``). That crop is what the device sees for both splits: evaluation uses it as is
    (for imagenet this is the reference's ``Resize(256)`` + ``CenterCrop(224)``), and training augmentation
    (random-resized-crop, flip, colour) then runs batched on the device on that crop rather than on the full
    image as the reference did. :func:`load_dataset` uses ``resize_size=64`` for imagenet-tiny, whose images are
    natively 64×64 and which the reference evaluates unresized, so there the crop is the whole image.
    """

    def __init__(
        self,
        name: str,
        root: str,
        image_size: int,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        resize_size: int | None = None,
    ) -> None:
        self.name = name
        self.root = root
        self.image_size = int(image_size)
        self.resize_size = round(self.image_size * 256 / 224) if resize_size is None else int(resize_size)
        if self.resize_size < self.image_size:
            raise ValueError(f"resize_size {self.resize_size} is smaller than image_size {self.image_size}")
        self.mean = mean
        self.std = std
        self.classes, self.train_files, train_targets = _scan_split(os.path.join(root, "train"), "train")
        val_classes, self.test_files, val_targets = _scan_split(os.path.join(root, "val"), "val")
        index = {c: i for i, c in enumerate(self.classes)}
        unknown = [c for c in val_classes if c not in index]
        if unknown:
            raise DataError(
                f"{os.path.join(root, 'val')} has class folders missing from train/ (e.g. {unknown[0]!r}); "
                "arrange val/ as val/<class>/<image> with the train/ class names"
            )
        remap = [index[c] for c in val_classes]
        self.num_classes = len(self.classes)
        self.train_labels = torch.tensor(train_targets, dtype=torch.int64)
        self.test_labels = torch.tensor([remap[t] for t in val_targets], dtype=torch.int64)

    def files(self, split: str) -> list[str]:
        """The image paths of ``split`` (``'train'``, or ``'test'``/``'val'``), in label order."""
        if split == "train":
            return self.train_files
        if split in ("test", "val"):
            return self.test_files
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")

    def _decode(self, path: str) -> np.ndarray:
        image_mod = _require_pillow()
        s, r = self.image_size, self.resize_size
        try:
            with image_mod.open(path) as im:
                im.draft("RGB", (r, r))  # let the JPEG decoder downscale while staying >= r on both sides
                im = im.convert("RGB")
                w, h = im.size
                if w <= h:
                    nw, nh = r, int(r * h / w)
                else:
                    nw, nh = int(r * w / h), r
                if (nw, nh) != (w, h):
                    im = im.resize((nw, nh), image_mod.BILINEAR)
                top, left = int(round((nh - s) / 2.0)), int(round((nw - s) / 2.0))
                im = im.crop((left, top, left + s, top + s))
                arr = np.asarray(im, dtype=np.uint8)
        except (OSError, ValueError, SyntaxError) as exc:
            raise DataError(f"cannot decode image {path} ({exc}); remove or replace the file") from None
        return arr

    def decode_batch(self, split: str, indices: Sequence[int]) -> np.ndarray:
        """Decode images ``indices`` of ``split`` into a uint8 array [B,S,S,3]. Uses no torch op, so decoding
        threads never run torch's OpenMP kernels beside the training thread."""
        files = self.files(split)
        s = self.image_size
        out = np.empty((len(indices), s, s, 3), dtype=np.uint8)
        for k, i in enumerate(indices):
            out[k] = self._decode(files[i])
        return out

    def load_batch(self, split: str, indices: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Decode images ``indices`` of ``split`` into a uint8 CPU tensor [B,3,S,S]."""
        if isinstance(indices, torch.Tensor):
            indices = indices.tolist()
        return torch.from_numpy(self.decode_batch(split, indices)).permute(0, 3, 1, 2).contiguous()


# --------------------------------------------------------------------------------------------------------------


def load_dataset(name: str, data_path: str | None) -> ImageDataset | FolderDataset:
    """Load dataset ``name`` (one of :data:`DATASET_NAMES`) from ``data_path``.

    ``digits`` is embedded and ignores ``data_path``; CIFAR is read whole into memory; ImageNet folders are only
    indexed (see :class:`FolderDataset`).
    """
    if name in ("cifar10", "cifar100"):
        return load_cifar(name, data_path)
    if name == "digits":
        from sswp_fast.data.digits import (
            DIGITS_IMAGE_SIZE,
            DIGITS_MEAN,
            DIGITS_NUM_CLASSES,
            DIGITS_STD,
            load_digits_arrays,
        )

        tr_x, tr_y, te_x, te_y = load_digits_arrays()
        return ImageDataset(
            "digits", tr_x, tr_y, te_x, te_y, DIGITS_NUM_CLASSES, DIGITS_IMAGE_SIZE, DIGITS_MEAN, DIGITS_STD
        )
    if name in _FOLDER_SIZES:
        if data_path is None:
            raise DataError(f"{name} needs --data_path: point it at the folder that holds train/ and val/")
        root = os.path.expanduser(data_path)
        if not os.path.isdir(root):
            raise DataError(
                f"{name} folder {root} does not exist; point --data_path at the folder that holds train/ and val/"
            )
        size, resize = _FOLDER_SIZES[name]
        ds = FolderDataset(name, root, size, resize_size=resize)
        _require_pillow()
        return ds
    raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASET_NAMES)}")

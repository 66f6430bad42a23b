"""The embedded default dataset ``digits``: the UCI handwritten digits (1 797 images, 10 classes).

It ships inside the package (``digits.npz``, 46 kB) so that ``sswp-fast`` runs, and its tests pass, with no
download and no data folder. The file was made once, with scikit-learn's bundled copy of the data (scikit-learn
is *not* a dependency of this project; it was installed in a throwaway location just for this)::

    import numpy as np
    from sklearn.datasets import load_digits

    d = load_digits()                                      # images: float 0..16, shape (1797, 8, 8)
    images = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)   # 0..16 -> 0..255, round half to even
    labels = d.target.astype(np.uint8)
    np.savez_compressed("sswp_fast/data/digits.npz", images=images, labels=labels)

Loading (:func:`load_digits_arrays`):

* every 8×8 image is upsampled once to 16×16 (``F.interpolate`` bilinear, ``align_corners=False``, antialias
  off), clamped to 0..255, rounded and stored as uint8, then replicated to 3 channels;
* the test split is a class-balanced 20 % holdout: ``class_balanced_split(labels, int(0.2 * 1797), 10)`` (the
  seed-0 split of spec §2.2); its ``valid`` part (359 images) is the test set, the rest (1 438) the train set.

:data:`DIGITS_MEAN` and :data:`DIGITS_STD` are the per-channel mean and population standard deviation of the
train images (as floats in [0, 1]) computed once with exactly that pipeline; the three channels are equal.
"""

from __future__ import annotations

import os
import zipfile

import numpy as np
import torch
import torch.nn.functional as F

from sswp_fast.data.split import class_balanced_split
from sswp_fast.errors import DataError

__all__ = ["DIGITS_FILE", "DIGITS_IMAGE_SIZE", "DIGITS_MEAN", "DIGITS_STD", "DIGITS_NUM_CLASSES", "load_digits_arrays"]

DIGITS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "digits.npz")
DIGITS_IMAGE_SIZE = 16
DIGITS_NUM_CLASSES = 10
DIGITS_TEST_FRACTION = 0.2
DIGITS_MEAN = (0.30574561, 0.30574561, 0.30574561)
DIGITS_STD = (0.31872413, 0.31872413, 0.31872413)


def load_digits_arrays() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return ``(train_images, train_labels, test_images, test_labels)``: uint8 [N,3,16,16] and int64 [N], CPU."""
    try:
        with np.load(DIGITS_FILE, allow_pickle=False) as npz:
            images = np.asarray(npz["images"])
            labels = np.asarray(npz["labels"])
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(
            f"embedded dataset file {DIGITS_FILE} is missing or corrupt ({type(exc).__name__}); reinstall sswp-fast"
        ) from None
    if images.ndim != 3 or images.shape[1:] != (8, 8) or labels.shape != (images.shape[0],):
        raise DataError(
            f"embedded dataset file {DIGITS_FILE} holds images {images.shape} and labels {labels.shape}, "
            "expected (N, 8, 8) and (N,); reinstall sswp-fast"
        )
    small = torch.from_numpy(images.astype(np.float32)).unsqueeze(1)  # [N,1,8,8]
    big = F.interpolate(
        small, size=(DIGITS_IMAGE_SIZE, DIGITS_IMAGE_SIZE), mode="bilinear", align_corners=False, antialias=False
    )
    big = big.clamp_(0, 255).round_().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    targets = torch.from_numpy(labels.astype(np.int64))

    n_test = int(DIGITS_TEST_FRACTION * targets.numel())
    train_idx, test_idx = class_balanced_split(targets, n_test, DIGITS_NUM_CLASSES)
    return big[train_idx], targets[train_idx], big[test_idx], targets[test_idx]

"""Small fake datasets written to a temporary folder: ImageNet-style image folders and CIFAR pickles."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np


def write_random_image_folder(root, classes=("n01", "n02"), train=6, val=2, size=64) -> None:
    """An ImageNet-style folder of random-noise PNGs: ``root/{train,val}/<class>/<i>.png`` (needs Pillow)."""
    import numpy as np
    from PIL import Image

    g = np.random.default_rng(0)
    for split, count in (("train", train), ("val", val)):
        for cls in classes:
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(g.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def write_fake_cifar(root: Path, name: str = "cifar10", n_train: int = 20, n_test: int = 10) -> Path:
    """A small CIFAR folder written with Python 3's own pickler (protocol 2, as torchvision's re-saves do)."""
    rng = np.random.default_rng(0)
    ncls, label_key = (10, b"labels") if name == "cifar10" else (100, b"fine_labels")
    folder = root / ("cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")
    folder.mkdir(parents=True)

    def dump(fname: str, n: int) -> None:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, ncls, n)]
        with open(folder / fname, "wb") as fh:
            pickle.dump({b"data": data, label_key: labels, b"batch_label": b"x"}, fh, protocol=2)

    if name == "cifar10":
        for b in range(1, 6):
            dump(f"data_batch_{b}", n_train // 5)
        dump("test_batch", n_test)
    else:
        dump("train", n_train)
        dump("test", n_test)
    return folder

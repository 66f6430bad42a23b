"""Shared test fixtures: small configurations sized for the 2-core CI machine."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import torch

if not torch.cuda.is_available():  # Triton kernels run on CPU tensors only under the interpreter; it must be on
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before any @triton.jit decorator runs

import pytest  # noqa: E402

from sswp_fast.config import SearchConfig


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


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


def tiny_config(**overrides) -> SearchConfig:
    """A 3-cell, C=4 search configuration (reductions at cells 1 and 2)."""
    values = dict(layers=3, init_channels=4, batch_size=4, dataset="digits", min_warmup=0)
    values.update(overrides)
    return SearchConfig(**values).resolved()


@pytest.fixture
def one_torch_thread():
    """Tiny ops are far slower with a thread pool on a busy 2-core machine; results are identical."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """``@pytest.mark.gpu(reason=...)`` tests skip with their reason where CUDA is absent. Then the slow tier's
    longest tests first, by their ``@pytest.mark.slow(seconds=...)`` estimate (measured on the 2-core CI machine;
    unmarked: 0), so that ``.ci/run``'s work-stealing workers start them at once and share the short ones out
    while they run. Only the order changes; the fast tier, with no estimates, keeps its own."""
    if not torch.cuda.is_available():
        for item in items:
            gpu = item.get_closest_marker("gpu")
            if gpu is not None:
                item.add_marker(pytest.mark.skip(reason=f"no CUDA device on this machine: {gpu.kwargs['reason']}"))

    def seconds(item: pytest.Item) -> float:
        slow = item.get_closest_marker("slow")
        return slow.kwargs.get("seconds", 0) if slow else 0

    items.sort(key=seconds, reverse=True)

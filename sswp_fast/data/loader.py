"""Batch iterators over index subsets, and the search loader builder (spec §2.3 ``build_loaders_search``).

* :class:`ResidentBatches` serves a dataset that lives on the training device as uint8 tensors (CIFAR, digits):
  each epoch is a fresh random permutation of its indices (like ``SubsetRandomSampler``) and a batch is one
  index gather on the device; no worker processes, no host-to-device copies.
* :class:`FolderBatches` has the same interface for a :class:`~sswp_fast.data.datasets.FolderDataset`: batches
  are decoded by a thread pool ahead of use and copied to the device.

Both yield ``(uint8 images [b,3,H,W], int64 labels [b])`` on the device; augmentation happens afterwards (see
:mod:`sswp_fast.data.augment`).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from sswp_fast.data.datasets import FolderDataset, ImageDataset
from sswp_fast.data.split import class_balanced_split
from sswp_fast.errors import DataError

__all__ = ["ResidentBatches", "FolderBatches", "build_search_loaders", "DEBUG_SUBSET"]

#: ``--debug`` keeps only this many leading indices of each list (spec §2.3).
DEBUG_SUBSET = 200


def _as_index_tensor(indices: Sequence[int] | torch.Tensor, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(indices, dtype=torch.int64).reshape(-1).to(device)


def _num_batches(n: int, batch_size: int, drop_last: bool, max_batches: int | None) -> int:
    k = n // batch_size if drop_last else math.ceil(n / batch_size)
    return k if max_batches is None else min(k, max_batches)


def _check_batching(batch_size: int, max_batches: int | None) -> None:
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if max_batches is not None and max_batches < 0:
        raise ValueError(f"max_batches must be >= 0 or None, got {max_batches}")


class ResidentBatches:
    """Random batches of ``images[indices]`` / ``labels[indices]`` from tensors held on the generator's device.

    ``images`` (uint8 [N,3,H,W]) and ``labels`` ([N]) are moved to ``generator.device`` once (no copy if they are
    already there, so several iterators can share one resident copy). Every ``iter()`` draws a new permutation
    of ``indices`` from ``generator``; ``len()`` is the number of batches per epoch, capped by ``max_batches``.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        indices: Sequence[int] | torch.Tensor,
        batch_size: int,
        generator: torch.Generator,
        drop_last: bool = False,
        max_batches: int | None = None,
    ) -> None:
        _check_batching(batch_size, max_batches)
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
        self.device = generator.device
        self.images = images.to(self.device)
        self.labels = labels.to(self.device)
        self.indices = _as_index_tensor(indices, self.device)
        self.batch_size = int(batch_size)
        self.generator = generator
        self.drop_last = drop_last
        self.max_batches = max_batches

    @property
    def num_samples(self) -> int:
        """Size of the index subset (before ``drop_last``/``max_batches``)."""
        return int(self.indices.numel())

    def __len__(self) -> int:
        return _num_batches(self.num_samples, self.batch_size, self.drop_last, self.max_batches)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        perm = torch.randperm(self.num_samples, generator=self.generator, device=self.device)
        order = self.indices[perm]
        bs = self.batch_size
        for k in range(len(self)):
            idx = order[k * bs : (k + 1) * bs]
            yield self.images[idx], self.labels[idx]


class FolderBatches:
    """:class:`ResidentBatches`' interface for a :class:`FolderDataset`: decoded in threads, copied to the device.

    ``num_workers`` threads each decode whole batches (Pillow releases the GIL while decoding); up to
    ``prefetch * num_workers`` batches are in flight. The permutation of each epoch comes from ``generator`` and
    batches arrive in that order. Batches land on ``device`` (``generator.device`` if not given).
    """

    def __init__(
        self,
        dataset: FolderDataset,
        split: str,
        indices: Sequence[int] | torch.Tensor,
        batch_size: int,
        generator: torch.Generator,
        drop_last: bool = False,
        max_batches: int | None = None,
        num_workers: int = 4,
        prefetch: int = 2,
        device: torch.device | str | None = None,
    ) -> None:
        _check_batching(batch_size, max_batches)
        dataset.files(split)  # validates the split name
        self.dataset = dataset
        self.split = split
        self.device = torch.device(device) if device is not None else generator.device
        self.labels = (dataset.train_labels if split == "train" else dataset.test_labels).to(self.device)
        self.indices = _as_index_tensor(indices, torch.device("cpu"))
        self.batch_size = int(batch_size)
        self.generator = generator
        self.drop_last = drop_last
        self.max_batches = max_batches
        self.num_workers = max(1, int(num_workers))
        self.prefetch = max(1, int(prefetch))

    @property
    def num_samples(self) -> int:
        """Size of the index subset (before ``drop_last``/``max_batches``)."""
        return int(self.indices.numel())

    def __len__(self) -> int:
        return _num_batches(self.num_samples, self.batch_size, self.drop_last, self.max_batches)

    def _to_device(self, decoded: np.ndarray) -> torch.Tensor:
        """NHWC uint8 array from a decoding thread → [B,3,S,S] on the device (on the training thread)."""
        images = torch.from_numpy(decoded).permute(0, 3, 1, 2)
        if self.device.type == "cuda":
            return images.pin_memory().to(self.device, non_blocking=True).contiguous()
        return images.to(self.device).contiguous()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        perm = torch.randperm(self.num_samples, generator=self.generator, device=self.generator.device).cpu()
        order = self.indices[perm].tolist()
        bs, n = self.batch_size, len(self)
        batches = (order[k * bs : (k + 1) * bs] for k in range(n))
        pending: deque[tuple[list[int], Future[np.ndarray]]] = deque()
        pool = ThreadPoolExecutor(max_workers=self.num_workers, thread_name_prefix="sswp-decode")
        try:
            for idx in batches:
                pending.append((idx, pool.submit(self.dataset.decode_batch, self.split, idx)))
                if len(pending) >= self.prefetch * self.num_workers:
                    break
            while pending:
                idx, fut = pending.popleft()
                nxt = next(batches, None)
                if nxt is not None:
                    pending.append((nxt, pool.submit(self.dataset.decode_batch, self.split, nxt)))
                images = self._to_device(fut.result())
                labels = self.labels[torch.tensor(idx, dtype=torch.int64, device=self.device)]
                yield images, labels
        finally:
            for _idx, fut in pending:
                fut.cancel()
            pool.shutdown(wait=True, cancel_futures=True)


def _same_device(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def search_split(dataset: ImageDataset | FolderDataset, train_ratio: float,
                 debug: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(train, valid, test)`` image indices of a search (spec §2.3, see :func:`build_search_loaders`); a
    one-line :class:`DataError` when ``train_ratio`` leaves one of the training parts empty."""
    if not 0.0 < train_ratio < 1.0:
        raise DataError(f"--train_ratio must lie strictly between 0 and 1 (got {train_ratio}); 0.5 is the default")
    n = int(dataset.train_labels.numel())
    valid_size = int(n - train_ratio * n)
    train_idx, valid_idx = class_balanced_split(dataset.train_labels, valid_size, dataset.num_classes)
    if train_idx.numel() == 0 or valid_idx.numel() == 0:
        empty = "weight-step (train)" if train_idx.numel() == 0 else "arch-step (valid)"
        raise DataError(
            f"--train_ratio {train_ratio} leaves the {empty} part of the {n} training images empty; "
            "use a value strictly between 0 and 1"
        )
    test_idx = torch.arange(int(dataset.test_labels.numel()), dtype=torch.int64)
    if debug:
        train_idx, valid_idx, test_idx = (t[:DEBUG_SUBSET] for t in (train_idx, valid_idx, test_idx))
    return train_idx, valid_idx, test_idx


def build_search_loaders(
    dataset: ImageDataset | FolderDataset,
    train_ratio: float,
    batch_size: int,
    device: torch.device | str,
    generator: torch.Generator,
    debug: bool = False,
    max_batches: int | None = None,
    num_workers: int = 4,
) -> tuple[ResidentBatches | FolderBatches, ResidentBatches | FolderBatches, ResidentBatches | FolderBatches]:
    """The three search loaders of spec §2.3: ``(train, valid, test)``.

    ``valid_size = int(N - train_ratio * N)`` training images, class-balanced by the seed-0 split, go to
    ``valid`` (they feed the architecture steps); the rest go to ``train`` (weight steps); the whole test split
    forms ``test`` (the search's "validation"). All three reshuffle every epoch from ``generator``, keep the last
    partial batch, and hold at most ``DEBUG_SUBSET`` leading indices each if ``debug``. An in-memory dataset is
    moved to ``device`` once and shared by ``train`` and ``valid``. ``num_workers`` only matters for folders.
    """
    device = torch.device(device)
    if not _same_device(device, generator.device):
        raise ValueError(f"the generator is on {generator.device} but the loaders should run on {device}")
    train_idx, valid_idx, test_idx = search_split(dataset, train_ratio, debug)

    if isinstance(dataset, ImageDataset):
        train_x, train_y = dataset.train_images.to(device), dataset.train_labels.to(device)
        test_x, test_y = dataset.test_images.to(device), dataset.test_labels.to(device)

        def make(x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> ResidentBatches:
            return ResidentBatches(x, y, idx, batch_size, generator, drop_last=False, max_batches=max_batches)

        return make(train_x, train_y, train_idx), make(train_x, train_y, valid_idx), make(test_x, test_y, test_idx)

    def make_folder(split: str, idx: torch.Tensor) -> FolderBatches:
        return FolderBatches(
            dataset,
            split,
            idx,
            batch_size,
            generator,
            drop_last=False,
            max_batches=max_batches,
            num_workers=num_workers,
            device=device,
        )

    return make_folder("train", train_idx), make_folder("train", valid_idx), make_folder("test", test_idx)

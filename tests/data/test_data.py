"""Tests for sswp_fast.data: dataset readers, the seed-0 split, batched augmentation and batch iterators."""

from __future__ import annotations

import colorsys
import math
import os
import pickle
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sswp_fast.data import (
    CIFAR10_MEAN,
    DATASET_NAMES,
    IMAGENET_MEAN,
    EvalTransform,
    FolderBatches,
    FolderDataset,
    ImageDataset,
    ResidentBatches,
    SimCLRAugment,
    SupervisedAugment,
    adjust_hue,
    build_search_loaders,
    class_balanced_split,
    color_jitter,
    gaussian_blur3,
    load_dataset,
    luma,
    split_list,
)
from sswp_fast.data.digits import DIGITS_MEAN, DIGITS_STD
from sswp_fast.errors import DataError

from _support.fake_data import write_fake_cifar

_REPO = Path(__file__).resolve().parents[2]
# shared/ is inside a checkout, beside CI's clone, or at /work/shared on a developer's machine.
MAKE_CIFAR10 = next(
    (
        p / "shared" / "data" / "cifar10" / "make_cifar10.py"
        for p in (_REPO, _REPO.parent, Path("/work"))
        if (p / "shared" / "data" / "cifar10" / "make_cifar10.py").exists()
    ),
    Path("/work/shared/data/cifar10/make_cifar10.py"),
)

try:
    import PIL  # noqa: F401

    HAVE_PIL = True
except ImportError:
    HAVE_PIL = False

needs_pil = pytest.mark.skipif(not HAVE_PIL, reason="Pillow is not installed (optional extra 'imagenet')")


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """These tensors are tiny: one intra-op thread is as fast when idle and far faster on a shared, busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def gen(seed: int = 0) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and msg
    return msg


# ---------------------------------------------------------------------------------------------------------------
# split


def test_split_list() -> None:
    assert split_list(10, 3) == [4, 3, 3]
    assert split_list(25000, 10) == [2500] * 10
    assert split_list(2, 4) == [1, 1, 0, 0]
    assert split_list(0, 3) == [0, 0, 0]
    for n, k in [(7, 7), (101, 10), (5, 9)]:
        parts = split_list(n, k)
        assert sum(parts) == n and max(parts) - min(parts) <= 1 and parts == sorted(parts, reverse=True)


def loop_split(labels: torch.Tensor, valid_size: int, num_classes: int) -> tuple[list[int], list[int]]:
    """The reference's walk over the seed-0 permutation, one index at a time."""
    g = torch.Generator()
    g.manual_seed(0)
    quota = split_list(valid_size, num_classes)
    train, valid = [], []
    for i in torch.randperm(len(labels), generator=g).tolist():
        c = int(labels[i])
        if quota[c] > 0:
            valid.append(i)
            quota[c] -= 1
        else:
            train.append(i)
    return train, valid


@pytest.mark.parametrize(
    "n,num_classes,valid_size", [(1, 3, 1), (10, 3, 4), (97, 10, 50), (1000, 10, 500), (5000, 100, 1234)]
)
def test_class_balanced_split_matches_loop(n: int, num_classes: int, valid_size: int) -> None:
    labels = torch.randint(0, num_classes, (n,), generator=gen(n))
    train, valid = class_balanced_split(labels, valid_size, num_classes)
    ref_train, ref_valid = loop_split(labels, valid_size, num_classes)
    assert train.dtype == valid.dtype == torch.int64
    assert train.tolist() == ref_train and valid.tolist() == ref_valid


def test_class_balanced_split_quotas_and_seed_independence() -> None:
    labels = torch.arange(3000) % 10
    torch.manual_seed(123)
    state = torch.get_rng_state()
    train, valid = class_balanced_split(labels, 1503, 10)
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is not touched
    assert torch.bincount(labels[valid], minlength=10).tolist() == split_list(1503, 10)
    assert sorted(train.tolist() + valid.tolist()) == list(range(3000))
    torch.manual_seed(999)
    train2, valid2 = class_balanced_split(labels, 1503, 10)
    assert torch.equal(train, train2) and torch.equal(valid, valid2)
    # one-hot rows give the same split as class ids
    train3, valid3 = class_balanced_split(F.one_hot(labels, 10).float(), 1503, 10)
    assert torch.equal(train, train3) and torch.equal(valid, valid3)


def test_class_balanced_split_bad_labels() -> None:
    with pytest.raises(DataError) as exc:
        class_balanced_split(torch.tensor([0, 1, 5]), 1, 3)
    one_line(exc)


# ---------------------------------------------------------------------------------------------------------------
# datasets: digits, names


def test_digits_dataset() -> None:
    ds = load_dataset("digits", None)
    assert isinstance(ds, ImageDataset)
    assert ds.train_images.shape == (1438, 3, 16, 16) and ds.test_images.shape == (359, 3, 16, 16)
    assert ds.train_images.dtype == torch.uint8 and ds.train_labels.dtype == torch.int64
    assert ds.num_classes == 10 and ds.image_size == 16
    assert torch.equal(ds.train_images[:, 0], ds.train_images[:, 2])
    counts = torch.bincount(ds.test_labels, minlength=10)
    assert counts.max() - counts.min() <= 1
    x = ds.train_images.double() / 255
    assert np.allclose(x.mean(dim=(0, 2, 3)).numpy(), DIGITS_MEAN, atol=1e-7)
    assert np.allclose(x.std(dim=(0, 2, 3), unbiased=False).numpy(), DIGITS_STD, atol=1e-7)


def test_unknown_dataset() -> None:
    with pytest.raises(DataError) as exc:
        load_dataset("mnist", None)
    msg = one_line(exc)
    assert all(name in msg for name in DATASET_NAMES)


# ---------------------------------------------------------------------------------------------------------------
# datasets: CIFAR


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_fake_cifar_both_path_forms(tmp_path: Path, name: str) -> None:
    folder = write_fake_cifar(tmp_path, name)
    for path in (str(tmp_path), str(folder)):
        ds = load_dataset(name, path)
        assert isinstance(ds, ImageDataset)
        assert ds.train_images.shape == (20, 3, 32, 32) and ds.test_images.shape == (10, 3, 32, 32)
        assert ds.train_images.dtype == torch.uint8 and ds.test_labels.dtype == torch.int64
        assert ds.num_classes == (10 if name == "cifar10" else 100) and ds.image_size == 32
    with open(folder / ("test_batch" if name == "cifar10" else "test"), "rb") as fh:
        raw = pickle.load(fh, encoding="bytes")
    assert torch.equal(ds.test_images.reshape(10, -1), torch.from_numpy(raw[b"data"]))


def test_cifar_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError) as exc:
        load_dataset("cifar10", None)
    one_line(exc)
    with pytest.raises(DataError) as exc:
        load_dataset("cifar10", str(tmp_path / "nowhere"))
    one_line(exc)
    with pytest.raises(DataError) as exc:
        load_dataset("cifar10", str(tmp_path))  # exists but has no cifar-10-batches-py
    assert "cifar-10-batches-py" in one_line(exc)

    folder = write_fake_cifar(tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError) as exc:
        load_dataset("cifar10", str(tmp_path))
    msg = one_line(exc)
    assert "data_batch_3" in msg and "--data_path" in msg

    (folder / "data_batch_3").write_bytes(b"\x80\x02not a pickle at all")
    with pytest.raises(DataError) as exc:
        load_dataset("cifar10", str(tmp_path))
    assert "data_batch_3" in one_line(exc)

    with open(folder / "data_batch_3", "wb") as fh:
        pickle.dump({b"data": np.zeros((4, 3000), np.uint8), b"labels": [0] * 4}, fh, protocol=2)
    with pytest.raises(DataError) as exc:
        load_dataset("cifar10", str(tmp_path))
    assert "3072" in one_line(exc)

    with open(folder / "data_batch_3", "wb") as fh:
        pickle.dump({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 10]}, fh, protocol=2)
    with pytest.raises(DataError) as exc:
        load_dataset("cifar10", str(tmp_path))
    one_line(exc)


class _Evil:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self) -> tuple:
        return (os.mkdir, (self.target,))


def test_cifar_pickle_cannot_run_code(tmp_path: Path) -> None:
    folder = write_fake_cifar(tmp_path)
    marker = tmp_path / "pwned"
    with open(folder / "test_batch", "wb") as fh:
        pickle.dump({b"data": _Evil(str(marker)), b"labels": []}, fh, protocol=2)
    with pytest.raises(DataError) as exc:
        load_dataset("cifar10", str(tmp_path))
    assert "not allowed" in one_line(exc)
    assert not marker.exists()


@pytest.fixture(scope="module")
def real_cifar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not HAVE_PIL:
        pytest.skip("make_cifar10.py needs Pillow, which is not installed")
    if not MAKE_CIFAR10.exists():
        pytest.skip(f"{MAKE_CIFAR10} is not there")
    out = tmp_path_factory.mktemp("cifar")
    subprocess.run(
        [sys.executable, str(MAKE_CIFAR10), str(out), "--train-per-class", "5", "--test-per-class", "2"],
        check=True,
        capture_output=True,
    )
    return out


def test_real_cifar10(real_cifar: Path) -> None:
    ds = load_dataset("cifar10", str(real_cifar))
    assert isinstance(ds, ImageDataset)
    assert ds.train_images.shape == (50, 3, 32, 32) and ds.test_images.shape == (20, 3, 32, 32)
    assert torch.bincount(ds.train_labels, minlength=10).tolist() == [5] * 10
    assert int(ds.test_labels.min()) == 0 and int(ds.test_labels.max()) == 9
    assert ds.mean == CIFAR10_MEAN and ds.image_size == 32
    assert 40 < ds.train_images.float().mean() < 200  # real pixels, not zeros
    (real_cifar / "cifar-10-batches-py" / "data_batch_5").rename(real_cifar / "moved")
    try:
        with pytest.raises(DataError) as exc:
            load_dataset("cifar10", str(real_cifar / "cifar-10-batches-py"))
        assert "data_batch_5" in one_line(exc)
    finally:
        (real_cifar / "moved").rename(real_cifar / "cifar-10-batches-py" / "data_batch_5")


# ---------------------------------------------------------------------------------------------------------------
# datasets: image folders


def test_folder_errors_without_decoding(tmp_path: Path) -> None:
    with pytest.raises(DataError) as exc:
        load_dataset("imagenet", None)
    one_line(exc)
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(DataError) as exc:
        load_dataset("imagenet", str(tmp_path))  # no images in train/a, and no val/
    one_line(exc)
    (tmp_path / "train" / "a" / "x.png").write_bytes(b"")
    with pytest.raises(DataError) as exc:
        load_dataset("imagenet", str(tmp_path))
    assert "val" in one_line(exc)
    (tmp_path / "val" / "zzz").mkdir(parents=True)
    (tmp_path / "val" / "zzz" / "y.JPG").write_bytes(b"")
    with pytest.raises(DataError) as exc:
        load_dataset("imagenet", str(tmp_path))  # val class not in train
    assert "zzz" in one_line(exc)


def test_folder_without_pillow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for split in ("train", "val"):
        (tmp_path / split / "a").mkdir(parents=True)
        (tmp_path / split / "a" / "x.png").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "PIL", None)  # makes "from PIL import Image" raise ImportError
    with pytest.raises(DataError) as exc:
        load_dataset("imagenet-tiny", str(tmp_path))
    assert one_line(exc) == "Pillow is needed for image folders: pip install Pillow"


def make_image_folder(root: Path) -> dict[str, tuple[int, int, int]]:
    from PIL import Image

    colours = {"cat": (200, 10, 10), "dog": (10, 200, 10), "emu": (10, 10, 200)}
    sizes = [(20, 30), (50, 24), (64, 64)]
    for split, per_class in (("train", 3), ("val", 2)):
        for cls, rgb in colours.items():
            d = root / split / cls
            d.mkdir(parents=True)
            for k in range(per_class):
                ext = ["png", "PNG", "bmp"][k % 3]
                Image.new("RGB", sizes[k % 3], rgb).save(d / f"im{k}.{ext}")
            (d / "notes.txt").write_text("not an image")
    return colours


@needs_pil
def test_folder_dataset_decodes(tmp_path: Path) -> None:
    colours = make_image_folder(tmp_path)
    ds = load_dataset("imagenet-tiny", str(tmp_path))
    assert isinstance(ds, FolderDataset)
    assert ds.image_size == 64 and ds.num_classes == 3 and ds.mean == IMAGENET_MEAN
    assert ds.train_labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2] and ds.test_labels.tolist() == [0, 0, 1, 1, 2, 2]
    batch = ds.load_batch("train", [0, 4, 8])
    assert batch.shape == (3, 3, 64, 64) and batch.dtype == torch.uint8
    for b, cls in zip(batch, ["cat", "dog", "emu"], strict=True):
        assert torch.equal(b[:, 32, 32], torch.tensor(colours[cls], dtype=torch.uint8))
    assert ds.load_batch("test", torch.tensor([5])).shape == (1, 3, 64, 64)

    (tmp_path / "train" / "dog" / "im1.PNG").write_bytes(b"garbage")
    with pytest.raises(DataError) as exc:
        ds.load_batch("train", [4])
    assert "im1.PNG" in one_line(exc)


@needs_pil
def test_folder_resize_and_crop(tmp_path: Path) -> None:
    from PIL import Image

    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    wide = np.zeros((200, 300, 3), np.uint8)
    wide[:, :150] = (255, 0, 0)  # left half red, right half blue
    wide[:, 150:] = (0, 0, 255)
    for split in ("train", "val"):
        (tmp_path / split / "a").mkdir(parents=True)
        Image.fromarray(noise).save(tmp_path / split / "a" / "noise.png")
        Image.fromarray(wide).save(tmp_path / split / "a" / "wide.png")
    tiny = load_dataset("imagenet-tiny", str(tmp_path))
    assert tiny.resize_size == 64  # native 64x64 images pass through unchanged, as the reference evaluates them
    assert torch.equal(tiny.load_batch("test", [0])[0], torch.from_numpy(noise).permute(2, 0, 1))
    big = load_dataset("imagenet", str(tmp_path))
    assert big.image_size == 224 and big.resize_size == 256
    crop = big.load_batch("train", [1])[0]  # 300x200 -> 384x256 -> centre 224x224 (columns 80..303)
    assert crop.shape == (3, 224, 224)
    assert crop[:, 100, :100].float().mean(dim=1).tolist() == [255.0, 0.0, 0.0]
    assert crop[:, 100, 125:].float().mean(dim=1).tolist() == [0.0, 0.0, 255.0]


@needs_pil
def test_folder_batches(tmp_path: Path) -> None:
    make_image_folder(tmp_path)
    ds = load_dataset("imagenet-tiny", str(tmp_path))
    train, valid, test = build_search_loaders(ds, 0.5, 2, "cpu", gen(3))
    assert isinstance(train, FolderBatches)
    assert train.num_samples + valid.num_samples == 9 and test.num_samples == 6
    seen = []
    for images, labels in test:
        assert images.shape[1:] == (3, 64, 64) and images.dtype == torch.uint8
        # every image is one flat colour: its dominant channel is its class
        assert torch.equal(images[:, :, 0, 0].argmax(dim=1), labels)
        seen.extend(labels.tolist())
    assert sorted(seen) == [0, 0, 1, 1, 2, 2] and len(test) == 3
    capped = FolderBatches(ds, "train", list(range(9)), 2, gen(0), max_batches=2, num_workers=2, prefetch=1)
    assert len(capped) == 2 and sum(x.shape[0] for x, _ in capped) == 4


# ---------------------------------------------------------------------------------------------------------------
# augmentation


def rand_images(b: int = 8, h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (b, 3, h, w), dtype=torch.uint8, generator=gen(seed))


UNIT = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # mean/std that leave [0, 1] values unchanged


def test_simclr_shapes_range_determinism() -> None:
    images = rand_images(16, 40, 48)
    aug = SimCLRAugment(32, *UNIT)
    out = aug(images, gen(1))
    assert out.shape == (16, 3, 32, 32) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(out, aug(images, gen(1)))
    assert not torch.equal(out, aug(images, gen(2)))
    norm = SimCLRAugment(32, CIFAR10_MEAN, (0.25, 0.25, 0.25))(images, gen(1))
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    assert torch.allclose(norm, (out - mean) / 0.25, atol=1e-5)


def test_simclr_per_sample_randomness() -> None:
    one = rand_images(1)
    out = SimCLRAugment(32, *UNIT)(one.expand(6, -1, -1, -1).contiguous(), gen(0))
    for i in range(1, 6):
        assert not torch.equal(out[0], out[i])


def test_crop_flip_identity_when_scale_is_one() -> None:
    images = rand_images(32)
    aug = SimCLRAugment(32, *UNIT, scale=(1.0, 1.0), ratio=(1.0, 1.0), jitter_p=0, gray_p=0, blur_p=0)
    out = aug(images, gen(5))
    x = images.float() / 255
    same = [(out[i] - x[i]).abs().max().item() < 1e-5 for i in range(32)]
    mirror = [(out[i] - x[i].flip(-1)).abs().max().item() < 1e-5 for i in range(32)]
    assert all(a or b for a, b in zip(same, mirror, strict=True))
    assert any(same) and any(mirror)


def test_crop_boxes() -> None:
    aug = SimCLRAugment(32, *UNIT)
    boxes = aug.crop_boxes(2000, 32, 40, gen(0), torch.device("cpu"))
    top, left, h, w = boxes.unbind(1)
    assert torch.equal(boxes, boxes.round())
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 32).all() and (left + w <= 40).all()
    assert (h >= 1).all() and (w >= 1).all()
    frac = h * w / (32 * 40)
    assert frac.min() < 0.2 and frac.max() > 0.8
    assert (frac > 0.08 * 0.7).all()  # rounding can shave a little off tiny crops
    # boxes that never fit fall back to the whole (ratio-clipped) image, centred
    never = SimCLRAugment(32, *UNIT, scale=(2.0, 3.0))
    assert never.crop_boxes(3, 32, 32, gen(0), torch.device("cpu")).tolist() == [[0, 0, 32, 32]] * 3
    assert never.crop_boxes(1, 10, 40, gen(0), torch.device("cpu")).tolist() == [[0, 13, 10, 13]]


def ref_jitter_image(img: np.ndarray, order: list[int], fb: float, fc: float, fs: float, fh: float) -> np.ndarray:
    """Per-image, per-pixel reference of torchvision tensor ColorJitter (float64, colorsys for hue)."""
    x = img.astype(np.float64).copy()

    def gray(a: np.ndarray) -> np.ndarray:
        return 0.299 * a[0] + 0.587 * a[1] + 0.114 * a[2]

    for op in order:
        if op == 0:
            x = np.clip(fb * x, 0, 1)
        elif op == 1:
            m = gray(x).mean()
            x = np.clip(fc * x + (1 - fc) * m, 0, 1)
        elif op == 2:
            x = np.clip(fs * x + (1 - fs) * gray(x)[None], 0, 1)
        else:
            out = np.empty_like(x)
            for i in range(x.shape[1]):
                for j in range(x.shape[2]):
                    h, s, v = colorsys.rgb_to_hsv(*x[:, i, j])
                    out[:, i, j] = colorsys.hsv_to_rgb((h + fh) % 1.0, s, v)
            x = out
    return x


def test_color_jitter_matches_reference() -> None:
    b = 6
    x = torch.rand(b, 3, 5, 4, generator=gen(0))
    x[0, :, 0, 0] = torch.tensor([0.5, 0.5, 0.5])  # grey pixel: no hue
    x[1, :, 0, 0] = torch.tensor([0.9, 0.9, 0.2])  # r == g tie
    active = torch.tensor([True, True, True, True, True, False])
    order = torch.stack([torch.randperm(4, generator=gen(i)) for i in range(b)])
    fb, fc, fs = (torch.rand(b, generator=gen(10 + k)) * 1.6 + 0.2 for k in range(3))
    fh = torch.rand(b, generator=gen(20)) * 0.4 - 0.2
    out = color_jitter(x, active, order, fb, fc, fs, fh)
    for i in range(b):
        if not active[i]:
            assert torch.equal(out[i], x[i])
            continue
        ref = ref_jitter_image(x[i].numpy(), order[i].tolist(), fb[i].item(), fc[i].item(), fs[i].item(), fh[i].item())
        assert np.allclose(out[i].numpy(), ref, atol=2e-5), i


@pytest.mark.parametrize("shift", [-0.5, -0.2, 0.0, 0.13, 0.2, 0.5])
def test_adjust_hue_matches_colorsys(shift: float) -> None:
    x = torch.rand(2, 3, 4, 4, generator=gen(7))
    out = adjust_hue(x, torch.full((2,), shift))
    ref = ref_jitter_image(x[1].numpy(), [3], 1, 1, 1, shift)
    assert np.allclose(out[1].numpy(), ref, atol=1e-5)


def test_grayscale_and_blur() -> None:
    images = rand_images(8)
    aug = SimCLRAugment(32, *UNIT, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0, jitter_p=0, gray_p=1, blur_p=0)
    out = aug(images, gen(0))
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])
    assert torch.allclose(out[:, :1], luma(images.float() / 255), atol=1e-5)

    x = torch.rand(3, 3, 9, 7, generator=gen(1))
    sigma = torch.tensor([1.0, 1.7, 2.0])
    on = torch.tensor([True, True, False])
    got = gaussian_blur3(x, sigma, on)
    assert torch.equal(got[2], x[2])
    for i in range(2):
        t = torch.tensor([-1.0, 0.0, 1.0])
        k1 = torch.exp(-0.5 * (t / sigma[i]) ** 2)
        k1 = k1 / k1.sum()
        k2 = (k1[:, None] * k1[None, :]).expand(3, 1, 3, 3)
        ref = F.conv2d(F.pad(x[i : i + 1], (1, 1, 1, 1), mode="reflect"), k2, groups=3)
        assert torch.allclose(got[i : i + 1], ref, atol=1e-6)
    const = torch.full((2, 3, 6, 6), 0.3)
    assert torch.allclose(gaussian_blur3(const, torch.tensor([1.5, 1.5]), torch.tensor([True, True])), const)


def test_supervised_augment() -> None:
    images = rand_images(16)
    out = SupervisedAugment(32, *UNIT, padding=0)(images, gen(0))
    x = images.float() * (1.0 / 255)  # bit-exact with the transform's ToTensor
    flipped = [torch.equal(out[i], x[i].flip(-1)) for i in range(16)]
    assert all(torch.equal(out[i], x[i]) or flipped[i] for i in range(16)) and any(flipped)

    out = SupervisedAugment(32, *UNIT)(images, gen(1))
    assert out.shape == (16, 3, 32, 32) and out.dtype == torch.float32
    padded = F.pad(x, (4, 4, 4, 4))
    for i in range(4):  # each output is some 32x32 window of the zero-padded image, maybe mirrored
        windows = [
            padded[i, :, r : r + 32, c : c + 32].flip(-1) if fl else padded[i, :, r : r + 32, c : c + 32]
            for r in range(9)
            for c in range(9)
            for fl in (False, True)
        ]
        assert any(torch.equal(out[i], w) for w in windows)

    # Cutout: with mean -1 every normalised pixel is >= 1, so zeros come from the hole only
    cut = SupervisedAugment(32, (-1.0, -1.0, -1.0), (1.0, 1.0, 1.0), cutout_length=16)(images, gen(2))
    for i in range(16):
        hole = cut[i] == 0
        assert torch.equal(hole[0], hole[1]) and torch.equal(hole[1], hole[2])
        rows, cols = hole[0].any(dim=1), hole[0].any(dim=0)
        assert 8 <= rows.sum() <= 16 and 8 <= cols.sum() <= 16
        assert hole[0].sum() == rows.sum() * cols.sum()  # a rectangle


def test_eval_transform() -> None:
    images = rand_images(4)
    out = EvalTransform(CIFAR10_MEAN, (0.5, 0.25, 2.0))(images)
    ref = (images.float() / 255 - torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)) / torch.tensor([0.5, 0.25, 2.0]).view(
        1, 3, 1, 1
    )
    assert out.dtype == torch.float32 and torch.allclose(out, ref, atol=1e-6)


def test_augment_speed_cifar_batch() -> None:
    images = rand_images(64)
    aug = SimCLRAugment(32, CIFAR10_MEAN, (0.25, 0.25, 0.25))
    sup = SupervisedAugment(32, CIFAR10_MEAN, (0.25, 0.25, 0.25), cutout_length=16)
    g = gen(0)
    aug(images, g)  # warm-up
    timings = []
    for _ in range(3):  # best of 3: the machine may be busy
        t0 = time.perf_counter()
        aug(images, g)
        sup(images, g)
        timings.append(time.perf_counter() - t0)
    assert min(timings) < 0.5, timings  # ~20-35 ms on one CPU core (see _one_thread)


# ---------------------------------------------------------------------------------------------------------------
# batch iterators


def indexed_dataset(n: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 2, 2).contiguous()
    return images, torch.arange(n)


def test_resident_batches() -> None:
    images, labels = indexed_dataset()
    idx = torch.arange(5, 45)
    loader = ResidentBatches(images, labels, idx, 16, gen(0))
    assert len(loader) == 3
    epochs = []
    for _ in range(2):
        seen = []
        sizes = []
        for x, y in loader:
            assert x.dtype == torch.uint8 and x.shape[1:] == (3, 2, 2)
            assert torch.equal(x[:, 0, 0, 0].long(), y)  # images and labels stay paired
            seen.extend(y.tolist())
            sizes.append(len(y))
        assert sizes == [16, 16, 8] and sorted(seen) == list(range(5, 45))
        epochs.append(seen)
    assert epochs[0] != epochs[1]  # a fresh permutation each epoch
    again = [y.tolist() for _, y in ResidentBatches(images, labels, idx, 16, gen(0))]
    assert sum(again, []) == epochs[0]  # reproducible from the generator seed
    assert len(ResidentBatches(images, labels, idx, 16, gen(0), drop_last=True)) == 2
    capped = ResidentBatches(images, labels, idx, 16, gen(0), max_batches=1)
    assert len(capped) == 1 and len(list(capped)) == 1


def test_build_search_loaders_digits() -> None:
    ds = load_dataset("digits", None)
    n = ds.train_labels.numel()
    train, valid, test = build_search_loaders(ds, 0.5, 96, "cpu", gen(0))
    assert isinstance(train, ResidentBatches)
    assert valid.num_samples == int(n - 0.5 * n) and train.num_samples == n - valid.num_samples
    assert test.num_samples == ds.test_labels.numel()
    assert len(train) == math.ceil(train.num_samples / 96)
    assert set(train.indices.tolist()).isdisjoint(valid.indices.tolist())
    assert train.images.data_ptr() == valid.images.data_ptr()  # one resident copy shared by both
    expected_train, expected_valid = class_balanced_split(ds.train_labels, int(n - 0.5 * n), 10)
    assert torch.equal(train.indices, expected_train) and torch.equal(valid.indices, expected_valid)

    dtrain, dvalid, dtest = build_search_loaders(ds, 0.5, 64, "cpu", gen(0), debug=True, max_batches=2)
    assert dtrain.num_samples == dvalid.num_samples == dtest.num_samples == 200
    assert torch.equal(dtrain.indices, expected_train[:200]) and len(dtrain) == 2
    assert dtest.indices.tolist() == list(range(200))

    for ratio in (1.0, 0.0, -0.5, 0.9999):  # 0.9999 * 1438 leaves valid_size 0
        with pytest.raises(DataError) as exc:
            build_search_loaders(ds, ratio, 96, "cpu", gen(0))
        assert "--train_ratio" in one_line(exc)

"""Batched data augmentation on the training device (spec §2.4), one random draw per sample.

The reference augments one PIL image at a time in loader worker processes. Here a whole uint8 batch is augmented
at once, on whatever device it lives on, with per-sample random parameters drawn from a ``torch.Generator`` that
the caller passes in (it must live on the batch's device). The same generator state and the same batch give the
same output. The number and order of random draws do not depend on the data, shapes never depend on the
data, and nothing waits for the device (after the first call has cached the normalisation constants).

* :class:`SimCLRAugment`: RandomResizedCrop + HorizontalFlip (one ``affine_grid``/``grid_sample``), ColorJitter
  (p=0.3, random sub-transform order per sample), RandomGrayscale (p=0.2), GaussianBlur 3×3 (p=0.2), Normalize.
* :class:`SupervisedAugment`: RandomCrop with 4-pixel zero padding + HorizontalFlip, Normalize, optional Cutout.
* :class:`EvalTransform`: uint8 → normalised float.

Deliberate differences from the reference, which worked on PIL images: colour operations follow torchvision's
*tensor* semantics (float, no uint8 rounding between steps, luma 0.299/0.587/0.114), and the resized crop is
sampled bilinearly at the output pixels without antialiasing. The latter only matters when a crop is shrunk,
which never happens here: device batches are already S×S (CIFAR, digits, and image folders after their centre
crop), so every crop box is at most the output size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "SimCLRAugment",
    "SupervisedAugment",
    "EvalTransform",
    "luma",
    "adjust_hue",
    "color_jitter",
    "gaussian_blur3",
]

_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as PIL's convert("L")


def luma(x: torch.Tensor) -> torch.Tensor:
    """Grayscale [B,1,H,W] of a float RGB batch [B,3,H,W] with ITU-R 601-2 weights."""
    r, g, b = x.unbind(1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def _check(images: torch.Tensor, generator: torch.Generator | None) -> None:
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected an image batch [B,3,H,W], got shape {tuple(images.shape)}")
    if generator is not None and generator.device.type != images.device.type:
        raise ValueError(f"the generator is on {generator.device} but the images are on {images.device}")


def _to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 → float32 0..1 (``ToTensor``); float input is taken to be in [0, 1] already."""
    if images.dtype == torch.uint8:
        return images.to(torch.float32).mul_(1.0 / 255.0)
    return images.to(torch.float32)


class _Normalizer:
    """``Normalize(mean, std)`` with the constants cached per device."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        if len(mean) != 3 or len(std) != 3:
            raise ValueError("mean and std need 3 values (one per RGB channel)")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self._cache: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        consts = self._cache.get(x.device)
        if consts is None:
            mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
            inv_std = 1.0 / torch.tensor(self.std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
            consts = self._cache[x.device] = (mean, inv_std)
        return (x - consts[0]) * consts[1]


def _rand(
    shape: tuple[int, ...], generator: torch.Generator, device: torch.device, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=device, dtype=dtype)


def _uniform(
    shape: tuple[int, ...],
    low: float,
    high: float,
    generator: torch.Generator,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    return _rand(shape, generator, device, dtype) * (high - low) + low


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the HSV hue of a [B,3,H,W] batch in [0,1] by ``shift`` [B] turns (torchvision ``adjust_hue``).

    Value (max) and chroma (max - min) are kept; each channel is rebuilt with the closed form
    ``v - c * clamp(min(k, 4 - k), 0, 1)``, ``k = (n + 6h) mod 6`` with ``n = 5, 3, 1`` for R, G, B.
    """
    r, g, b = x.unbind(1)
    maxc = x.amax(dim=1)
    c = maxc - x.amin(dim=1)
    safe = torch.where(c > 0, c, torch.ones_like(c))
    h6 = torch.where(maxc == r, (g - b) / safe, torch.where(maxc == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
    h6 = h6 + (6.0 * shift).view(-1, 1, 1)
    n = (5.0 - 2.0 * torch.arange(3, device=x.device, dtype=x.dtype)).view(1, 3, 1, 1)  # 5, 3, 1; no host copy
    k = torch.remainder(n + h6.unsqueeze(1), 6.0)
    return maxc.unsqueeze(1) - c.unsqueeze(1) * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0)


def color_jitter(
    x: torch.Tensor,
    active: torch.Tensor,
    order: torch.Tensor,
    brightness: torch.Tensor,
    contrast: torch.Tensor,
    saturation: torch.Tensor,
    hue: torch.Tensor | None,
) -> torch.Tensor:
    """torchvision-style ColorJitter on a float batch [B,3,H,W] in [0,1] with given per-sample parameters.

    Sample ``i`` is changed only if ``active[i]``; it then runs brightness (0), contrast (1), saturation (2) and
    hue (3) in the order ``order[i]`` (a permutation of 0..3), with factors ``brightness[i]`` etc. and hue shift
    ``hue[i]`` (turns; ``None`` skips hue), clamping to [0, 1] after each. Inactive samples come back bit-exact.
    """
    ones = torch.ones_like(brightness)
    for step in range(4):
        op = torch.where(active, order[:, step], torch.full_like(order[:, step], -1))
        # Brightness, contrast and saturation are all clamp(f * x + (1 - f) * target); f = 1 is an exact no-op,
        # so one blend per step serves whichever of the three each sample runs at this step.
        f = torch.where(op == 0, brightness, torch.where(op == 1, contrast, torch.where(op == 2, saturation, ones)))
        gray = luma(x)
        target = torch.where((op == 1).view(-1, 1, 1, 1), gray.mean(dim=(1, 2, 3), keepdim=True), gray)
        target = target * (op != 0).view(-1, 1, 1, 1).to(x.dtype)  # brightness blends with black
        f = f.view(-1, 1, 1, 1).to(x.dtype)
        x = (f * x + (1.0 - f) * target).clamp_(0.0, 1.0)
        if hue is not None:
            x = torch.where((op == 3).view(-1, 1, 1, 1), adjust_hue(x, hue), x)
    return x


def gaussian_blur3(x: torch.Tensor, sigma: torch.Tensor, on: torch.Tensor) -> torch.Tensor:
    """3×3 Gaussian blur (torchvision ``GaussianBlur((3, 3), sigma)``, reflect padding) of the samples with
    ``on[i]``, each with its own ``sigma[i]``; the other samples come back bit-exact."""
    # Separable 3-tap kernel exp(-0.5 (t / sigma)^2) at t = -1, 0, 1, normalised; (0, 1, 0) is the identity.
    side = torch.where(on, torch.exp(-0.5 / sigma**2), torch.zeros_like(sigma))
    norm = 1.0 + 2.0 * side
    ws = (side / norm).view(-1, 1, 1, 1).to(x.dtype)
    wc = (1.0 / norm).view(-1, 1, 1, 1).to(x.dtype)
    p = F.pad(x, (1, 1, 1, 1), mode="reflect")
    p = ws * (p[..., :, :-2] + p[..., :, 2:]) + wc * p[..., :, 1:-1]
    return ws * (p[..., :-2, :] + p[..., 2:, :]) + wc * p[..., 1:-1, :]


class SimCLRAugment:
    """The SimCLR view pipeline of spec §2.4 on a batch: uint8 [B,3,H,W] → normalised float32 [B,3,S,S].

    Steps, each with its own per-sample random draws:

    1. RandomResizedCrop to ``S×S``: area fraction ``U(scale)``, aspect ratio log-uniform in ``ratio``; as in
       torchvision, up to 10 candidate boxes are tried (here all 10 are drawn at once and the first that fits is
       taken), falling back to a centre crop of the whole image clipped to ``ratio``. Bilinear sampling.
    2. HorizontalFlip with p=0.5, folded into the same ``affine_grid`` as the crop.
    3. ColorJitter(brightness, contrast, saturation, hue) with probability ``jitter_p``; its four sub-transforms
       run in a random order per sample. Brightness multiplies by ``U[1-b, 1+b]``, contrast blends with the mean
       of the image's grayscale, saturation blends with the grayscale, hue rotates H by ``U[-h, h]``; values are
       clamped to [0, 1] after each.
    4. RandomGrayscale with probability ``gray_p`` (luma replicated to 3 channels).
    5. GaussianBlur 3×3, sigma ``U[1, 2]``, reflect padding, with probability ``blur_p``.
    6. Normalize(mean, std).

    The defaults are the reference's SimCLR settings; ``jitter=(0.4, 0.4, 0.4, 0.2), jitter_p=1, gray_p=0,
    blur_p=0`` gives its supervised ImageNet train transform.
    """

    def __init__(
        self,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
        flip_p: float = 0.5,
        jitter: tuple[float, float, float, float] = (0.8, 0.8, 0.8, 0.2),
        jitter_p: float = 0.3,
        gray_p: float = 0.2,
        blur_p: float = 0.2,
        blur_sigma: tuple[float, float] = (1.0, 2.0),
    ) -> None:
        self.image_size = int(image_size)
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.flip_p = float(flip_p)
        self.jitter = tuple(float(v) for v in jitter)
        if len(self.jitter) != 4 or not 0.0 <= self.jitter[3] <= 0.5:
            raise ValueError("jitter is (brightness, contrast, saturation, hue) with 0 <= hue <= 0.5")
        self.jitter_p = float(jitter_p)
        self.gray_p = float(gray_p)
        self.blur_p = float(blur_p)
        self.blur_sigma = (float(blur_sigma[0]), float(blur_sigma[1]))
        self.normalize = _Normalizer(mean, std)
        self.attempts = 10

    # -- 1+2: crop and flip -------------------------------------------------------------------------------------
    def crop_boxes(
        self, batch: int, height: int, width: int, generator: torch.Generator, device: torch.device
    ) -> torch.Tensor:
        """Per-sample RandomResizedCrop boxes ``(top, left, h, w)`` as a float64 [B,4] tensor of integers."""
        f64 = torch.float64
        area = float(height * width)
        lo, hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        shape = (batch, self.attempts)
        target = area * _uniform(shape, self.scale[0], self.scale[1], generator, device, f64)
        aspect = torch.exp(_uniform(shape, lo, hi, generator, device, f64))
        w = torch.round(torch.sqrt(target * aspect))
        h = torch.round(torch.sqrt(target / aspect))
        fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
        first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # first fitting attempt (0 if none fits)
        any_fit = fits.any(dim=1)
        w = w.gather(1, first).squeeze(1)
        h = h.gather(1, first).squeeze(1)

        # Fallback: the whole image, clipped to the allowed aspect-ratio range, centred.
        in_ratio = width / height
        if in_ratio < min(self.ratio):
            fw, fh = width, round(width / min(self.ratio))
        elif in_ratio > max(self.ratio):
            fw, fh = round(height * max(self.ratio)), height
        else:
            fw, fh = width, height
        w = torch.where(any_fit, w, torch.full_like(w, fw))
        h = torch.where(any_fit, h, torch.full_like(h, fh))

        u = _rand((batch, 2), generator, device, f64)
        top = torch.minimum(torch.floor(u[:, 0] * (height - h + 1)), height - h)
        left = torch.minimum(torch.floor(u[:, 1] * (width - w + 1)), width - w)
        top = torch.where(any_fit, top, torch.full_like(top, (height - fh) // 2))
        left = torch.where(any_fit, left, torch.full_like(left, (width - fw) // 2))
        return torch.stack((top, left, h, w), dim=1)

    def _crop_flip(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        batch, _, height, width = x.shape
        s = self.image_size
        box = self.crop_boxes(batch, height, width, generator, x.device)
        flip = _rand((batch,), generator, x.device) < self.flip_p
        top, left, h, w = box.unbind(1)
        # Output pixel k samples the crop at (k + 0.5) * w / S from its left edge (half-pixel centres), i.e. in
        # align_corners=False normalised coordinates x_in = (w / W) * x_out + (2 * left + w) / W - 1.
        sx = (w / width) * torch.where(flip, -1.0, 1.0).to(w.dtype)
        theta = torch.zeros(batch, 2, 3, dtype=torch.float64, device=x.device)
        theta[:, 0, 0] = sx
        theta[:, 0, 2] = (2 * left + w) / width - 1
        theta[:, 1, 1] = h / height
        theta[:, 1, 2] = (2 * top + h) / height - 1
        grid = F.affine_grid(theta.to(x.dtype), [batch, 3, s, s], align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    # -- 3, 4, 5: colour jitter, grayscale, blur ---------------------------------------------------------------
    def _jitter(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        batch, dev = x.shape[0], x.device
        b, c, s, hue = self.jitter
        active = _rand((batch,), generator, dev) < self.jitter_p
        order = torch.argsort(_rand((batch, 4), generator, dev), dim=1)  # a random permutation per sample
        bf, cf, sf = (_uniform((batch,), max(0.0, 1.0 - v), 1.0 + v, generator, dev) for v in (b, c, s))
        hf = _uniform((batch,), -hue, hue, generator, dev)
        return color_jitter(x, active, order, bf, cf, sf, hf if hue > 0 else None)

    def _grayscale(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        gray = _rand((x.shape[0],), generator, x.device) < self.gray_p
        return torch.where(gray.view(-1, 1, 1, 1), luma(x).expand_as(x), x)

    def _blur(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        on = _rand((x.shape[0],), generator, x.device) < self.blur_p
        sigma = _uniform((x.shape[0],), self.blur_sigma[0], self.blur_sigma[1], generator, x.device)
        return gaussian_blur3(x, sigma, on)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        _check(images, generator)
        x = self._crop_flip(_to_unit(images), generator)
        x = self._jitter(x, generator)
        x = self._grayscale(x, generator)
        x = self._blur(x, generator)
        return self.normalize(x)


class SupervisedAugment:
    """CIFAR-style supervised train transform (spec §2.4): uint8 [B,3,H,W] → normalised float32 [B,3,S,S].

    RandomCrop(S, padding=4) with zero (black) padding and RandomHorizontalFlip(0.5), done with one gather per
    batch; then Normalize; then, if ``cutout_length > 0``, Cutout on the normalised tensor: a centre ``(y, x)``
    uniform over the pixels, rows ``clip(y - L//2, 0, H) : clip(y + L//2, 0, H)`` (and the same for columns)
    set to 0 in all channels, for every sample.
    """

    def __init__(
        self, image_size: int, mean: Sequence[float], std: Sequence[float], cutout_length: int = 0, padding: int = 4
    ) -> None:
        self.image_size = int(image_size)
        self.cutout_length = int(cutout_length)
        self.padding = int(padding)
        self.normalize = _Normalizer(mean, std)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        _check(images, generator)
        batch, _, height, width = images.shape
        s, pad, dev = self.image_size, self.padding, images.device
        if height + 2 * pad < s or width + 2 * pad < s:
            raise ValueError(f"cannot crop {s}x{s} from {height}x{width} images with padding {pad}")
        u = _rand((batch, 3), generator, dev)
        top = torch.floor(u[:, 0] * (height + 2 * pad - s + 1)).long().clamp_(max=height + 2 * pad - s)
        left = torch.floor(u[:, 1] * (width + 2 * pad - s + 1)).long().clamp_(max=width + 2 * pad - s)
        flip = u[:, 2] < 0.5
        ar = torch.arange(s, device=dev)
        rows = (top[:, None] + ar).view(batch, 1, s, 1)
        cols = (left[:, None] + torch.where(flip[:, None], s - 1 - ar, ar)).view(batch, 1, 1, s)
        padded = F.pad(images, (pad, pad, pad, pad)) if pad else images
        bidx = torch.arange(batch, device=dev).view(batch, 1, 1, 1)
        cidx = torch.arange(images.shape[1], device=dev).view(1, -1, 1, 1)
        out = padded[bidx, cidx, rows, cols]  # one gather: [B,3,S,S], contiguous
        x = self.normalize(_to_unit(out))
        if self.cutout_length > 0:
            x = self._cutout(x, generator)
        return x

    def _cutout(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        batch, _, height, width = x.shape
        half, dev = self.cutout_length // 2, x.device
        u = _rand((batch, 2), generator, dev)
        y = torch.floor(u[:, 0] * height).long().clamp_(max=height - 1)
        xc = torch.floor(u[:, 1] * width).long().clamp_(max=width - 1)
        y0, y1 = (y - half).clamp(0, height), (y + half).clamp(0, height)
        x0, x1 = (xc - half).clamp(0, width), (xc + half).clamp(0, width)
        rr = torch.arange(height, device=dev).view(1, height, 1)
        cc = torch.arange(width, device=dev).view(1, 1, width)
        hole = (
            (rr >= y0.view(-1, 1, 1)) & (rr < y1.view(-1, 1, 1)) & (cc >= x0.view(-1, 1, 1)) & (cc < x1.view(-1, 1, 1))
        )
        return x.masked_fill(hole.unsqueeze(1), 0.0)


class EvalTransform:
    """Evaluation transform: uint8 [B,3,H,W] → normalised float32 (``ToTensor`` + ``Normalize``); no randomness."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.normalize = _Normalizer(mean, std)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _check(images, None)
        return self.normalize(_to_unit(images))

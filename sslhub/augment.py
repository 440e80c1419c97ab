"""Batched two-view augmentation on tensors, run where the model runs (CPU or GPU).

Per-image PIL augmentation costs about 1.5 ms a view on one CPU core, far more than a small model's
training step at 32x32; on a GPU it starves the device. `BatchedTwoViewAugmentation` draws every
random parameter for the whole batch at once and applies the MoCo presets with a handful of batched
tensor operations:

- random resized crop: per-image boxes (torchvision's sampling: scale, log-uniform aspect ratio, ten
  tries, then the centre crop) resampled bilinearly with `torchvision.ops.roi_align`;
- colour jitter (brightness, contrast, saturation, hue, applied in that fixed order), random grayscale,
  Gaussian blur (per-image sigma, grouped separable convolution), solarization, horizontal flip;
- normalization.

Its input is a batch of equal-sized uint8 images (`ImageDataset` items with `to_uint8_tensor`, e.g. CIFAR);
its randomness comes from a `torch.Generator`, seeded per batch from (seed, epoch, batch index) by the
recipe, so that a resumed run draws the same views.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align


@dataclass(frozen=True)
class ViewSettings:
    """The random transformations of one view (the MoCo presets of `data.two_view_transform`)."""

    min_scale: float = 0.2
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.5
    solarize_p: float = 0.0
    flip_p: float = 0.5


PRESETS = {
    "v1": (ViewSettings(jitter=(0.4, 0.4, 0.4, 0.4), jitter_p=1.0, blur_p=0.0),) * 2,
    "v2": (ViewSettings(),) * 2,
    "v3": (
        ViewSettings(min_scale=0.08, jitter=(0.4, 0.4, 0.2, 0.1), blur_p=1.0),
        ViewSettings(min_scale=0.08, jitter=(0.4, 0.4, 0.2, 0.1), blur_p=0.1, solarize_p=0.2),
    ),
}


def _uniform(n: int, low: float, high: float, generator: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=device) * (high - low) + low


def _bernoulli(n: int, p: float, generator: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=device) < p


def crop_boxes(
    n: int,
    height: int,
    width: int,
    min_scale: float,
    generator: torch.Generator,
    device=None,
    tries: int = 10,
) -> torch.Tensor:
    """RandomResizedCrop boxes `(x1, y1, x2, y2)` for `n` images of `height x width`, torchvision's way.

    Scale ~ U(min_scale, 1) of the area, aspect ratio log-uniform in [3/4, 4/3]; the first of `tries`
    draws that fits is used, else the whole image (centre crop at the clamped ratio).
    """
    area = height * width
    scale = _uniform(n * tries, min_scale, 1.0, generator, device).view(n, tries)
    log_ratio = _uniform(n * tries, math.log(3 / 4), math.log(4 / 3), generator, device).view(n, tries)
    ratio = log_ratio.exp()
    w = (area * scale * ratio).sqrt().round()
    h = (area * scale / ratio).sqrt().round()
    fits = (w > 0) & (h > 0) & (w <= width) & (h <= height)
    first = torch.where(fits.any(1), fits.float().argmax(1), torch.full((n,), -1, device=device))
    index = first.clamp(min=0)[:, None]
    w, h = w.gather(1, index).squeeze(1), h.gather(1, index).squeeze(1)
    fallback = first < 0
    w = torch.where(fallback, torch.full_like(w, width), w)
    h = torch.where(fallback, torch.full_like(h, height), h)
    x1 = (torch.rand(n, generator=generator, device=device) * (width - w + 1)).floor()
    y1 = (torch.rand(n, generator=generator, device=device) * (height - h + 1)).floor()
    return torch.stack([x1, y1, x1 + w, y1 + h], dim=1)


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]  # (N, 1, H, W), ITU-R 601


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    maximum, _ = x.max(1)
    minimum, _ = x.min(1)
    delta = maximum - minimum
    value = maximum
    saturation = torch.where(maximum > 0, delta / maximum.clamp(min=1e-12), torch.zeros_like(maximum))
    safe = delta.clamp(min=1e-12)
    hue = torch.where(
        maximum == r, ((g - b) / safe) % 6, torch.where(maximum == g, (b - r) / safe + 2, (r - g) / safe + 4)
    )
    hue = torch.where(delta > 0, hue / 6, torch.zeros_like(hue))
    return torch.stack([hue, saturation, value], dim=1)


def _hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    hue, saturation, value = x.unbind(1)
    k = torch.stack([(5 + hue * 6) % 6, (3 + hue * 6) % 6, (1 + hue * 6) % 6], dim=1)  # (N, 3, H, W)
    weight = (torch.minimum(k, 4 - k)).clamp(0, 1)
    return value[:, None] - value[:, None] * saturation[:, None] * weight


def color_jitter(
    x: torch.Tensor,
    brightness: torch.Tensor,
    contrast: torch.Tensor,
    saturation: torch.Tensor,
    hue: torch.Tensor,
) -> torch.Tensor:
    """Per-image colour jitter of (N, 3, H, W) images in [0, 1]; factors are (N,), hue a shift in turns."""
    x = (x * brightness[:, None, None, None]).clamp(0, 1)
    mean = _grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * contrast[:, None, None, None] + mean).clamp(0, 1)
    gray = _grayscale(x)
    x = ((x - gray) * saturation[:, None, None, None] + gray).clamp(0, 1)
    if bool((hue != 0).any()):
        hsv = _rgb_to_hsv(x)
        hsv = torch.cat([(hsv[:, :1] + hue[:, None, None, None]) % 1.0, hsv[:, 1:]], dim=1)
        x = _hsv_to_rgb(hsv).clamp(0, 1)
    return x


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Per-image Gaussian blur with standard deviations `sigma` (N,), by a grouped separable convolution."""
    n, c, h, w = x.shape
    offsets = torch.arange(kernel_size, device=x.device, dtype=x.dtype) - kernel_size // 2
    kernel = torch.exp(-(offsets[None] ** 2) / (2 * sigma[:, None].to(x.dtype) ** 2))  # (N, k)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, dim=0)  # (N*C, k)
    pad = kernel_size // 2
    flat = x.reshape(1, n * c, h, w)
    flat = F.conv2d(F.pad(flat, (pad, pad, 0, 0), mode="reflect"), kernel[:, None, None, :], groups=n * c)
    flat = F.conv2d(F.pad(flat, (0, 0, pad, pad), mode="reflect"), kernel[:, None, :, None], groups=n * c)
    return flat.view(n, c, h, w)


class BatchedTwoViewAugmentation:
    """The MoCo v1/v2/v3 two-view presets on a batch of equal-sized uint8 images, on their device.

    Args:
        preset: "v1", "v2" or "v3" (as `data.two_view_transform`).
        image_size: output side.
        mean, std: normalization of the output.
        min_scale: overrides the crop's lower scale bound.
    """

    def __init__(self, preset: str, image_size: int, mean, std, min_scale: float | None = None) -> None:
        if preset not in PRESETS:
            raise ValueError(f"augmentation must be one of {sorted(PRESETS)}, got {preset!r}")
        views = PRESETS[preset]
        if min_scale is not None:
            views = tuple(ViewSettings(**{**v.__dict__, "min_scale": min_scale}) for v in views)
        self.views = views
        self.image_size = image_size
        # Blur helps at ImageNet scale; at 32x32 it only destroys the little signal there is.
        self.blur = image_size >= 64
        self.kernel_size = max(3, int(0.1 * image_size) // 2 * 2 + 1)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    def view(self, images: torch.Tensor, settings: ViewSettings, generator: torch.Generator) -> torch.Tensor:
        """One augmented, normalized view (N, 3, S, S) float32 of uint8 images (N, 3, H, W)."""
        n, _, height, width = images.shape
        device = images.device
        x = images.float() / 255
        boxes = crop_boxes(n, height, width, settings.min_scale, generator, device)
        rois = torch.cat([torch.arange(n, device=device, dtype=x.dtype)[:, None], boxes.to(x.dtype)], dim=1)
        x = roi_align(
            x,
            rois,
            output_size=(self.image_size, self.image_size),
            spatial_scale=1.0,
            sampling_ratio=-1,  # adaptive: one bilinear sample per pixel when enlarging, averages when shrinking
            aligned=True,
        )  # (N, 3, S, S)

        b, c, s, h = settings.jitter
        apply = _bernoulli(n, settings.jitter_p, generator, device)
        ones = torch.ones(n, device=device)
        brightness = torch.where(apply, _uniform(n, max(0, 1 - b), 1 + b, generator, device), ones)
        contrast = torch.where(apply, _uniform(n, max(0, 1 - c), 1 + c, generator, device), ones)
        saturation = torch.where(apply, _uniform(n, max(0, 1 - s), 1 + s, generator, device), ones)
        hue = torch.where(apply, _uniform(n, -h, h, generator, device), torch.zeros(n, device=device))
        x = color_jitter(x, brightness, contrast, saturation, hue)

        gray = _bernoulli(n, settings.grayscale_p, generator, device)[:, None, None, None]
        x = torch.where(gray, _grayscale(x).expand_as(x), x)
        if self.blur and settings.blur_p > 0:
            blur = _bernoulli(n, settings.blur_p, generator, device)
            sigma = _uniform(n, 0.1, 2.0, generator, device)
            x = torch.where(blur[:, None, None, None], gaussian_blur(x, sigma, self.kernel_size), x)
        if settings.solarize_p > 0:
            solarize = _bernoulli(n, settings.solarize_p, generator, device)[:, None, None, None]
            x = torch.where(solarize & (x >= 0.5), 1 - x, x)
        flip = _bernoulli(n, settings.flip_p, generator, device)[:, None, None, None]
        x = torch.where(flip, x.flip(-1), x)
        return (x - self.mean.to(device)) / self.std.to(device)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """`(query_view, key_view)` of a uint8 batch (N, 3, H, W)."""
        return self.view(images, self.views[0], generator), self.view(images, self.views[1], generator)

"""Batched two-view augmentation on tensors, run where the model runs (CPU or GPU).

Per-image PIL augmentation costs about 1.5 ms a view on one CPU core, far more than a small model's
training step at 32x32; on a GPU it starves the device. `BatchedTwoViewAugmentation` applies the views
of a preset of `presets.PRESETS` (the table `views.two_view_transform` builds its torchvision
transforms from) to a whole batch, drawing every random parameter for the batch at once:

- random resized crop: per-image boxes (torchvision's sampling: scale, log-uniform aspect ratio, ten
  tries, then the centre crop) resampled bilinearly with `torchvision.ops.roi_align`;
- colour jitter (brightness, contrast, saturation, hue in a random order per image, as torchvision),
  random grayscale, Gaussian blur (per-image sigma, grouped separable convolution), solarization,
  horizontal flip;
- normalization.

The operations, their order and their parameter distributions are the per-image path's; pixels differ a
little (float arithmetic instead of PIL's uint8 rounding, `roi_align` instead of PIL's antialiased resize),
and so do the random streams: the same seed gives other views in the two paths. On the CPU, jitter and
blur run on the subsets of images that apply them (the least arithmetic); elsewhere they run on the whole
batch and a per-image mask keeps their result where it applies, the same numbers without the host sync
that a subset's size would cost on a GPU: nothing here waits for the device.

Its input is a batch of equal-sized uint8 images (`image_datasets.UInt8ImageDataset` items, e.g. CIFAR); its
randomness comes from a `torch.Generator`, seeded per batch from (seed, epoch, batch index) by the
recipe, so that a resumed run draws the same views.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from . import presets


def _uniform(n: int, low: float, high: float, generator: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=device) * (high - low) + low


def _bernoulli(n: int, p: float, generator: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=device) < p


def crop_boxes(
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator,
    device=None,
    tries: int = 10,
) -> torch.Tensor:
    """RandomResizedCrop boxes `(x1, y1, x2, y2)` for `n` images of `height x width`, torchvision's way.

    Scale ~ U(scale) of the area, aspect ratio log-uniform in `ratio`; the first of `tries` draws that
    fits is used, else the whole image (centre crop at the clamped ratio).
    """
    area = height * width
    scale = _uniform(n * tries, scale[0], scale[1], generator, device).view(n, tries)
    log_ratio = _uniform(n * tries, math.log(ratio[0]), math.log(ratio[1]), generator, device).view(n, tries)
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


def _on_subsets(x: torch.Tensor) -> bool:
    """Whether to apply a per-image operation to the subset of images that draw it (eager CPU: least work)
    or to the whole batch, keeping its result where drawn (other devices: a subset's size would sync the
    host; compiled: one fused loop, no data-dependent shapes)."""
    return x.device.type == "cpu" and not torch.compiler.is_compiling()


def _apply_where(x: torch.Tensor, chosen: torch.Tensor, operation, *per_image: torch.Tensor) -> torch.Tensor:
    """`x` with `operation(x_i, *per_image_i)` for the images i where `chosen` (N,) is True: `x` itself,
    changed in place, on the CPU; a new tensor elsewhere."""
    if _on_subsets(x):
        index = chosen.nonzero().squeeze(1)
        if len(index):
            x[index] = operation(x[index], *(value[index] for value in per_image))
        return x
    return torch.where(chosen[:, None, None, None], operation(x, *per_image), x)


_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, PIL's grayscale weights


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    return _LUMA[0] * x[:, 0:1] + _LUMA[1] * x[:, 1:2] + _LUMA[2] * x[:, 2:3]  # (N, 1, H, W)


def _per_image(factor: torch.Tensor) -> torch.Tensor:
    return factor[:, None, None, None]  # (N, 1, 1, 1)


def _adjust_linear(
    x: torch.Tensor,
    kind: torch.Tensor,
    brightness: torch.Tensor | None,
    contrast: torch.Tensor | None,
    saturation: torch.Tensor | None,
) -> torch.Tensor:
    """Brightness, contrast or saturation, whichever `kind` (N,) names per image (0, 1, 2; other values
    leave the image unchanged), as one per-image colour transform `clamp(A x + b, 0, 1)`.

    torchvision blends each image with another and clamps: brightness with black (A = f I), contrast with
    its mean grey level m (A = f I, b = (1 - f) m), saturation with its own grey image (A = f I + (1 - f) 1 w^T,
    w the luma weights). An image left unchanged gets A = I, b = 0: exactly itself. One batched matrix
    product over the whole batch, the same on every device, instead of a pass per adjustment.
    """
    n, device = len(x), x.device
    scale = torch.ones(n, device=device, dtype=x.dtype)  # f on the diagonal
    grey_weight = torch.zeros(n, device=device, dtype=x.dtype)  # 1 - f of the grey image
    offset = torch.zeros(n, device=device, dtype=x.dtype)  # (1 - f) m
    luma = torch.tensor(_LUMA, device=device, dtype=x.dtype)
    if brightness is not None:
        scale = torch.where(kind == 0, brightness, scale)
    if contrast is not None:
        chosen = kind == 1
        scale = torch.where(chosen, contrast, scale)
        offset = torch.where(chosen, (1 - contrast) * (x.mean(dim=(2, 3)) @ luma), offset)
    if saturation is not None:
        chosen = kind == 2
        scale = torch.where(chosen, saturation, scale)
        grey_weight = torch.where(chosen, 1 - saturation, grey_weight)
    eye = torch.eye(3, device=device, dtype=x.dtype)
    # (N, 3, 3), row c: f e_c + (1 - f) w
    matrix = scale[:, None, None] * eye + grey_weight[:, None, None] * luma
    pixels = x.reshape(n, 3, -1)  # (N, 3, H*W)
    out = torch.baddbmm(offset[:, None, None].expand(n, 3, 1), matrix, pixels)
    return out.clamp_(0, 1).view(x.shape)


def _adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue by `shift` (N,) turns: torchvision's RGB -> HSV -> RGB round trip, written for speed.

    A hue shift keeps each pixel's maximum (HSV value) and max - min (value x saturation); only the hue,
    in sixths of a turn, moves, and each channel is the maximum minus (max - min) times a trapezoid of it.
    """
    r, g, b = x.unbind(1)
    maximum = torch.maximum(torch.maximum(r, g), b)  # (N, H, W)
    delta = maximum - torch.minimum(torch.minimum(r, g), b)
    inverse = 1 / delta.clamp(min=1e-12)  # grey pixels: any hue, their delta is 0
    hue = torch.where(
        maximum == r,
        (g - b) * inverse,
        torch.where(maximum == g, (b - r) * inverse + 2, (r - g) * inverse + 4),
    )
    hue = hue + 6 * shift[:, None, None]
    channels = []
    for offset in (5, 3, 1):  # red, green, blue
        k = torch.remainder(hue + offset, 6)
        weight = 1 - ((k - 2).abs_() - 1).clamp_(0, 1)  # min(k, 4 - k) clamped to [0, 1]
        channels.append(maximum - delta * weight)
    return torch.stack(channels, dim=1).clamp_(0, 1)  # (N, 3, H, W)


_HUE = 3  # the adjustments' indices, in the order of torchvision's `ColorJitter` (its `fn_idx`):
# 0 brightness, 1 contrast, 2 saturation, 3 hue


def color_jitter(
    x: torch.Tensor,
    brightness: torch.Tensor | None,
    contrast: torch.Tensor | None,
    saturation: torch.Tensor | None,
    hue: torch.Tensor | None,
    order: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-image colour jitter of (N, 3, H, W) images in [0, 1], torchvision's `ColorJitter` on a batch.

    Args:
        x: images (N, 3, H, W) in [0, 1].
        brightness, contrast, saturation: factors (N,); `None` leaves the adjustment out.
        hue: shifts (N,) in turns; `None` leaves it out.
        order: (N, 4), per image the adjustments' indices (0 brightness, 1 contrast, 2 saturation, 3 hue)
            in the order they are applied (torchvision's `fn_idx`, a random permutation); a row of -1
            leaves its image unchanged. `None`: brightness, contrast, saturation, hue for every image.

    Returns:
        The jittered images, a new tensor.
    """
    if order is None:
        order = torch.arange(4, device=x.device).expand(len(x), 4)
    linear = any(factor is not None for factor in (brightness, contrast, saturation))
    if not linear:
        x = x.clone()  # the hue is shifted in place on the CPU
    # Round by round, each image gets the adjustment its order names there: the linear ones in one
    # colour transform of the whole batch, the hue on the images that shift it in that round.
    for step in range(order.shape[1]):
        kind = order[:, step]
        if linear:
            x = _adjust_linear(x, kind, brightness, contrast, saturation)
        if hue is not None:
            x = _apply_where(x, kind == _HUE, _adjust_hue, hue)
    return x


def jitter_order(apply: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The `order` of `color_jitter`: per image a uniformly random permutation of the four adjustments
    (torchvision draws `torch.randperm(4)` per call), a row of -1 where `apply` (N,) is False."""
    order = torch.rand(len(apply), 4, generator=generator, device=apply.device).argsort(1)  # (N, 4)
    return order.masked_fill(~apply[:, None], -1)


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


# One batched implementation per operation of the preset table, in two halves: `draw(operation, n, height,
# width, generator, device)` draws the operation's random parameters for n images of height x width, and
# `apply(x, operation, parameters, image_size)` does its pixel work on x float (N, 3, H, W) in [0, 1]. A view
# draws every operation's parameters, in order, before any pixel work: the random stream is the one of
# drawing and applying in turn, and the pixel work is one pure function of tensors (compilable whole).


def _draw_crop(operation: presets.ResizedCrop, n, height, width, generator, device) -> torch.Tensor:
    return crop_boxes(n, height, width, operation.scale, operation.ratio, generator, device)


def _resized_crop(
    x: torch.Tensor, operation: presets.ResizedCrop, boxes: torch.Tensor, image_size: int
) -> torch.Tensor:
    rois = torch.cat(
        [torch.arange(len(x), device=x.device, dtype=x.dtype)[:, None], boxes.to(x.dtype)], dim=1
    )
    return roi_align(
        x,
        rois,
        output_size=(image_size, image_size),
        spatial_scale=1.0,
        sampling_ratio=-1,  # adaptive: one bilinear sample per pixel when enlarging, averages when shrinking
        aligned=True,
    )  # (N, 3, S, S)


def _draw_jitter(operation: presets.ColorJitter, n, height, width, generator, device) -> tuple:
    order = jitter_order(_bernoulli(n, operation.p, generator, device), generator)
    ranges = (
        (max(0.0, 1 - operation.brightness), 1 + operation.brightness),
        (max(0.0, 1 - operation.contrast), 1 + operation.contrast),
        (max(0.0, 1 - operation.saturation), 1 + operation.saturation),
        (-operation.hue, operation.hue),
    )
    factors = [None if low == high else _uniform(n, low, high, generator, device) for low, high in ranges]
    return order, factors


def _color_jitter(
    x: torch.Tensor, operation: presets.ColorJitter, drawn: tuple, image_size: int
) -> torch.Tensor:
    order, factors = drawn
    return color_jitter(x, *factors, order=order)


def _draw_chosen(operation, n, height, width, generator, device) -> torch.Tensor:
    """Which images (N,) an operation applied with probability `operation.p` changes."""
    return _bernoulli(n, operation.p, generator, device)


def _random_grayscale(
    x: torch.Tensor, operation: presets.Grayscale, gray: torch.Tensor, image_size: int
) -> torch.Tensor:
    return torch.where(_per_image(gray), _grayscale(x).expand_as(x), x)


def _draw_blur(operation: presets.GaussianBlur, n, height, width, generator, device) -> tuple:
    return _bernoulli(n, operation.p, generator, device), _uniform(n, *operation.sigma, generator, device)


def _gaussian_blur(
    x: torch.Tensor, operation: presets.GaussianBlur, drawn: tuple, image_size: int
) -> torch.Tensor:
    blur, sigma = drawn
    kernel_size = operation.kernel_size(image_size)
    return _apply_where(x.clone(), blur, lambda images, s: gaussian_blur(images, s, kernel_size), sigma)


def _solarize(
    x: torch.Tensor, operation: presets.Solarize, solarize: torch.Tensor, image_size: int
) -> torch.Tensor:
    return torch.where(_per_image(solarize) & (x >= operation.threshold / 255), 1 - x, x)


def _horizontal_flip(
    x: torch.Tensor, operation: presets.HorizontalFlip, flip: torch.Tensor, image_size: int
) -> torch.Tensor:
    return torch.where(_per_image(flip), x.flip(-1), x)


_BATCHED = {  # operation type: (draw, apply)
    presets.ResizedCrop: (_draw_crop, _resized_crop),
    presets.ColorJitter: (_draw_jitter, _color_jitter),
    presets.Grayscale: (_draw_chosen, _random_grayscale),
    presets.GaussianBlur: (_draw_blur, _gaussian_blur),
    presets.Solarize: (_draw_chosen, _solarize),
    presets.HorizontalFlip: (_draw_chosen, _horizontal_flip),
}


def draw_view(view: presets.View, images: torch.Tensor, generator: torch.Generator) -> list:
    """The random parameters of every operation of `view` for the uint8 batch `images` (N, 3, H, W)."""
    n, _, height, width = images.shape
    return [_BATCHED[type(op)][0](op, n, height, width, generator, images.device) for op in view]


def apply_view(
    images: torch.Tensor,
    parameters: list,
    view: presets.View,
    image_size: int,
    mean: torch.Tensor,
    std: torch.Tensor,
) -> torch.Tensor:
    """The pixel work of `view` with its drawn `parameters` on uint8 `images`: the view (N, 3, S, S) float32,
    normalized by `mean` and `std` (1, 3, 1, 1). The first operation is expected to be the crop, which sizes
    the output."""
    x = images.float() / 255
    for operation, drawn in zip(view, parameters, strict=True):
        x = _BATCHED[type(operation)][1](x, operation, drawn, image_size)
    return (x - mean) / std


class BatchedTwoViewAugmentation:
    """The two views of a MoCo preset (`presets.PRESETS`) on a batch of equal-sized uint8 images,
    on their device.

    Args:
        preset: "v1", "v2" or "v3" (as `views.two_view_transform`).
        image_size: output side.
        mean, std: normalization of the output.
        min_scale: overrides the crop's lower scale bound.
        compile: `torch.compile` each view's pixel work (`apply_view`) into one fused function: its
            elementwise passes (jitter, hue, blur, masks) become a few loops instead of dozens of kernels.
            The first batch of each view compiles (seconds to a minute; a C++ compiler on the CPU); the views
            are the eager ones up to float rounding, from the same random stream.

    Attributes:
        views: the (query, key) operations applied, in order (`presets.preset_views`).
    """

    def __init__(
        self, preset: str, image_size: int, mean, std, min_scale: float | None = None, compile: bool = False
    ) -> None:
        self.views = presets.preset_views(preset, image_size, min_scale)
        self.image_size = image_size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.compile = compile
        self._normalization = {}  # device -> (mean, std) there: copied once (a copy to a GPU waits for it)
        self._compiled = {}  # view -> its compiled apply_view

    def _pixels(self, view: presets.View):
        if not self.compile:
            return apply_view
        if view not in self._compiled:
            # One graph per view (its operations are constants of the graph); batches keep their size.
            self._compiled[view] = torch.compile(apply_view, dynamic=False)
        return self._compiled[view]

    def view(self, images: torch.Tensor, view: presets.View, generator: torch.Generator) -> torch.Tensor:
        """One augmented, normalized view (N, 3, S, S) float32 of uint8 images (N, 3, H, W).

        `view`'s operations run in order; the first is expected to be the crop, which sizes the output.
        """
        if images.device not in self._normalization:
            self._normalization[images.device] = (self.mean.to(images.device), self.std.to(images.device))
        mean, std = self._normalization[images.device]
        parameters = draw_view(view, images, generator)
        return self._pixels(view)(images, parameters, view, self.image_size, mean, std)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """`(query_view, key_view)` of a uint8 batch (N, 3, H, W)."""
        query, key = self.views
        return self.view(images, query, generator), self.view(images, key, generator)

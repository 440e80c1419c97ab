"""The per-image views of training and evaluation, on torchvision transforms v2: the MoCo presets of
`presets.PRESETS` (two views per image), the geometry-only view of colorization, the evaluation
preprocessing, and the seeds that make every view a function of (run seed, epoch, sample index)."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from PIL import Image
from torchvision.transforms import v2

from . import presets


def _torchvision(operation: presets.Operation, image_size: int) -> v2.Transform:
    """The torchvision transform of one operation of the preset table, on PIL images."""
    if isinstance(operation, presets.ResizedCrop):
        return v2.RandomResizedCrop(image_size, scale=operation.scale, ratio=operation.ratio, antialias=True)
    if isinstance(operation, presets.ColorJitter):
        jitter = v2.ColorJitter(operation.brightness, operation.contrast, operation.saturation, operation.hue)
        return jitter if operation.p == 1 else v2.RandomApply([jitter], p=operation.p)
    if isinstance(operation, presets.Grayscale):
        return v2.RandomGrayscale(p=operation.p)
    if isinstance(operation, presets.GaussianBlur):
        blur = v2.GaussianBlur(operation.kernel_size(image_size), sigma=operation.sigma)
        return blur if operation.p == 1 else v2.RandomApply([blur], p=operation.p)
    if isinstance(operation, presets.Solarize):
        return v2.RandomSolarize(threshold=operation.threshold, p=operation.p)
    if isinstance(operation, presets.HorizontalFlip):
        return v2.RandomHorizontalFlip(p=operation.p)
    raise TypeError(f"no torchvision transform for {operation!r}")


def _to_normalized_tensor(mean, std) -> list[v2.Transform]:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]


def _view(view: presets.View, image_size: int, mean, std) -> v2.Compose:
    """The operations of a resolved view (`presets.resolve_view`) on a PIL image, then normalize."""
    transforms = [_torchvision(operation, image_size) for operation in view]
    return v2.Compose([*transforms, *_to_normalized_tensor(mean, std)])


@dataclass
class TwoViewTransform:
    """Two augmented views of one image, the query view and the key view.

    Randomness comes from the `seed` passed at call time, so the views are a pure function of
    (image, seed); the global RNG is left untouched.
    """

    query_view: Callable
    key_view: Callable

    def __call__(self, image: Image.Image, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.query_view(image), self.key_view(image)


def two_view_transform(
    preset: str = "v2",
    image_size: int = 224,
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    min_scale: float | None = None,
) -> TwoViewTransform:
    """The query and key views of a MoCo preset (`presets.PRESETS`: v1, v2, v3) on PIL images.

    Blur is left out below 64x64 pixels; `min_scale` overrides the crop's lower scale bound
    (`presets.resolve_view`). `batched.BatchedTwoViewAugmentation` applies the same operations
    to batches of tensors.
    """
    query, key = presets.preset_views(preset, image_size, min_scale)
    query_view = _view(query, image_size, mean, std)
    return TwoViewTransform(query_view, query_view if key == query else _view(key, image_size, mean, std))


@dataclass
class OneViewTransform:
    """One augmented view of an image, seeded like `TwoViewTransform` (a pure function of (image, seed))."""

    view: Callable

    def __call__(self, image: Image.Image, seed: int) -> torch.Tensor:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.view(image)


def crop_flip_transform(
    image_size: int = 224,
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    min_scale: float | None = None,
) -> OneViewTransform:
    """One view with geometric augmentation only (`presets.CROP_FLIP`): RandomResizedCrop(scale
    `min_scale`-1, default 0.2), flip.

    For pretext tasks whose target is the image's colour (colorization): colour jitter or grayscale
    would corrupt the target.
    """
    return OneViewTransform(
        _view(presets.resolve_view(presets.CROP_FLIP, image_size, min_scale), image_size, mean, std)
    )


def eval_transform(
    image_size: int = 224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), crop_pct: float = 0.875
) -> v2.Compose:
    """Evaluation preprocessing: resize the shorter side to `image_size / crop_pct`, centre-crop, normalize.

    The same steps as the image processor saved with every sslhub model (`image_processor_for`).
    """
    resize = int(image_size / crop_pct)
    return v2.Compose(
        [
            v2.Resize(resize, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
            v2.CenterCrop(image_size),
            *_to_normalized_tensor(mean, std),
        ]
    )


def view_item(views: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Name a transform's output: one view is `pixel_values`, two are the query and key views."""
    if isinstance(views, torch.Tensor):
        return {"pixel_values": views}
    query, key = views
    return {"query_pixel_values": query, "key_pixel_values": key}


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one sample's augmentation, derived from the run seed, the epoch and its index."""
    return zlib.crc32(f"{seed}/{epoch}/{index}".encode()) * 2654435761 % (2**63 - 1)


def finetune_transform(
    image_size: int, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), min_scale: float = 0.08
) -> v2.Compose:
    """The augmentation of supervised fine-tuning: RandomResizedCrop and horizontal flip, then normalize."""
    return v2.Compose(
        [
            v2.RandomResizedCrop(image_size, scale=(min_scale, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(mean), list(std)),
        ]
    )

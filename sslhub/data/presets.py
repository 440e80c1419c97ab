"""The augmentation presets, as data: one table for the per-image and the batched implementation.

A view is the ordered tuple of its random operations, each with its parameters and probability. Two
implementations read the same table: `views.py` turns a view into torchvision transforms (per image, in the
DataLoader workers) and `batched.py` applies it to whole batches of tensors on the training device.
`preset_views` resolves a preset for an image size; the rules that depend on the size live there.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

# Blur helps at ImageNet scale; at 32x32 it only destroys the little signal there is (SimCLR, CIFAR).
MIN_BLUR_SIZE = 64


@dataclass(frozen=True)
class ResizedCrop:
    """RandomResizedCrop: a box of `scale` of the image's area with an aspect ratio log-uniform in `ratio`
    (ten tries, then the centre crop), resized to the output size."""

    scale: tuple[float, float] = (0.2, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)


@dataclass(frozen=True)
class ColorJitter:
    """ColorJitter, applied with probability `p`: brightness, contrast and saturation factors uniform in
    `[max(0, 1 - x), 1 + x]`, a hue shift uniform in `[-hue, hue]` turns, the four in a random order drawn
    per image (torchvision's `ColorJitter`); a zero leaves its adjustment out."""

    brightness: float
    contrast: float
    saturation: float
    hue: float
    p: float = 1.0


@dataclass(frozen=True)
class Grayscale:
    """RandomGrayscale: ITU-R 601 luma on all three channels with probability `p`."""

    p: float


@dataclass(frozen=True)
class GaussianBlur:
    """Gaussian blur with probability `p`, sigma uniform in `sigma` (pixels), kernel from `kernel_size`."""

    p: float
    sigma: tuple[float, float] = (0.1, 2.0)

    @staticmethod
    def kernel_size(image_size: int) -> int:
        """The odd kernel side at `image_size`: about 10% of the image (SimCLR: 23 at 224), at least 3."""
        return max(3, int(0.1 * image_size) // 2 * 2 + 1)


@dataclass(frozen=True)
class Solarize:
    """Solarization with probability `p`: values of at least `threshold` (of 255) are inverted (PIL's
    `ImageOps.solarize` default, used by BYOL and MoCo v3)."""

    p: float
    threshold: int = 128


@dataclass(frozen=True)
class HorizontalFlip:
    """RandomHorizontalFlip with probability `p`."""

    p: float = 0.5


Operation = ResizedCrop | ColorJitter | Grayscale | GaussianBlur | Solarize | HorizontalFlip
View = tuple[Operation, ...]

_MOCO_V1: View = (
    ResizedCrop(scale=(0.2, 1.0)),
    Grayscale(p=0.2),
    ColorJitter(0.4, 0.4, 0.4, 0.4),
    HorizontalFlip(),
)
_MOCO_V2: View = (
    ResizedCrop(scale=(0.2, 1.0)),
    ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8),
    Grayscale(p=0.2),
    GaussianBlur(p=0.5),
    HorizontalFlip(),
)


def _moco_v3(blur: float, solarize: float) -> View:
    return (
        ResizedCrop(scale=(0.08, 1.0)),
        ColorJitter(0.4, 0.4, 0.2, 0.1, p=0.8),
        Grayscale(p=0.2),
        GaussianBlur(p=blur),
        *((Solarize(p=solarize),) if solarize else ()),
        HorizontalFlip(),
    )


PRESETS: dict[str, tuple[View, View]] = {
    "v1": (_MOCO_V1, _MOCO_V1),
    "v2": (_MOCO_V2, _MOCO_V2),
    "v3": (_moco_v3(blur=1.0, solarize=0.0), _moco_v3(blur=0.1, solarize=0.2)),
}
"""The (query view, key view) of each MoCo preset, as in the authors' code (`main_moco.py` of
facebookresearch/moco and moco-v3):

- `v1` (He et al. 2020, MoCo): RandomResizedCrop(scale 0.2-1), RandomGrayscale(p=0.2),
  ColorJitter(0.4, 0.4, 0.4, 0.4), RandomHorizontalFlip; grayscale comes first.
- `v2` (Chen et al. 2020, MoCo v2): crop as v1, RandomApply([ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
  RandomGrayscale(p=0.2), RandomApply([GaussianBlur(sigma 0.1-2)], p=0.5), RandomHorizontalFlip.
- `v3` (Chen, Xie, He 2021, MoCo v3; BYOL's asymmetric views): RandomResizedCrop(scale 0.08-1),
  RandomApply([ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8), RandomGrayscale(p=0.2), then blur p=1.0 on the
  first view; blur p=0.1 and RandomApply([Solarize], p=0.2) on the second; RandomHorizontalFlip last.
"""

CROP_FLIP: View = (ResizedCrop(scale=(0.2, 1.0)), HorizontalFlip())
"""Geometry only, for pretext tasks whose target is the image's colour (colorization)."""


def resolve_view(view: View, image_size: int, min_scale: float | None = None) -> View:
    """`view` as applied at `image_size`: blur left out below `MIN_BLUR_SIZE` pixels, and the crop's lower
    scale bound replaced by `min_scale` when given."""
    resolved = []
    for operation in view:
        if isinstance(operation, GaussianBlur) and (image_size < MIN_BLUR_SIZE or operation.p == 0):
            continue
        if isinstance(operation, ResizedCrop) and min_scale is not None:
            operation = replace(operation, scale=(min_scale, operation.scale[1]))
        resolved.append(operation)
    return tuple(resolved)


def preset_views(preset: str, image_size: int, min_scale: float | None = None) -> tuple[View, View]:
    """The (query view, key view) of the preset `preset` of `PRESETS`, resolved by `resolve_view`.

    Raises:
        ValueError: for an unknown preset.
    """
    if preset not in PRESETS:
        raise ValueError(f"augmentation must be one of {sorted(PRESETS)}, got {preset!r}")
    query, key = PRESETS[preset]
    return resolve_view(query, image_size, min_scale), resolve_view(key, image_size, min_scale)


def describe_preset(preset: str, image_size: int, min_scale: float | None = None) -> str:
    """One line for a model card: the preset, its crop scale and the operations its views apply at
    `image_size` (e.g. no blur on small images)."""
    query, key = preset_views(preset, image_size, min_scale)
    low, high = next(op for op in query if isinstance(op, ResizedCrop)).scale
    operations = dict.fromkeys(type(op).__name__ for op in (*query, *key) if not isinstance(op, ResizedCrop))
    return f"MoCo {preset} preset: crops of scale [{low:g}, {high:g}], then {', '.join(operations)}"

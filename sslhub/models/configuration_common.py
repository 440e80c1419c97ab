"""Settings and checks shared by every sslhub config."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Sequence

from transformers import PretrainedConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def check_choice(field: str, value, allowed: Sequence) -> None:
    """Raise a `ValueError` naming `field` and the allowed values unless `value` is one of them."""
    if value not in allowed:
        raise ValueError(f"{field} must be one of {list(allowed)}, got {value!r}")


def check_positive(field: str, value) -> None:
    """Raise a `ValueError` naming `field` unless `value` is a number > 0."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{field} must be a positive number, got {value!r}")


def default_crop_pct(image_size: int) -> float:
    """The centre-crop fraction of evaluation: 1.0 for small (CIFAR-sized) images, else 0.875."""
    return 1.0 if image_size <= 64 else 0.875


class SSLHubConfig(PretrainedConfig):
    """Base of the sslhub configs: the input settings every model is trained with.

    They become the image processor saved next to the weights. Fields:
        image_size: side of the square input the model was trained on.
        image_mean / image_std: per-channel normalization applied to RGB values in [0, 1].
        crop_pct: at inference the image is resized to `image_size / crop_pct`, then centre-cropped;
            unset: 0.875 (timm's and the papers' ImageNet evaluation), 1.0 for images of 64 pixels or less
            (CIFAR-sized images are not cropped).
    """

    image_size: int = 224
    image_mean: list[float] | tuple[float, ...] = IMAGENET_MEAN
    image_std: list[float] | tuple[float, ...] = IMAGENET_STD
    crop_pct: float | None = None

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        """`PretrainedConfig.from_dict`, refusing the config of another model type.

        transformers only warns when, say, `StudentModel.from_pretrained` is given a MoCo folder, then builds a
        default model and loads none of the weights (or fails on the first setting the other family lacks).
        """
        model_type = config_dict.get("model_type")
        if model_type and getattr(cls, "model_type", "") and model_type != cls.model_type:
            raise ValueError(
                f"this config is of a {model_type!r} model, not of a {cls.model_type!r} one ({cls.__name__}): "
                "load the folder with the classes of its own family, or with AutoModel / "
                "AutoModelForPreTraining / AutoModelForImageClassification, which choose them from model_type"
            )
        return super().from_dict(config_dict, **kwargs)

    def __post_init__(self, **kwargs):
        # transformers keeps unknown keyword arguments as attributes; one a letter or two from a setting is a
        # typo (`temprature=0.1`) that would silently leave the setting at its default.
        fields = [field.name for field in dataclasses.fields(self)]
        for name in kwargs:
            close = difflib.get_close_matches(name, fields, n=1, cutoff=0.8)
            if close and name not in fields:
                raise ValueError(
                    f"unknown setting {name!r} for {type(self).__name__}; did you mean {close[0]!r}?"
                )
        super().__post_init__(**kwargs)
        check_positive("image_size", self.image_size)
        if self.crop_pct is None:
            self.crop_pct = default_crop_pct(self.image_size)
        if not 0 < self.crop_pct <= 1:
            raise ValueError(f"crop_pct must be in (0, 1], got {self.crop_pct}")
        for name in ("image_mean", "image_std"):
            value = getattr(self, name)
            if len(value) != 3:
                raise ValueError(f"{name} must have 3 values (R, G, B), got {value!r}")
            setattr(self, name, [float(v) for v in value])
        if not all(std > 0 for std in self.image_std):
            raise ValueError(f"image_std must be positive (it divides the pixels), got {self.image_std}")

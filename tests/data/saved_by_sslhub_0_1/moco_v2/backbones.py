"""The one seam between sslhub and timm: every backbone is built here."""

from __future__ import annotations

from typing import Any

import timm
import torch
from torch import nn


def check_backbone_name(name: str) -> None:
    """Raise a `ValueError` unless `name` is a model timm can build.

    Args:
        name: a timm model name, e.g. `"resnet50"` or `"vit_small_patch16_224"`.
    """
    if not isinstance(name, str) or not timm.is_model(name):
        close = timm.list_models(f"*{name}*")[:8] if isinstance(name, str) else []
        hint = f" Close matches: {close}." if close else " See `timm.list_models()` for the allowed names."
        raise ValueError(f"backbone={name!r} is not a timm model name.{hint}")


def is_resnet_like(backbone: nn.Module) -> bool:
    """Whether `backbone` has the torchvision/timm ResNet stem (`conv1`, `bn1`, `maxpool`)."""
    return all(hasattr(backbone, attr) for attr in ("conv1", "bn1", "maxpool"))


def create_backbone(
    name: str,
    backbone_kwargs: dict[str, Any] | None = None,
    small_input_stem: bool = False,
    pretrained: bool = False,
) -> nn.Module:
    """Build a headless timm backbone whose `forward` returns pooled features of size `num_features`.

    Args:
        name: timm model name (any CNN or ViT timm knows).
        backbone_kwargs: extra keyword arguments for `timm.create_model` (e.g. `drop_path_rate`).
        small_input_stem: for ResNets on 32x32 inputs (CIFAR): a 3x3 stride-1 stem convolution and no
            max-pool, as in the MoCo CIFAR-10 demo and SimCLR's CIFAR experiments.
        pretrained: load timm's pretrained weights (needs the Hub or a filled cache).

    Returns:
        The timm model with `num_classes=0`.
    """
    check_backbone_name(name)
    kwargs = dict(backbone_kwargs or {})
    kwargs["num_classes"] = 0
    backbone = timm.create_model(name, pretrained=pretrained, **kwargs)
    if small_input_stem:
        if not is_resnet_like(backbone):
            raise ValueError(
                f"small_input_stem=True needs a ResNet-style backbone (conv1/bn1/maxpool); {name!r} is not one."
            )
        # A 7x7 stride-2 stem followed by a max-pool leaves a 32x32 image 8x8 before the first stage.
        stem_width = backbone.bn1.num_features
        first_conv = backbone.conv1[0] if isinstance(backbone.conv1, nn.Sequential) else backbone.conv1
        backbone.conv1 = nn.Conv2d(
            first_conv.in_channels, stem_width, kernel_size=3, stride=1, padding=1, bias=False
        )
        backbone.maxpool = nn.Identity()
    return backbone


def backbone_features(backbone: nn.Module, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a timm backbone and return `(feature_map_or_tokens, pooled)` through timm's public interface."""
    features = backbone.forward_features(pixel_values)
    pooled = backbone.forward_head(features, pre_logits=True)
    return features, pooled

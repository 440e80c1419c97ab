"""MoCo v3 checkpoints (facebookresearch/moco-v3): the base encoder `base_encoder`, a ResNet or a ViT.

The head (`fc.*` for a ResNet, `head.*` for a ViT: a BN MLP) becomes the projector and `predictor.*`
sets the predictor's settings; the momentum encoder is left out. The authors' ViTs are timm
`VisionTransformer`s, so their keys are timm's; the conv-stem variants have no timm twin.
"""

from __future__ import annotations

import math

import torch

from ..models.configuration_moco import MoCoConfig
from .convert import (
    CheckpointError,
    backbone_settings,
    encoder_weights,
    mlp_spec,
    projector_settings,
    resnet_backbone,
)

_PREFIX = "base_encoder."
# MoCo v3's ViTs (vits.py): vit_small has 12 heads, not timm's 6.
_MOCO_V3_VITS = {
    "vit_small": ("vit_small_patch16_224", {"num_heads": 12}),
    "vit_base": ("vit_base_patch16_224", {}),
}


def _vit_backbone(
    state_dict: dict[str, torch.Tensor], prefix: str, arch: str | None, backbone: str | None = None
) -> tuple[str, dict]:
    """The timm name and arguments of a MoCo v3 ViT (input and patch size read from the weights)."""
    embed_dim = state_dict[f"{prefix}cls_token"].shape[-1]
    patch_size = state_dict[f"{prefix}patch_embed.proj.weight"].shape[-1]
    grid = math.isqrt(state_dict[f"{prefix}pos_embed"].shape[1] - 1)
    sizes = {"img_size": grid * patch_size, "patch_size": patch_size}
    if backbone:
        return backbone, sizes
    key = arch if arch in _MOCO_V3_VITS else {384: "vit_small", 768: "vit_base"}.get(embed_dim)
    if key is None:
        raise CheckpointError(f"cannot tell which ViT has width {embed_dim} (arch={arch!r}): pass --backbone")
    name, kwargs = _MOCO_V3_VITS[key]
    return name, {**kwargs, **sizes}


def moco_v3_config(
    state_dict: dict[str, torch.Tensor],
    layout: str,
    *,
    arch: str | None = None,
    backbone: str | None = None,
    backbone_kwargs: dict | None = None,
    image_size: int | None = None,
) -> tuple[MoCoConfig, dict[str, torch.Tensor]]:
    """The `MoCoConfig` (v3 preset) and the `MoCoModel` weights of a MoCo v3 state dict.

    Args:
        state_dict: the checkpoint's state dict, `module.` prefix removed.
        layout: `"moco_v3_resnet"` or `"moco_v3_vit"` (see `detect_layout`).
        arch: the checkpoint's `arch` entry: a torchvision ResNet name, or `vit_small` / `vit_base`.
        backbone: a timm name overriding the derived one.
        backbone_kwargs: extra `timm.create_model` arguments (merged over the derived ones).
        image_size: the input size for the image processor (the ViT's `img_size` by default).
    """
    if layout == "moco_v3_vit":
        head = f"{_PREFIX}head."
        name, derived_kwargs = _vit_backbone(state_dict, _PREFIX, arch, backbone)
        small_stem = False
    else:
        head = f"{_PREFIX}fc."
        (name, small_stem), derived_kwargs = resnet_backbone(state_dict, _PREFIX, arch, backbone), {}
    common = backbone_settings(backbone or name, derived_kwargs, small_stem, backbone_kwargs, image_size)
    settings = projector_settings(mlp_spec(state_dict, head))
    predictor = mlp_spec(state_dict, "predictor.")
    if predictor:
        settings |= dict(
            predictor_num_layers=predictor["num_layers"],
            predictor_hidden_size=predictor["hidden_size"] or predictor["out_features"],
            predictor_last_batch_norm=predictor["last_batch_norm"],
        )
    return MoCoConfig.v3(**common, **settings), encoder_weights(state_dict, _PREFIX, head)

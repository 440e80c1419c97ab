"""The one seam between sslhub and timm: every backbone is built here."""

from __future__ import annotations

import inspect
from typing import Any

import timm
import torch
from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed
from torch import nn

POSITION_EMBEDDINGS = ("learned", "sincos")


def check_backbone_name(name: str) -> None:
    """Raise a `ValueError` unless `name` is a model timm can build.

    Args:
        name: a timm model name, e.g. `"resnet50"` or `"vit_small_patch16_224"`.
    """
    if not isinstance(name, str) or not timm.is_model(name):
        close = timm.list_models(f"*{name}*")[:8] if isinstance(name, str) else []
        hint = f" Close matches: {close}." if close else " See `timm.list_models()` for the allowed names."
        raise ValueError(f"backbone={name!r} is not a timm model name.{hint}")


def is_vit_name(name: str) -> bool:
    """Whether a timm model name is a Vision Transformer (ViT, DeiT): the MoCo v3 presets differ for them."""
    return name.startswith(("vit", "deit"))


def is_resnet_like(backbone: nn.Module) -> bool:
    """Whether `backbone` has the torchvision/timm ResNet stem (`conv1`, `bn1`, `maxpool`)."""
    return all(hasattr(backbone, attr) for attr in ("conv1", "bn1", "maxpool"))


def create_backbone(
    name: str,
    backbone_kwargs: dict[str, Any] | None = None,
    small_input_stem: bool = False,
    pretrained: bool = False,
    position_embedding: str = "learned",
    keep_classifier: bool = False,
) -> nn.Module:
    """Build a headless timm backbone whose `forward` returns pooled features of size `num_features`.

    Args:
        name: timm model name (any CNN or ViT timm knows).
        backbone_kwargs: extra keyword arguments for `timm.create_model` (e.g. `drop_path_rate`).
        small_input_stem: for ResNets on 32x32 inputs (CIFAR): a 3x3 stride-1 stem convolution and no
            max-pool, as in the MoCo CIFAR-10 demo and SimCLR's CIFAR experiments.
        pretrained: load timm's pretrained weights (needs the Hub or a filled cache).
        position_embedding: for ViTs, `"learned"` (timm's trained `pos_embed`) or `"sincos"` (MoCo v3's fixed
            2-D sin-cos table, see `fix_sincos_position_embedding`).
        keep_classifier: keep timm's classifier (a teacher whose logits are distilled); `forward` then
            returns logits.

    Returns:
        The timm model with `num_classes=0` (or its own classifier with `keep_classifier`).
    """
    check_backbone_name(name)
    kwargs = dict(backbone_kwargs or {})
    if not keep_classifier:
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
    if position_embedding == "sincos":
        fix_sincos_position_embedding(backbone)
    elif position_embedding != "learned":
        raise ValueError(
            f"position_embedding must be one of {list(POSITION_EMBEDDINGS)}, got {position_embedding!r}"
        )
    return backbone


def sincos_position_embedding(
    grid_size: tuple[int, int], dim: int, num_prefix_tokens: int = 1, temperature: float = 10000.0
) -> torch.Tensor:
    """The fixed 2-D sin-cos position embedding of MoCo v3 (Chen, Xie, He 2021, Sec. 4; the authors' `vits.py`).

    For the patch at row r and column c, with `omega_d = 1 / temperature^(d / (D/4))` for d < D/4, the
    embedding is `[sin(r omega), cos(r omega), sin(c omega), cos(c omega)]` (D values); prefix tokens (the
    class token) get zeros. On the square grids the authors use, this is their table exactly.

    Args:
        grid_size: (H, W) patches; tokens are numbered row by row, as timm's patch embedding flattens them.
        dim: embedding width D, a multiple of 4.
        num_prefix_tokens: leading positions set to zero (class / register tokens).
        temperature: the frequency base (10000).

    Returns:
        (1, num_prefix_tokens + H * W, D) float32.
    """
    if dim % 4:
        raise ValueError(f"a 2-D sin-cos position embedding needs a width divisible by 4, got {dim}")
    patches = build_sincos2d_pos_embed(
        list(grid_size), dim, temperature, interleave_sin_cos=True
    )  # (H * W, D)
    prefix = torch.zeros(num_prefix_tokens, dim, dtype=patches.dtype, device=patches.device)
    return torch.cat([prefix, patches])[None]


def _sincos_table_for(backbone: nn.Module) -> torch.Tensor:
    """`sincos_position_embedding` with the grid, width and prefix tokens of a timm ViT."""
    pos_embed = getattr(backbone, "pos_embed", None)
    grid_size = getattr(getattr(backbone, "patch_embed", None), "grid_size", None)
    if not isinstance(pos_embed, torch.Tensor) or grid_size is None:
        raise ValueError(
            f"position_embedding='sincos' needs a ViT backbone with a `pos_embed` and a patch grid; "
            f"{type(backbone).__name__} has none"
        )
    num_prefix_tokens = 0 if getattr(backbone, "no_embed_class", False) else backbone.num_prefix_tokens
    table = sincos_position_embedding(tuple(grid_size), pos_embed.shape[-1], num_prefix_tokens)
    if table.shape != pos_embed.shape:
        raise ValueError(
            f"the sin-cos table {tuple(table.shape)} does not fit pos_embed {tuple(pos_embed.shape)}"
        )
    return table.to(device=pos_embed.device, dtype=pos_embed.dtype)


def fix_sincos_position_embedding(backbone: nn.Module) -> None:
    """Replace a timm ViT's trained `pos_embed` with MoCo v3's fixed sin-cos table, as a buffer.

    A buffer rather than a frozen parameter: it never requires grad and is never in `parameters()` (so in
    no optimizer, no EMA), whatever loads it (`from_pretrained` rebuilds loaded parameters with
    `requires_grad=True`). The state-dict key stays `pos_embed`, so timm still loads the stripped backbone.
    """
    table = _sincos_table_for(backbone)
    del backbone.pos_embed
    backbone.register_buffer("pos_embed", table)


def has_fixed_position_embedding(module: nn.Module) -> bool:
    """Whether `module` is a backbone whose `pos_embed` was fixed by `fix_sincos_position_embedding`."""
    return "pos_embed" in module._buffers


@torch.no_grad()
def reset_sincos_position_embedding(backbone: nn.Module) -> None:
    """Refill a fixed `pos_embed` buffer with the sin-cos table (e.g. when a checkpoint did not hold it)."""
    backbone.pos_embed.copy_(_sincos_table_for(backbone))


def backbone_features(
    backbone: nn.Module, pixel_values: torch.Tensor, output_hidden_states: bool = False
) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...] | None]:
    """Run a timm backbone once through its public interface: `(features, pooled, hidden_states)`.

    `features` is the output of `forward_features`: the last feature map (N, C, h, w) or the tokens
    (N, L, C); `pooled` is `forward_head(features, pre_logits=True)`. With `output_hidden_states`, the same
    single pass goes through `forward_intermediates` instead (see `backbone_intermediates`); otherwise
    `hidden_states` is None.
    """
    if output_hidden_states:
        features, hidden_states = backbone_intermediates(backbone, pixel_values)
    else:
        features, hidden_states = backbone.forward_features(pixel_values), None
    return features, backbone.forward_head(features, pre_logits=True), hidden_states


def backbone_intermediates(
    backbone: nn.Module, pixel_values: torch.Tensor
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """`(features, hidden_states)` from one pass of timm's `forward_intermediates(x, indices=None)`.

    `features` equals `forward_features(x)`; `hidden_states` holds every intermediate timm returns: for
    CNNs the stem and each stage, (N, C_i, h_i, w_i) (a small-input ResNet stem included, since timm's
    ResNet runs whatever `conv1` and `maxpool` hold); for ViTs each block's tokens with the class/register
    tokens in front, (N, L, C), laid out as `features` (before the final norm). A backbone without
    `forward_intermediates` gives `(features,)`, the last feature map alone.
    """
    forward_intermediates = getattr(backbone, "forward_intermediates", None)
    if forward_intermediates is not None:
        options = {}
        if "return_prefix_tokens" in inspect.signature(forward_intermediates).parameters:
            options = dict(output_fmt="NLC", return_prefix_tokens=True)  # ViT-like: whole token sequences
        try:
            features, intermediates = forward_intermediates(pixel_values, indices=None, **options)
        except NotImplementedError:
            pass
        else:
            hidden_states = tuple(
                torch.cat([item[1], item[0]], dim=1) if isinstance(item, tuple) else item  # (prefix, patches)
                for item in intermediates
            )
            return features, hidden_states
    features = backbone.forward_features(pixel_values)
    return features, (features,)

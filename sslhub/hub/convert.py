"""Checkpoint converters, shared part: reading a checkpoint, naming its layout, dispatching to the family.

Each official checkpoint family has its own module, which maps its state dict to a `MoCoConfig` and the
`MoCoModel` weights: `convert_moco` (MoCo v1/v2, `encoder_q`) and `convert_moco_v3` (MoCo v3,
`base_encoder`, ResNet or ViT). Here, every conversion is checked the same way: the weights must fill the
`MoCoModel` built from the derived config exactly, with no key missing, left over or of another shape.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..models.configuration_moco import MoCoConfig
from ..models.modeling_moco import MoCoModel
from .cards import write_model_card
from .remote_code import add_remote_code

_RESNETS = {  # (block type, blocks per stage) -> name, shared by torchvision and timm
    ("basic", (2, 2, 2, 2)): "resnet18",
    ("basic", (3, 4, 6, 3)): "resnet34",
    ("bottleneck", (3, 4, 6, 3)): "resnet50",
    ("bottleneck", (3, 4, 23, 3)): "resnet101",
    ("bottleneck", (3, 8, 36, 3)): "resnet152",
}
_EXPECTED_LAYOUTS = (
    "expected an official MoCo checkpoint: a dict whose 'state_dict' (or the dict itself) holds "
    "`[module.]encoder_q.*` tensors (MoCo v1/v2, torchvision ResNet keys, `fc` or `fc.0`/`fc.2` head) or "
    "`[module.]base_encoder.*` tensors (MoCo v3, ResNet or ViT)"
)


class CheckpointError(ValueError):
    """A checkpoint file cannot be read or has a layout the converters do not know."""


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint's state dict and its other top-level entries (`arch`, `epoch`, ...).

    Pickles are read with `torch.load(weights_only=True)`; `.safetensors` files are read as state dicts.
    The DDP `module.` prefix is removed.

    Args:
        path: the checkpoint file.

    Raises:
        CheckpointError: the file cannot be read as a checkpoint, or holds no state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        checkpoint: Any = load_file(str(path))
    else:
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # pickle, zip and torch raise unrelated types for non-checkpoints
            raise CheckpointError(
                f"{path} is not a PyTorch checkpoint that torch.load(weights_only=True) can read "
                f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); {_EXPECTED_LAYOUTS}"
            ) from error
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path} holds a {type(checkpoint).__name__}; {_EXPECTED_LAYOUTS}")
    meta = {k: v for k, v in checkpoint.items() if not isinstance(v, (dict, torch.Tensor))}
    state_dict = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state_dict, dict) or not any(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CheckpointError(f"{path} holds no tensors under 'state_dict'; {_EXPECTED_LAYOUTS}")
    state_dict = {k.removeprefix("module."): v for k, v in state_dict.items() if isinstance(v, torch.Tensor)}
    return state_dict, meta


def detect_layout(state_dict: dict[str, torch.Tensor]) -> str:
    """Name the layout of a (prefix-stripped) state dict: `moco_v1`, `moco_v2`, `moco_v3_resnet`, `moco_v3_vit`.

    Raises:
        CheckpointError: for any other layout, naming the expected ones.
    """
    if "encoder_q.conv1.weight" in state_dict:
        if "encoder_q.fc.weight" in state_dict:
            return "moco_v1"
        return "moco_v2"
    if "base_encoder.conv1.weight" in state_dict:
        return "moco_v3_resnet"
    if "base_encoder.patch_embed.proj.0.weight" in state_dict:
        raise CheckpointError(
            "this MoCo v3 ViT has a convolutional stem (vit_conv_small/vit_conv_base), which no timm model "
            "reproduces: it cannot be converted"
        )
    if "base_encoder.patch_embed.proj.weight" in state_dict:
        return "moco_v3_vit"
    sample = ", ".join(list(state_dict)[:5])
    raise CheckpointError(f"unknown checkpoint layout (first keys: {sample}); {_EXPECTED_LAYOUTS}")


def resnet_backbone(
    state_dict: dict[str, torch.Tensor], prefix: str, arch: str | None, backbone: str | None = None
) -> tuple[str, bool]:
    """The timm (= torchvision) name of the ResNet stored under `prefix`, and whether its stem is small.

    The name is `backbone` when given, else `arch`, else read from the block type and the blocks per stage;
    a small stem is the CIFAR-style 3x3 first convolution (`small_input_stem`).

    Raises:
        CheckpointError: without `backbone`, `arch` is not a ResNet, or the block type and depths match no
            known ResNet.
    """
    small_stem = state_dict[f"{prefix}conv1.weight"].shape[-1] == 3
    if backbone:  # the user's name wins: it may be a ResNet of a depth no table lists
        return backbone, small_stem
    if arch:
        if not arch.startswith(("resnet", "wide_resnet", "resnext")):
            raise CheckpointError(f"arch={arch!r} is not a ResNet; pass --backbone with the timm name")
        return arch, small_stem
    block = "bottleneck" if f"{prefix}layer1.0.conv3.weight" in state_dict else "basic"
    depths = tuple(
        len({k[len(prefix) :].split(".")[1] for k in state_dict if k.startswith(f"{prefix}layer{stage}.")})
        for stage in range(1, 5)
    )
    if (block, depths) not in _RESNETS:
        raise CheckpointError(
            f"cannot tell which ResNet has {block} blocks {depths}: pass --arch or --backbone"
        )
    return _RESNETS[(block, depths)], small_stem


def mlp_spec(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, Any] | None:
    """The `MLPHead` settings of an `nn.Sequential` MLP stored under `prefix` (None if absent)."""
    indices = sorted(
        {int(m.group(1)) for k in state_dict if (m := re.match(rf"{re.escape(prefix)}(\d+)\.", k))}
    )
    if not indices:
        return None
    linear = [i for i in indices if state_dict.get(f"{prefix}{i}.weight", torch.empty(0)).ndim == 2]
    norms = [i for i in indices if f"{prefix}{i}.running_mean" in state_dict]
    return dict(
        num_layers=len(linear),
        hidden_size=state_dict[f"{prefix}{linear[0]}.weight"].shape[0] if len(linear) > 1 else None,
        out_features=state_dict[f"{prefix}{linear[-1]}.weight"].shape[0],
        batch_norm=any(i < linear[-1] for i in norms),
        last_batch_norm=bool(norms) and norms[-1] > linear[-1],
    )


def projector_settings(spec: dict[str, Any] | None) -> dict[str, Any]:
    """The `MoCoConfig` projector settings of an MLP head read by `mlp_spec` (none when it is absent)."""
    if not spec:
        return dict(projector_num_layers=0)
    return dict(
        projector_num_layers=spec["num_layers"],
        projector_hidden_size=spec["hidden_size"],
        projection_dim=spec["out_features"],
        projector_batch_norm=spec["batch_norm"],
        projector_last_batch_norm=spec["last_batch_norm"],
    )


def backbone_settings(
    name: str,
    derived_kwargs: dict,
    small_stem: bool,
    backbone_kwargs: dict | None,
    image_size: int | None,
) -> dict[str, Any]:
    """The `MoCoConfig` backbone settings: the user's `backbone_kwargs` over the derived ones, and the
    image size (given, else the ViT's `img_size`, else 32 for a small-stem ResNet and 224 otherwise)."""
    kwargs = {**derived_kwargs, **(backbone_kwargs or {})} or None
    image_size = image_size or (kwargs or {}).get("img_size") or (32 if small_stem else 224)
    return dict(backbone=name, backbone_kwargs=kwargs, small_input_stem=small_stem, image_size=image_size)


def encoder_weights(state_dict: dict[str, torch.Tensor], prefix: str, head: str) -> dict[str, torch.Tensor]:
    """The `MoCoModel` weights of the encoder under `prefix`: its head (`head`) becomes `projector.*`, the rest
    `backbone.*`; keys outside `prefix` (key encoder, queue, predictor) are left out."""
    weights = {}
    for key, value in state_dict.items():
        if key.startswith(head):
            weights["projector." + key[len(head) :]] = value
        elif key.startswith(prefix):
            weights["backbone." + key[len(prefix) :]] = value
    return weights


def _load_encoder(config: MoCoConfig, weights: dict[str, torch.Tensor], layout: str) -> MoCoModel:
    """The `MoCoModel` of `config` holding exactly `weights`.

    Raises:
        CheckpointError: a key is missing, left over or of another shape than the model's.
    """
    with torch.device("meta"):  # no random init: every tensor comes from the checkpoint (checked below)
        model = MoCoModel(config)
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False, assign=True)
        problem = f"missing {missing[:8]}, unexpected {unexpected[:8]}" if missing or unexpected else None
    except RuntimeError as error:  # shape mismatches
        problem = str(error).splitlines()[-1].strip()
    if problem:
        raise CheckpointError(
            f"the {layout} checkpoint does not fit {config.backbone} "
            f"(backbone_kwargs={config.backbone_kwargs}): {problem}; pass the right --arch / --backbone / "
            "--backbone-kwargs"
        )
    return model.eval()


def moco_checkpoint_to_model(
    state_dict: dict[str, torch.Tensor],
    *,
    arch: str | None = None,
    backbone: str | None = None,
    backbone_kwargs: dict | None = None,
    image_size: int | None = None,
) -> MoCoModel:
    """Build the `MoCoModel` (query / base encoder and projector) held by an official MoCo state dict.

    Torchvision ResNet keys are timm's (minus `fc`); the authors' MoCo v3 ViT keys are timm's `vit_*`
    keys (minus `head`). The head becomes the projector: v1 `fc` (linear), v2 `fc.0`/`fc.2` (MLP),
    v3 `fc.*` / `head.*` (BN MLP). Loading is strict, so any key left over is an error.

    Args:
        state_dict: the checkpoint's state dict, `module.` prefix removed (see `read_checkpoint`).
        arch: the checkpoint's `arch` entry (torchvision ResNet name, or `vit_small` / `vit_base`).
        backbone: a timm name overriding the one derived from `arch` and the keys.
        backbone_kwargs: extra `timm.create_model` arguments (merged over the derived ones).
        image_size: the input size for the image processor (224, or 32 for a small-stem ResNet).

    Raises:
        CheckpointError: the layout is unknown, or the weights do not fit the derived model.
    """
    # The family modules build on the helpers above, so they are imported here rather than at the top.
    from .convert_moco import moco_v1_v2_config
    from .convert_moco_v3 import moco_v3_config

    layout = detect_layout(state_dict)
    family = moco_v1_v2_config if layout in ("moco_v1", "moco_v2") else moco_v3_config
    config, weights = family(
        state_dict,
        layout,
        arch=arch,
        backbone=backbone,
        backbone_kwargs=backbone_kwargs,
        image_size=image_size,
    )
    return _load_encoder(config, weights, layout)


def convert_checkpoint(
    checkpoint: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    arch: str | None = None,
    backbone: str | None = None,
    backbone_kwargs: dict | None = None,
    image_size: int | None = None,
    model_name: str | None = None,
    datasets: Sequence[str] = ("ILSVRC/imagenet-1k",),
    source_url: str | None = None,
    eval_results: Sequence[dict] = (),
    reproduce_command: str | None = None,
    license: str = "apache-2.0",
) -> Path:
    """Convert an official MoCo v1/v2/v3 checkpoint into an sslhub folder with remote code and a card.

    Args:
        checkpoint: the `.pth.tar` file (or a `.safetensors` state dict in the same layout).
        output_dir: the sslhub folder to write (`MoCoModel`).
        arch: see `moco_checkpoint_to_model`; the checkpoint's own `arch` entry by default.
        backbone: see `moco_checkpoint_to_model`.
        backbone_kwargs: see `moco_checkpoint_to_model`.
        image_size: see `moco_checkpoint_to_model`.
        model_name: the card title; the output folder name by default.
        datasets: the training data for the card (ImageNet for the official checkpoints).
        source_url: where the checkpoint was downloaded from, linked from the card.
        eval_results: results the checkpoint's source reports, for the card's `model-index` (the
            `update_card_eval_results` format; `source_name` / `source_url` attribute them).
        reproduce_command: the card's command; `sslhub convert FILE OUTPUT_DIR ...` by default.
        license: the license of the weights (the authors' MoCo checkpoints are `cc-by-nc-4.0`).

    Returns:
        `output_dir`.

    Raises:
        CheckpointError: the file is not a checkpoint of a known layout, or does not fit the derived model.
    """
    state_dict, meta = read_checkpoint(checkpoint)
    arch = arch or meta.get("arch")
    model = moco_checkpoint_to_model(
        state_dict, arch=arch, backbone=backbone, backbone_kwargs=backbone_kwargs, image_size=image_size
    )
    output_dir = Path(output_dir)
    model.save_pretrained(output_dir)
    add_remote_code(output_dir)
    version = model.config.version
    command = reproduce_command or f"sslhub convert {Path(checkpoint).name} {output_dir.name}"
    for flag, value in (
        ("--arch", arch if arch != meta.get("arch") else None),
        ("--backbone", backbone),
        ("--image-size", image_size),
    ):
        if value:
            command += f" {flag} {value}"
    if backbone_kwargs:
        command += f" --backbone-kwargs '{json.dumps(backbone_kwargs)}'"
    source = f"[{Path(checkpoint).name}]({source_url})" if source_url else Path(checkpoint).name
    summary = {"source checkpoint": source, "source arch": arch or "inferred from the keys"}
    if meta.get("epoch") is not None:
        summary["epochs"] = meta["epoch"]
    summary["converted to"] = (
        f"MoCoModel ({model.config.backbone}, projector {model.config.projector_num_layers} layer(s))"
    )
    write_model_card(
        output_dir,
        model_name=model_name or output_dir.name,
        family=f"MoCo {version}",
        paper=f"moco-{version}",
        datasets=datasets,
        reproduce_command=command,
        training_summary=summary,
        eval_results=eval_results,
        license=license,
        limitations=(
            "Converted from the authors' checkpoint: the weights are theirs, unchanged; the image processor "
            "assumes ImageNet normalization and a 0.875 centre crop, as in the authors' linear evaluation. "
            "Settings not stored in the checkpoint (temperature, momentum) are the paper's defaults and "
            "matter only to continue pre-training."
            + (
                " The accuracies under Evaluation are the ones the checkpoint's source reports, not measured "
                "by sslhub on these converted weights."
                if eval_results
                else ""
            )
        ),
    )
    return output_dir

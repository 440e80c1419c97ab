"""timm export: a model's backbone alone, in timm's Hub format (`config.json`, `model.safetensors`, a card).

The exported folder loads with `timm.create_model("hf-hub:...", pretrained=True)` and with transformers'
`TimmWrapperModel`, with neither sslhub nor remote code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from huggingface_hub import ModelCard, ModelCardData
from transformers import AutoModel

from .cards import REPO_ID_PLACEHOLDER
from .folders import read_json, resolve_model_dir


def _find_backbone(model: torch.nn.Module) -> torch.nn.Module:
    for candidate in (model, getattr(model, "base_model", None), getattr(model, "query_encoder", None)):
        backbone = getattr(candidate, "backbone", None)
        if isinstance(backbone, torch.nn.Module):
            return backbone
    raise ValueError(f"{type(model).__name__} has no `backbone` module to export")


def export_timm(
    model: torch.nn.Module | str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    license: str = "apache-2.0",
    source_repo_id: str | None = None,
    repo_id: str | None = None,
) -> Path:
    """Write a model's backbone in timm's Hub format: `config.json`, `model.safetensors` and a card.

    The folder loads with `timm.create_model("local-dir:PATH" or "hf-hub:org/name", pretrained=True)`
    (pooled features, `num_classes=0`) and with transformers' `AutoModel` (its `TimmWrapperModel`).
    `model_args.num_classes`, which timm 1.0.31 writes and which breaks the transformers wrapper, is
    removed.

    Args:
        model: an sslhub model, or a folder / Hub id of one.
        output_dir: where to write.
        license: license id written in `pretrained_cfg` and the card.
        source_repo_id: the Hub id of the full sslhub model, linked from the card.
        repo_id: the Hub id of this timm folder, for the card's snippet (default `f"{source_repo_id}-timm"`).

    Returns:
        `output_dir`.

    Raises:
        ValueError: for a backbone `timm.create_model` cannot rebuild (e.g. `small_input_stem=True`).
    """
    from timm.models import save_for_hf

    if not isinstance(model, torch.nn.Module):
        model = AutoModel.from_pretrained(resolve_model_dir(model))
    config = model.config
    if getattr(config, "small_input_stem", False):
        raise ValueError(
            "small_input_stem=True replaces timm's ResNet stem (3x3 stride-1 conv, no max-pool), which "
            "timm.create_model cannot rebuild: this backbone has no timm Hub format. Load it through "
            "transformers (`AutoModel.from_pretrained`, or `trust_remote_code=True` without sslhub) instead."
        )
    backbone = _find_backbone(model)
    try:
        in_channels = backbone.get_submodule(backbone.pretrained_cfg["first_conv"]).in_channels
    except (AttributeError, KeyError):
        in_channels = 3
    if in_channels != 3:
        raise ValueError(
            f"the backbone takes {in_channels}-channel inputs that the model computes from RGB itself (e.g. the "
            "L channel of colorization models): timm's RGB preprocessing cannot feed it, so it has no timm "
            "Hub format. Load the model through transformers instead."
        )
    output_dir = Path(output_dir)
    data_config = dict(
        input_size=(3, config.image_size, config.image_size),
        crop_pct=config.crop_pct,
        mean=tuple(config.image_mean),
        std=tuple(config.image_std),
        interpolation="bicubic",  # what the saved BitImageProcessor uses
    )
    was_training = backbone.training
    save_for_hf(
        backbone.eval(),
        output_dir,
        model_args=dict(getattr(config, "backbone_kwargs", None) or {}),
        safe_serialization=True,
        data_config=data_config,
    )
    backbone.train(was_training)
    config_file = output_dir / "config.json"
    timm_config = read_json(config_file)
    timm_config.get("model_args", {}).pop("num_classes", None)  # breaks transformers' TimmWrapper
    pretrained_cfg = timm_config["pretrained_cfg"]
    pretrained_cfg.pop("tag", None)  # the tag of timm's own weights, not these
    pretrained_cfg["license"] = license
    config_file.write_text(json.dumps(timm_config, indent=2) + "\n", encoding="utf-8")

    architecture = timm_config["architecture"]
    source = (
        f"[`{source_repo_id}`](https://huggingface.co/{source_repo_id})"
        if source_repo_id
        else "an sslhub model"
    )
    card = ModelCard.from_template(
        ModelCardData(
            library_name="timm",
            license=license,
            tags=["timm", "sslhub", "self-supervised-learning", "image-feature-extraction"],
            pipeline_tag="image-feature-extraction",
            base_model=source_repo_id,
        ),
        template_str=(
            "---\n{{ card_data }}\n---\n\n# {{ title }}\n\nThe `{{ architecture }}` backbone of {{ source }}, in "
            "timm's format (no classifier: the model returns pooled {{ num_features }}-d features).\n\n"
            '```python\nimport timm\n\nmodel = timm.create_model("hf-hub:{{ repo }}", pretrained=True).eval()\n'
            "config = timm.data.resolve_data_config({}, model=model)\n"
            "transform = timm.data.create_transform(**config)\n```\n"
        ),
        title=f"{architecture} backbone" + (f" of {source_repo_id}" if source_repo_id else ""),
        architecture=architecture,
        source=source,
        num_features=timm_config.get("num_features"),
        repo=repo_id or (f"{source_repo_id}-timm" if source_repo_id else REPO_ID_PLACEHOLDER),
    )
    card.save(output_dir / "README.md")
    return output_dir

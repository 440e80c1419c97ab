"""Model folders: resolving a path or Hub id to a local folder, reading its sslhub config, describing it.

The other `sslhub.hub` modules build on these: a model card, a push, a timm export and a converted
checkpoint all start from a saved model folder (`save_pretrained` output).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import EvalResult, ModelCard
from transformers import AutoConfig, AutoModel, PretrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

logger = logging.getLogger(__name__)

FAMILIES = {"sslhub_moco": "MoCo", "sslhub_student": "Distillation", "sslhub_colorization": "Colorization"}
"""The method family of each sslhub `model_type`, as model cards and `describe_model` name it."""


def resolve_model_dir(name_or_path: str | os.PathLike) -> Path:
    """A local folder for a model folder path or a Hub id (downloaded, or taken from the cache offline)."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(f"{path} is a file; expected a model folder (save_pretrained output) or a Hub id")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(name_or_path)))
    except Exception as error:  # the Hub client raises many types; the message is what matters here
        raise ValueError(
            f"{name_or_path!r} is neither a local folder nor a Hub id that can be resolved "
            f"({type(error).__name__}: {error})"
        ) from error


def read_json(path: Path) -> dict:
    """The content of a UTF-8 JSON file."""
    return json.loads(path.read_text(encoding="utf-8"))


def load_sslhub_config(folder: Path) -> PretrainedConfig:
    """The config of a saved sslhub model folder.

    Raises:
        ValueError: the folder has no `config.json`, or its `model_type` is not a registered sslhub one.
    """
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{folder} has no config.json: expected a folder written by `save_pretrained`")
    model_type = read_json(config_file).get("model_type")
    if model_type not in CONFIG_MAPPING or not str(model_type).startswith("sslhub_"):
        raise ValueError(
            f"{folder} is not an sslhub model folder (config.json has model_type={model_type!r})"
        )
    return AutoConfig.from_pretrained(folder)


def describe_model(name_or_path: str | os.PathLike) -> dict[str, Any]:
    """What a model folder or Hub id contains: type, class, backbone, sizes, input settings, files, results.

    Works for sslhub folders and for timm-format folders (`config.json` with `architecture`). The model
    is built on the meta device, so describing costs no weights in memory.
    """
    folder = resolve_model_dir(name_or_path)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{folder} has no config.json: not a transformers or timm model folder")
    config_dict = read_json(config_file)
    files = sorted(
        f"{p.name} ({p.stat().st_size / 1e6:.2f} MB)" if p.suffix == ".safetensors" else p.name
        for p in folder.iterdir()
        if p.is_file()
    )
    info: dict[str, Any] = {"path": str(folder), "files": files}
    if "architecture" in config_dict and "model_type" not in config_dict:
        cfg = config_dict.get("pretrained_cfg", {})
        info.update(
            format="timm",
            backbone=config_dict["architecture"],
            backbone_kwargs=config_dict.get("model_args"),
            embedding_size=config_dict.get("num_features"),
            image_size=list(cfg.get("input_size", []))[1:],
            image_mean=cfg.get("mean"),
            image_std=cfg.get("std"),
            crop_pct=cfg.get("crop_pct"),
        )
        return info
    config = load_sslhub_config(folder)
    info.update(
        format="transformers",
        model_type=config.model_type,
        family=FAMILIES.get(config.model_type, config.model_type),
        version=getattr(config, "version", None),
        model_class=(config.architectures or ["?"])[0],
        backbone=getattr(config, "backbone", None),
        backbone_kwargs=getattr(config, "backbone_kwargs", None),
        small_input_stem=getattr(config, "small_input_stem", False),
        image_size=config.image_size,
        image_mean=config.image_mean,
        image_std=config.image_std,
        crop_pct=config.crop_pct,
        remote_code="auto_map" in config_dict,
    )
    try:
        with torch.device("meta"):
            model = AutoModel.from_config(config).eval()
        info["num_parameters"] = sum(p.numel() for p in model.parameters())
        with torch.no_grad():
            output = model(torch.empty(1, 3, config.image_size, config.image_size, device="meta"))
        info["outputs"] = {
            key: tuple(value.shape[1:]) for key, value in output.items() if isinstance(value, torch.Tensor)
        }
        info["embedding_size"] = info["outputs"].get("pooler_output", (None,))[0]
    except Exception as error:  # describing must not fail because one family's forward is unusual on meta
        logger.warning("could not build %s on the meta device: %s", folder, error)
    readme = folder / "README.md"
    if readme.is_file():
        card = ModelCard.load(readme)
        info["eval_results"] = [_result_to_dict(r) for r in card.data.eval_results or []]
    return info


def _result_to_dict(result: EvalResult) -> dict:
    return {
        key: getattr(result, key)
        for key in (
            "task_type",
            "dataset_name",
            "dataset_type",
            "dataset_split",
            "metric_type",
            "metric_name",
        )
    } | {"metric_value": result.metric_value}

"""Sharing sslhub models: model cards, pushing to the Hub, timm export, remote code and checkpoint converters.

Everything here works on saved model folders (`save_pretrained` output), so it serves every
`SSLHubPreTrainedModel` family. A published folder loads four ways: `sslhub` + `AutoModel`,
`AutoModel(..., trust_remote_code=True)` without sslhub (see `add_remote_code`), timm for the backbone
(see `export_timm`) and `pipeline("image-feature-extraction")`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import socket
import sys
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import transformers
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub import constants as hf_constants
from transformers import AutoConfig, AutoModel
from transformers.dynamic_module_utils import get_relative_import_files
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from .models.configuration_moco import MoCoConfig
from .models.modeling_moco import MoCoModel

logger = logging.getLogger(__name__)

# Shipped inside the package (wheels too); `model_cards/TEMPLATE.md` in the repository links to it.
TEMPLATE_PATH = Path(__file__).resolve().parent / "templates" / "model_card.md"
REPO_ID_PLACEHOLDER = "<org>/<model-name>"
"""Written into a card whose Hub id is not known yet; `push_to_hub` replaces it with the real id."""

PAPERS = {
    "moco-v1": "[Momentum Contrast for Unsupervised Visual Representation Learning](https://arxiv.org/abs/1911.05722) (He et al., CVPR 2020)",
    "moco-v2": "[Improved Baselines with Momentum Contrastive Learning](https://arxiv.org/abs/2003.04297) (Chen et al., 2020)",
    "moco-v3": "[An Empirical Study of Training Self-Supervised Vision Transformers](https://arxiv.org/abs/2104.02057) (Chen, Xie, He, ICCV 2021)",
    "seed": "[SEED: Self-supervised Distillation For Visual Representation](https://arxiv.org/abs/2101.04731) (Fang et al., ICLR 2021)",
    "compress": "[CompRess: Self-Supervised Learning by Compressing Representations](https://arxiv.org/abs/2010.14713) (Koohpayegani et al., NeurIPS 2020)",
    "colorization": "[Colorful Image Colorization](https://arxiv.org/abs/1603.08511) (Zhang, Isola, Efros, ECCV 2016)",
}
"""Short keys accepted wherever a `paper` is asked for; any other string is used as written."""

FAMILIES = {"sslhub_moco": "MoCo", "sslhub_student": "Distillation", "sslhub_colorization": "Colorization"}

# Auto classes whose sslhub registrations are exported as remote code (`auto_map` in config.json).
_AUTO_CLASSES = ("AutoModel", "AutoModelForPreTraining", "AutoModelForImageClassification")
_UPLOAD_SUFFIXES = (".json", ".safetensors", ".md", ".png", ".jpg", ".jpeg", ".svg", ".txt", ".yaml")
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".tar", ".pkl", ".pickle", ".npy", ".npz")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class HubError(RuntimeError):
    """Pushing cannot proceed (no token, offline, Hub unreachable); the message says what to do."""


class CheckpointError(ValueError):
    """A checkpoint file cannot be read or has a layout the converters do not know."""


# --------------------------------------------------------------------------------------------------
# Model folders: resolving, describing, remote code
# --------------------------------------------------------------------------------------------------


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


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _load_sslhub_config(folder: Path):
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{folder} has no config.json: expected a folder written by `save_pretrained`")
    model_type = _read_json(config_file).get("model_type")
    if model_type not in CONFIG_MAPPING or not str(model_type).startswith("sslhub_"):
        raise ValueError(
            f"{folder} is not an sslhub model folder (config.json has model_type={model_type!r})"
        )
    return AutoConfig.from_pretrained(folder)


def remote_code_files(config) -> tuple[dict[str, Path], dict[str, str]]:
    """The source files and the `auto_map` that make a config's models loadable with remote code.

    Args:
        config: an sslhub config (or its class) registered with transformers' Auto classes.

    Returns:
        `(files, auto_map)`: file name -> source path of the configuration and modeling modules and
        everything they import with single-dot relative imports; Auto class name -> `module.Class`.
    """
    config_class = config if isinstance(config, type) else type(config)
    classes = {"AutoConfig": config_class}
    for auto_name in _AUTO_CLASSES:
        try:
            classes[auto_name] = getattr(transformers, auto_name)._model_mapping[config_class]
        except KeyError:
            continue
    files: dict[str, Path] = {}
    auto_map: dict[str, str] = {}
    for auto_name, cls in classes.items():
        module_file = Path(sys.modules[cls.__module__].__file__)
        auto_map[auto_name] = f"{module_file.stem}.{cls.__name__}"
        for file in [module_file, *map(Path, get_relative_import_files(str(module_file)))]:
            files[file.name] = file
    for name, file in files.items():
        for line in file.read_text(encoding="utf-8").splitlines():
            if re.match(r"\s*(from\s+sslhub\b|import\s+sslhub\b|from\s+\.\.)", line):
                raise ValueError(
                    f"{name} cannot be used as remote code: `{line.strip()}` needs the sslhub package; "
                    "model-side modules must import each other with `from .module import name`"
                )
    return files, auto_map


def add_remote_code(folder: str | os.PathLike) -> list[Path]:
    """Make a saved sslhub folder loadable with `trust_remote_code=True` where sslhub is not installed.

    Copies the configuration/modeling modules and their relative imports (flattened, as transformers
    expects) next to the weights and writes `auto_map` into `config.json`. With sslhub installed,
    `AutoModel.from_pretrained(folder)` keeps using the installed classes.

    Returns:
        The files written.
    """
    folder = Path(folder)
    config = _load_sslhub_config(folder)
    files, auto_map = remote_code_files(config)
    written = []
    for name, source in files.items():
        shutil.copyfile(source, folder / name)
        written.append(folder / name)
    config_file = folder / "config.json"
    config_dict = _read_json(config_file)
    config_dict["auto_map"] = auto_map
    config_file.write_text(json.dumps(config_dict, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return [*written, config_file]


def _build_on_meta(config) -> torch.nn.Module:
    with torch.device("meta"):
        return AutoModel.from_config(config)


def describe_model(name_or_path: str | os.PathLike) -> dict[str, Any]:
    """What a model folder or Hub id contains: type, class, backbone, sizes, input settings, files, results.

    Works for sslhub folders and for timm-format folders (`config.json` with `architecture`). The model
    is built on the meta device, so describing costs no weights in memory.
    """
    folder = resolve_model_dir(name_or_path)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{folder} has no config.json: not a transformers or timm model folder")
    config_dict = _read_json(config_file)
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
    config = _load_sslhub_config(folder)
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
        model = _build_on_meta(config).eval()
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


# --------------------------------------------------------------------------------------------------
# Model cards
# --------------------------------------------------------------------------------------------------

_RESULT_KEYS = {f.name for f in fields(EvalResult)}
_REQUIRED_RESULT_KEYS = ("task_type", "dataset_name", "dataset_type", "metric_type", "metric_value")


def _eval_result(result: dict | EvalResult) -> EvalResult:
    """Check one result dict of the `update_card_eval_results` contract and make it an `EvalResult`."""
    if isinstance(result, EvalResult):
        return result
    missing = [key for key in _REQUIRED_RESULT_KEYS if result.get(key) is None]
    unknown = sorted(set(result) - _RESULT_KEYS)
    if missing or unknown:
        raise ValueError(
            f"evaluation result {result!r}: missing keys {missing}, unknown keys {unknown}; expected "
            f"{list(_REQUIRED_RESULT_KEYS)} plus optional dataset_split, metric_name, ..."
        )
    value = float(result["metric_value"])
    if result["metric_type"] == "accuracy" and not 0.0 <= value <= 1.0:
        raise ValueError(f"accuracy must be a fraction in [0, 1] (got {value}); divide percentages by 100")
    return EvalResult(**{**result, "metric_value": value})


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


def _result_key(result: EvalResult) -> tuple:
    return (
        result.dataset_type,
        result.dataset_name,
        result.dataset_split,
        result.metric_name or result.metric_type,
    )


def merge_eval_results(old: Iterable[EvalResult], new: Iterable[dict | EvalResult]) -> list[EvalResult]:
    """Results of `old` updated by `new`: a new result replaces one with the same dataset and metric name."""
    merged = {_result_key(r): r for r in old}
    for result in map(_eval_result, new):
        merged[_result_key(result)] = result
    return list(merged.values())


def _is_hub_id(name: str) -> bool:
    """`org/name` that is not a local path."""
    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+", name)) and not Path(name).exists()


def _eval_table(results: Sequence[EvalResult]) -> str:
    if not results:
        return "No evaluation results yet."
    rows = ["| Dataset | Split | Metric | Value |", "|---|---|---|---|"]
    for r in results:
        value = r.metric_value
        shown = f"{100 * value:.2f}%" if r.metric_type == "accuracy" else f"{value:.4g}"
        dataset = r.dataset_name
        if _is_hub_id(r.dataset_type):
            dataset = f"[{r.dataset_name}](https://huggingface.co/datasets/{r.dataset_type})"
        rows.append(f"| {dataset} | {r.dataset_split or ''} | {r.metric_name or r.metric_type} | {shown} |")
    return "\n".join(rows)


def _timm_section(timm_repo_id: str) -> str:
    return (
        "\nThe backbone alone, in timm's format, is published as "
        f"[`{timm_repo_id}`](https://huggingface.co/{timm_repo_id}):\n\n"
        "```python\nimport timm\n\n"
        f'backbone = timm.create_model("hf-hub:{timm_repo_id}", pretrained=True)  # pooled features\n```\n'
    )


def _replace_block(text: str, name: str, content: str) -> str | None:
    """Replace the text between `<!-- sslhub:NAME:start -->` and `<!-- sslhub:NAME:end -->`; None if absent."""
    start, end = f"<!-- sslhub:{name}:start -->", f"<!-- sslhub:{name}:end -->"
    i, j = text.find(start), text.find(end)
    if i < 0 or j < i:
        return None
    return f"{text[: i + len(start)]}\n{content}\n{text[j:]}"


def _paper_text(paper: str | None) -> str:
    return PAPERS.get(paper, paper) if paper else "n/a"


def _default_paper(config) -> str | None:
    if config.model_type == "sslhub_moco":
        return f"moco-{config.version}"
    return {"sslhub_colorization": "colorization"}.get(config.model_type)


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return str(value)


def write_model_card(
    folder: str | os.PathLike,
    *,
    model_name: str,
    family: str,
    paper: str | None,
    base_model: str | None = None,
    datasets: Sequence[str] = (),
    reproduce_command: str | None = None,
    training_summary: dict | None = None,
    eval_results: Sequence[dict | EvalResult] = (),
    limitations: str | None = None,
    license: str = "apache-2.0",
    repo_id: str | None = None,
    summary: str | None = None,
    template_path: str | os.PathLike | None = None,
) -> Path:
    """Write `README.md` (the Hub model card) of a saved model folder from `model_cards/TEMPLATE.md`.

    Args:
        folder: the model folder (`save_pretrained` output; its config fills the architecture facts).
        model_name: the card's title and `model-index` name.
        family: the method, e.g. `"MoCo v2"` or `"SEED distillation"`.
        paper: a key of `PAPERS` (e.g. `"moco-v2"`) or a citation / URL written as given.
        base_model: the teacher's Hub id for distilled students (`base_model` in the metadata).
        datasets: Hub ids of the training data (`datasets` in the metadata).
        reproduce_command: the exact shell command that produces this model.
        training_summary: settings shown in a table (dataset, epochs, batch, hardware, time, commit...).
        eval_results: dicts in the `update_card_eval_results` format (or `EvalResult`s).
        limitations: what the model is not good for; a generic paragraph when omitted.
        license: the license id.
        repo_id: the Hub id for the loading snippets; unknown ids are filled in by `push_to_hub`.
        summary: the opening paragraph; generated from the config when omitted.
        template_path: another Jinja template with the same variables.

    Returns:
        The path of the written `README.md`.
    """
    folder = Path(folder)
    info = describe_model(folder)
    results = merge_eval_results([], eval_results)
    tags = ["sslhub", "self-supervised-learning", "image-feature-extraction", "timm"]
    slug = re.sub(r"[^a-z0-9]+", "-", family.lower()).strip("-")
    tags += [t for t in dict.fromkeys([slug.split("-")[0], slug]) if t and t not in tags]
    card_data = ModelCardData(
        model_name=model_name,
        library_name="transformers",
        license=license,
        tags=tags,
        datasets=[d for d in datasets if _is_hub_id(d)] or None,  # local paths mean nothing on the Hub
        pipeline_tag="image-feature-extraction",
        base_model=base_model,
        eval_results=results or None,
    )
    outputs = info.get("outputs", {})
    embedding = f"`pooler_output`: {info.get('embedding_size', '?')}-d pooled backbone feature"
    if "projection" in outputs:
        embedding += f"; `projection`: {outputs['projection'][0]}-d projection-head output"
    resize = math.floor(info["image_size"] / info["crop_pct"])
    input_description = (
        f"RGB, resized to {resize} (shorter side), centre-cropped to {info['image_size']}x{info['image_size']}, "
        f"normalized with mean {info['image_mean']} and std {info['image_std']}"
        + (" (small-input ResNet stem)" if info.get("small_input_stem") else "")
    )
    if summary is None:
        summary = (
            f"A self-supervised image encoder trained with {family}: a timm `{info['backbone']}` backbone"
            f"{' and its projection head' if 'projection' in outputs else ''}, packaged as the "
            f"`transformers` model `{info['model_class']}`. It maps an image to a "
            f"{info.get('embedding_size', '?')}-dimensional embedding for retrieval, kNN classification, "
            "linear probing or fine-tuning; it predicts no labels by itself."
        )
    if limitations is None:
        limitations = (
            "The embedding reflects the training data and augmentations: expect weaker features on images "
            "far from them (other domains, resolutions far from the training size). The model was trained "
            "without labels and is not a classifier; measure it on your task before relying on it. Biases of "
            "the training data carry over to the embeddings."
        )
    num_parameters = info.get("num_parameters")
    card = ModelCard.from_template(
        card_data,
        template_path=str(template_path or TEMPLATE_PATH),
        model_name=model_name,
        summary=summary,
        family=family,
        paper=_paper_text(paper),
        model_class=info["model_class"],
        backbone=info["backbone"],
        backbone_kwargs=json.dumps(info["backbone_kwargs"]) if info.get("backbone_kwargs") else None,
        embedding=embedding,
        embedding_size=info.get("embedding_size", "D"),
        input_description=input_description,
        num_parameters=f"{num_parameters / 1e6:.2f} M" if num_parameters else "?",
        base_model=base_model,
        repo_id=repo_id or REPO_ID_PLACEHOLDER,
        timm_section="",
        reproduce_command=reproduce_command,
        training_rows=[(k, _format_value(v)) for k, v in (training_summary or {}).items()],
        eval_table=_eval_table(results),
        limitations=limitations,
    )
    path = folder / "README.md"
    card.save(path)
    return path


def update_card_eval_results(folder: str | os.PathLike, results: list[dict]) -> None:
    """Merge evaluation results into a model folder's card (`README.md`), creating the card if missing.

    Each result is a dict with keys `task_type` (e.g. `"image-classification"`), `dataset_name`,
    `dataset_type` (the dataset's Hub id), `dataset_split`, `metric_type` (e.g. `"accuracy"`),
    `metric_name` (e.g. `"kNN top-1 (k=200, T=0.1)"` or `"linear probe top-1"`) and `metric_value`:
    a float, a fraction in [0, 1] for accuracies (shown as % in the table). A result replaces an
    existing one with the same dataset, split and metric name; the card's metadata (`model-index`) and
    its evaluation table are both updated.
    """
    folder = Path(folder)
    readme = folder / "README.md"
    if not readme.is_file():
        config = _load_sslhub_config(folder)
        family = FAMILIES.get(config.model_type, config.model_type)
        if getattr(config, "version", None):
            family = f"{family} {config.version}"
        write_model_card(folder, model_name=folder.name, family=family, paper=_default_paper(config))
    card = ModelCard.load(readme)
    merged = merge_eval_results(card.data.eval_results or [], results)
    card.data.eval_results = merged
    card.data.model_name = card.data.model_name or folder.name
    table = _eval_table(merged)
    text = _replace_block(card.text, "eval-results", table)
    if text is None:  # a hand-written card: append the section
        text = f"{card.text.rstrip()}\n\n## Evaluation\n\n<!-- sslhub:eval-results:start -->\n{table}\n<!-- sslhub:eval-results:end -->\n"
    card.text = text
    card.save(readme)


# --------------------------------------------------------------------------------------------------
# timm export
# --------------------------------------------------------------------------------------------------


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
    timm_config = _read_json(config_file)
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


# --------------------------------------------------------------------------------------------------
# Pushing
# --------------------------------------------------------------------------------------------------


def hub_endpoint() -> str:
    """The Hub URL in use: `HF_ENDPOINT` when set, else huggingface_hub's default."""
    return (os.environ.get("HF_ENDPOINT") or hf_constants.ENDPOINT).rstrip("/")


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def check_can_push(token: str | None = None, timeout: float = 5.0) -> str:
    """Fail fast, with what to do, unless the Hub can be written to; return the token to use.

    Raises:
        HubError: offline mode is on, no token is found, or the endpoint does not answer within `timeout`.
    """
    if hf_constants.HF_HUB_OFFLINE or _env_true("HF_HUB_OFFLINE"):
        raise HubError(
            "HF_HUB_OFFLINE=1 is set, and pushing needs the network: run `unset HF_HUB_OFFLINE` (or set it "
            "to 0) and try again, or add --dry-run to only list what would be uploaded."
        )
    from huggingface_hub import get_token

    token = token or get_token()
    if not token:
        raise HubError(
            "No Hugging Face token found: log in with `hf auth login`, or set HF_TOKEN to a token with write "
            "access (https://huggingface.co/settings/tokens), or pass --token."
        )
    endpoint = hub_endpoint()
    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError as error:
        raise HubError(
            f"Cannot reach the Hub at {endpoint} ({error}). Check the network connection (and HF_ENDPOINT "
            "if you use a mirror), or add --dry-run to only list what would be uploaded."
        ) from error
    return token


def _plan_model_upload(folder: Path, repo_id: str) -> tuple[dict[str, Path | bytes], list[str]]:
    """Files to upload (path in repo -> local path or content) and the skipped files with the reason."""
    config = _load_sslhub_config(folder)
    weights = [p for p in folder.iterdir() if p.suffix == ".safetensors"]
    if not weights:
        raise ValueError(f"{folder} has no .safetensors weights: save the model with `save_pretrained` first")
    uploads: dict[str, Path | bytes] = {}
    skipped = []
    for path in sorted(folder.iterdir()):
        if path.is_dir():
            skipped.append(f"{path.name}/ (folder)")
        elif path.suffix in _PICKLE_SUFFIXES:
            skipped.append(f"{path.name} (pickle-based weights: only safetensors are uploaded)")
        elif path.suffix in _UPLOAD_SUFFIXES:
            uploads[path.name] = path
        elif path.suffix != ".py":  # the modeling code is taken from the installed package below
            skipped.append(f"{path.name} (not a model file)")
    files, auto_map = remote_code_files(config)
    uploads.update(files)
    config_dict = _read_json(folder / "config.json") | {"auto_map": auto_map}
    uploads["config.json"] = (json.dumps(config_dict, indent=2, sort_keys=True) + "\n").encode()
    if "README.md" not in uploads:
        family = FAMILIES.get(config.model_type, config.model_type)
        with tempfile.TemporaryDirectory() as tmp:
            for name in ("config.json", "preprocessor_config.json"):
                if (folder / name).is_file():
                    shutil.copyfile(folder / name, Path(tmp) / name)
            write_model_card(
                tmp, model_name=repo_id.split("/")[-1], family=family, paper=_default_paper(config)
            )
            uploads["README.md"] = (Path(tmp) / "README.md").read_bytes()
    readme = uploads["README.md"]
    text = readme.decode() if isinstance(readme, bytes) else readme.read_text(encoding="utf-8")
    uploads["README.md"] = text.replace(REPO_ID_PLACEHOLDER, repo_id).encode()
    return uploads, skipped


def push_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    include_timm: bool = False,
    timm_repo_id: str | None = None,
    dry_run: bool = False,
    commit_message: str = "Upload sslhub model",
) -> dict[str, list[str]]:
    """Publish a saved model folder to the Hub: weights (safetensors only), config, image processor, card.

    The upload also carries the modeling code (`auto_map`), so `trust_remote_code=True` loads the
    repository without sslhub; a missing card is generated and the card's `<org>/<model-name>`
    placeholder becomes `repo_id`. The folder itself is not modified. `HF_ENDPOINT` is honoured.

    Args:
        folder: the model folder (`save_pretrained` output, optionally with a `README.md`).
        repo_id: `"org/name"` (a bare name goes to the token owner's namespace); created if missing.
        private: create the repository private.
        token: a write token; defaults to the logged-in one (`hf auth login` / `HF_TOKEN`).
        include_timm: also publish the backbone in timm's format as `timm_repo_id`.
        timm_repo_id: defaults to `f"{repo_id}-timm"`.
        dry_run: only return what would be uploaded; needs neither a token nor the network.
        commit_message: the commit message.

    Returns:
        Repository id -> paths uploaded (or that would be, with `dry_run`); skipped local files are listed
        under the key `"skipped"`.

    Raises:
        HubError: no token, offline mode or an unreachable Hub (checked before anything is built).
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    folder = Path(folder)
    if not dry_run:
        token = check_can_push(token)
    api = HfApi(endpoint=hub_endpoint(), token=token)
    if "/" not in repo_id and not dry_run:  # a bare name goes to the token owner's namespace
        repo_id = f"{api.whoami()['name']}/{repo_id}"
    uploads, skipped = _plan_model_upload(folder, repo_id)
    plan = {repo_id: uploads}
    with tempfile.TemporaryDirectory() as tmp:
        if include_timm:
            timm_repo_id = timm_repo_id or f"{repo_id}-timm"
            card_text = plan[repo_id]["README.md"].decode()
            license = ModelCard(card_text).data.license or "apache-2.0"
            model = AutoModel.from_pretrained(folder)
            timm_dir = export_timm(
                model, Path(tmp) / "timm", license=license, source_repo_id=repo_id, repo_id=timm_repo_id
            )
            plan[timm_repo_id] = {p.name: p for p in sorted(timm_dir.iterdir())}
            with_timm = _replace_block(card_text, "timm", _timm_section(timm_repo_id))
            if with_timm is not None:
                plan[repo_id]["README.md"] = with_timm.encode()
        summary = {repo: sorted(files) for repo, files in plan.items()} | {"skipped": skipped}
        if dry_run:
            return summary
        for repo, files in plan.items():
            api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
            operations = [
                CommitOperationAdd(
                    path_in_repo=name, path_or_fileobj=str(source) if isinstance(source, Path) else source
                )
                for name, source in files.items()
            ]
            api.create_commit(repo, operations=operations, commit_message=commit_message, repo_type="model")
    return summary


# --------------------------------------------------------------------------------------------------
# Embedding a folder of images
# --------------------------------------------------------------------------------------------------


def list_images(image_dir: str | os.PathLike) -> list[Path]:
    """Image files under `image_dir` (recursive, common extensions), sorted."""
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise ValueError(f"{image_dir} is not a folder of images")
    return sorted(p for p in image_dir.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def embed_images(
    model: str | os.PathLike,
    image_dir: str | os.PathLike,
    output: str | os.PathLike,
    *,
    batch_size: int = 32,
    output_key: str = "pooler_output",
    device: str | None = None,
    progress: bool = True,
) -> tuple[torch.Tensor, list[str]]:
    """Embed every image of a folder and save the embeddings with the file list.

    Args:
        model: a model folder or Hub id (sslhub or timm format).
        image_dir: the folder, searched recursively.
        output: a `.safetensors` file (tensor `embeddings`, metadata `files` as JSON) or `.npz`
            (arrays `embeddings` and `files`).
        batch_size: images per forward pass.
        output_key: which model output to save (`"pooler_output"` or `"projection"`).
        device: torch device; CUDA when available, else CPU.
        progress: show a tqdm progress bar.

    Returns:
        `(embeddings (N, D), files)`: `files` relative to `image_dir`, unreadable files left out (each
        named in a warning).
    """
    from PIL import Image
    from tqdm.auto import tqdm
    from transformers import AutoImageProcessor

    output = Path(output)
    if output.suffix not in (".safetensors", ".npz"):
        raise ValueError(f"output must end in .safetensors or .npz, got {output.name}")
    paths = list_images(image_dir)
    if not paths:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {image_dir}")
    model_dir = resolve_model_dir(model)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    net = AutoModel.from_pretrained(model_dir).to(device).eval()
    processor = AutoImageProcessor.from_pretrained(model_dir)
    embeddings, files = [], []
    for start in tqdm(range(0, len(paths), batch_size), desc="embedding", unit="batch", disable=not progress):
        images = []
        for path in paths[start : start + batch_size]:
            try:
                with Image.open(path) as image:
                    images.append(image.convert("RGB"))
                files.append(str(path.relative_to(image_dir)))
            except OSError as error:
                warnings.warn(f"skipped unreadable image {path}: {error}", stacklevel=2)
        if not images:
            continue
        pixel_values = processor(images=images, return_tensors="pt")["pixel_values"].to(device)
        with torch.inference_mode():
            result = net(pixel_values=pixel_values)
        if getattr(result, output_key, None) is None:
            raise ValueError(f"the model has no {output_key!r} output")
        embeddings.append(result[output_key].float().cpu())
    if not embeddings:
        raise ValueError(f"none of the {len(paths)} image files under {image_dir} could be read")
    stacked = torch.cat(embeddings)  # (N, D)
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix == ".safetensors":
        from safetensors.torch import save_file

        metadata = {"files": json.dumps(files), "model": str(model), "output_key": output_key}
        save_file({"embeddings": stacked.contiguous()}, str(output), metadata=metadata)
    else:
        import numpy as np

        np.savez(output, embeddings=stacked.numpy(), files=np.array(files))
    return stacked, files


def load_embeddings(path: str | os.PathLike) -> tuple[torch.Tensor, list[str]]:
    """Read an embeddings file written by `embed_images`: `(embeddings (N, D), files)`."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return f.get_tensor("embeddings"), json.loads(f.metadata()["files"])
    import numpy as np

    with np.load(path) as data:
        return torch.from_numpy(data["embeddings"]), [str(name) for name in data["files"]]


# --------------------------------------------------------------------------------------------------
# Checkpoint converters (official MoCo v1/v2/v3 layouts)
# --------------------------------------------------------------------------------------------------

_RESNETS = {  # (block type, blocks per stage) -> name, shared by torchvision and timm
    ("basic", (2, 2, 2, 2)): "resnet18",
    ("basic", (3, 4, 6, 3)): "resnet34",
    ("bottleneck", (3, 4, 6, 3)): "resnet50",
    ("bottleneck", (3, 4, 23, 3)): "resnet101",
    ("bottleneck", (3, 8, 36, 3)): "resnet152",
}
# MoCo v3's ViTs (vits.py): vit_small has 12 heads, not timm's 6; the conv-stem variants have no timm twin.
_MOCO_V3_VITS = {
    "vit_small": ("vit_small_patch16_224", {"num_heads": 12}),
    "vit_base": ("vit_base_patch16_224", {}),
}
_EXPECTED_LAYOUTS = (
    "expected an official MoCo checkpoint: a dict whose 'state_dict' (or the dict itself) holds "
    "`[module.]encoder_q.*` tensors (MoCo v1/v2, torchvision ResNet keys, `fc` or `fc.0`/`fc.2` head) or "
    "`[module.]base_encoder.*` tensors (MoCo v3, ResNet or ViT)"
)


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint's state dict and its other top-level entries (`arch`, `epoch`, ...).

    Pickles are read with `torch.load(weights_only=True)`; `.safetensors` files are read as state dicts.
    The DDP `module.` prefix is removed.

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


def _resnet_name(state_dict: dict[str, torch.Tensor], prefix: str, arch: str | None) -> str:
    if arch:
        if not arch.startswith(("resnet", "wide_resnet", "resnext")):
            raise CheckpointError(f"arch={arch!r} is not a ResNet; pass --backbone with the timm name")
        return arch
    block = "bottleneck" if f"{prefix}layer1.0.conv3.weight" in state_dict else "basic"
    depths = tuple(
        len({k[len(prefix) :].split(".")[1] for k in state_dict if k.startswith(f"{prefix}layer{stage}.")})
        for stage in range(1, 5)
    )
    if (block, depths) not in _RESNETS:
        raise CheckpointError(
            f"cannot tell which ResNet has {block} blocks {depths}: pass --arch or --backbone"
        )
    return _RESNETS[(block, depths)]


def _mlp_spec(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, Any] | None:
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
    """
    layout = detect_layout(state_dict)
    if layout == "moco_v3_vit":
        prefix, head = "base_encoder.", "base_encoder.head."
        derived_name, derived_kwargs = _vit_backbone(state_dict, prefix, arch, backbone)
        small_stem = False
    else:
        prefix = "encoder_q." if layout in ("moco_v1", "moco_v2") else "base_encoder."
        head = f"{prefix}fc."
        derived_name, derived_kwargs = _resnet_name(state_dict, prefix, arch), {}
        small_stem = state_dict[f"{prefix}conv1.weight"].shape[-1] == 3  # CIFAR-style 3x3 stem
    kwargs = {**derived_kwargs, **(backbone_kwargs or {})} or None
    image_size = image_size or (kwargs or {}).get("img_size") or (32 if small_stem else 224)
    common = dict(
        backbone=backbone or derived_name,
        backbone_kwargs=kwargs,
        small_input_stem=small_stem,
        image_size=image_size,
    )

    mapped = {}
    for key, value in state_dict.items():
        if key.startswith(head):
            mapped["projector." + key[len(head) :]] = value
        elif key.startswith(prefix):
            mapped["backbone." + key[len(prefix) :]] = value
    if layout == "moco_v1":
        mapped["projector.0.weight"] = mapped.pop("projector.weight")
        mapped["projector.0.bias"] = mapped.pop("projector.bias")
        projector = dict(projector_num_layers=1, projection_dim=state_dict[f"{head}weight"].shape[0])
    else:
        spec = _mlp_spec(state_dict, head)
        projector = dict(projector_num_layers=0)
        if spec:
            projector = dict(
                projector_num_layers=spec["num_layers"],
                projector_hidden_size=spec["hidden_size"],
                projection_dim=spec["out_features"],
                projector_batch_norm=spec["batch_norm"],
                projector_last_batch_norm=spec["last_batch_norm"],
            )
    if layout in ("moco_v1", "moco_v2"):
        queue = state_dict.get("queue")  # (D, K) in the authors' code
        queue_size = queue.shape[1] if queue is not None else 65536
        preset = MoCoConfig.v1 if layout == "moco_v1" else MoCoConfig.v2
        config = preset(**common, **projector, queue_size=queue_size)
    else:
        predictor = _mlp_spec(state_dict, "predictor.")
        if predictor:
            projector |= dict(
                predictor_num_layers=predictor["num_layers"],
                predictor_hidden_size=predictor["hidden_size"] or predictor["out_features"],
                predictor_last_batch_norm=predictor["last_batch_norm"],
            )
        config = MoCoConfig.v3(**common, **projector)
    with torch.device("meta"):  # no random init: every tensor comes from the checkpoint (checked below)
        model = MoCoModel(config)
    try:
        missing, unexpected = model.load_state_dict(mapped, strict=False, assign=True)
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
) -> Path:
    """Convert an official MoCo v1/v2/v3 checkpoint into an sslhub folder with remote code and a card.

    Args:
        checkpoint: the `.pth.tar` file (or a `.safetensors` state dict in the same layout).
        output_dir: the sslhub folder to write (`MoCoModel`).
        arch, backbone, backbone_kwargs, image_size: see `moco_checkpoint_to_model`.
        model_name: the card title; the output folder name by default.
        datasets: the training data for the card (ImageNet for the official checkpoints).

    Returns:
        `output_dir`.
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
    command = f"sslhub convert {Path(checkpoint).name} {output_dir.name}"
    for flag, value in (
        ("--arch", arch if arch != meta.get("arch") else None),
        ("--backbone", backbone),
        ("--image-size", image_size),
    ):
        if value:
            command += f" {flag} {value}"
    if backbone_kwargs:
        command += f" --backbone-kwargs '{json.dumps(backbone_kwargs)}'"
    summary = {"source checkpoint": Path(checkpoint).name, "source arch": arch or "inferred from the keys"}
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
        limitations=(
            "Converted from the authors' checkpoint: the weights are theirs, unchanged; the image processor "
            "assumes ImageNet normalization and a 0.875 centre crop, as in the authors' linear evaluation. "
            "Settings not stored in the checkpoint (temperature, momentum) are the paper's defaults and "
            "matter only to continue pre-training."
        ),
    )
    return output_dir

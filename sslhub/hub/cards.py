"""Model cards: writing a folder's `README.md` from the template and merging evaluation results into it.

A card's metadata (`model-index`) and its evaluation table always agree: both are written from the same
`EvalResult`s, and a new result replaces the one with the same dataset, split and metric name.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.utils import HFValidationError, validate_repo_id
from transformers import PretrainedConfig

from .folders import FAMILIES, describe_model, load_sslhub_config

# Shipped inside the package (wheels too); `model_cards/TEMPLATE.md` in the repository links to it.
TEMPLATE_PATH = Path(__file__).resolve().parent.parent / "templates" / "model_card.md"
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


def _result_key(result: EvalResult) -> tuple:
    return (
        result.dataset_type,
        result.dataset_name,
        result.dataset_split,
        result.metric_name or result.metric_type,
    )


def merge_eval_results(old: Iterable[EvalResult], new: Iterable[dict | EvalResult]) -> list[EvalResult]:
    """Results of `old` updated by `new`: a new result replaces one with the same dataset and metric name.

    Raises:
        ValueError: a new result misses a required key, has an unknown one, or is an accuracy outside [0, 1].
    """
    merged = {_result_key(r): r for r in old}
    for result in map(_eval_result, new):
        merged[_result_key(result)] = result
    return list(merged.values())


BASE_MODEL_RELATIONS = ("adapter", "merge", "quantized", "finetune")
"""The values the Hub accepts for `base_model_relation` (it infers one when the card sets none)."""


def _is_hub_id(name: str | None) -> bool:
    """`org/name` as the Hub spells repository ids, and not a local path."""
    if not name or not re.fullmatch(r"[\w.-]+/[\w.-]+", name) or Path(name).exists():
        return False
    try:
        validate_repo_id(name)  # no leading dot, no "--" or "..", ...
    except HFValidationError:
        return False
    return True


def portable_path(value: str, root: str | os.PathLike | None = None) -> str:
    """`value` as a reader of a published card can use it: an absolute path inside `root` (default: the
    working directory) relative to it, one inside the home folder as `~/...` (no user name, no machine
    layout); anything else (Hub ids, `timm:<name>`, relative paths, other absolute paths) as it is."""
    if not os.path.isabs(value):
        return value
    path = Path(value)
    for folder, prefix in ((Path(root or Path.cwd()), "."), (Path.home(), "~")):
        if folder != Path(folder.anchor) and (path == folder or folder in path.parents):  # not a home of "/"
            relative = os.path.relpath(path, folder)
            return relative if prefix == "." else f"~/{relative}" if relative != "." else "~"
    return value


def _model_link(name: str) -> str:
    """A Hub id as a link to its page; anything else (a local path, `timm:<name>`) as code."""
    return f"[`{name}`](https://huggingface.co/{name})" if _is_hub_id(name) else f"`{portable_path(name)}`"


def _lineage(config: PretrainedConfig, base_model: str | None, relation: str | None) -> dict | None:
    """What the card says about the model this one comes from: a table row and a paragraph."""
    is_student = config.model_type == "sslhub_student"
    source = base_model or (getattr(config, "teacher_name", None) if is_student else None)
    if not source:
        return None
    on_hub = _is_hub_id(source)
    if is_student:
        label, note = "Teacher", f"The student was distilled from the frozen teacher {_model_link(source)}"
        if not on_hub:
            note += ", a local model that is not on the Hub, so the metadata names no `base_model`."
        elif relation is None:
            note += (
                ", named as `base_model` in the metadata without a `base_model_relation`: the Hub's "
                f"relations ({', '.join(BASE_MODEL_RELATIONS)}) have no value for distillation, and the student "
                "holds none of the teacher's weights."
            )
        else:
            note += f" (`base_model_relation: {relation}`)."
    else:
        label, note = "Initialized from", f"Training continued from {_model_link(source)}"
        if on_hub:
            note += f" (`base_model` in the metadata{f', `base_model_relation: {relation}`' if relation else ''})."
        else:
            note += ", a local model that is not on the Hub, so the metadata names no `base_model`."
    return {"label": label, "value": _model_link(source), "note": note}


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


def _replace_block(text: str, name: str, content: str) -> str | None:
    """Replace the text between `<!-- sslhub:NAME:start -->` and `<!-- sslhub:NAME:end -->`; None if absent."""
    start, end = f"<!-- sslhub:{name}:start -->", f"<!-- sslhub:{name}:end -->"
    i, j = text.find(start), text.find(end)
    if i < 0 or j < i:
        return None
    return f"{text[: i + len(start)]}\n{content}\n{text[j:]}"


def card_with_timm_section(text: str, timm_repo_id: str) -> str | None:
    """A card's text with its timm block saying how to load the backbone from `timm_repo_id`.

    Returns:
        None for a card without the block (a hand-written one).
    """
    section = (
        "\nThe backbone alone, in timm's format, is published as "
        f"[`{timm_repo_id}`](https://huggingface.co/{timm_repo_id}):\n\n"
        "```python\nimport timm\n\n"
        f'backbone = timm.create_model("hf-hub:{timm_repo_id}", pretrained=True)  # pooled features\n```\n'
    )
    return _replace_block(text, "timm", section)


def default_paper(config: PretrainedConfig) -> str | None:
    """The `PAPERS` key of a config's method, for cards written without one (None if unknown)."""
    if config.model_type == "sslhub_moco":
        return f"moco-{config.version}"
    return {"sslhub_colorization": "colorization"}.get(config.model_type)


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return str(value)


def card_provenance(text: str) -> dict[str, Any]:
    """What a card written by `write_model_card` says of how the model was made: `reproduce_command` and
    `training_summary` (the table's rows), as `write_model_card` takes them; empty where the card lacks them.
    A rewrite (a new name or family) passes them on instead of losing them."""
    made = text.split("## How it was made", 1)[1].split("\n## ", 1)[0] if "## How it was made" in text else ""
    found: dict[str, Any] = {}
    command = re.search(r"Reproduce it with:\s*```bash\n(.*?)\n```", made, re.DOTALL)
    if command:
        found["reproduce_command"] = command.group(1)
    if "| Setting | Value |" in made:
        table = made.split("| Setting | Value |", 1)[1]
        rows = re.findall(r"^\| (.+?) \| (.*?) \|$", table, re.MULTILINE)
        found["training_summary"] = {key: value for key, value in rows if set(key) != {"-"}}
    return found


def write_model_card(
    folder: str | os.PathLike,
    *,
    model_name: str,
    family: str,
    paper: str | None,
    base_model: str | None = None,
    base_model_relation: str | None = "auto",
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
        base_model: the model this one comes from: the teacher of a distilled student (default: the
            student config's `teacher_name`), or the model whose training this continued (`--init_from`). A Hub
            id (`org/name`) goes into the metadata as `base_model`; a local path is only named in the text.
        base_model_relation: the metadata's `base_model_relation`, one of `BASE_MODEL_RELATIONS` or None;
            `"auto"`: `"finetune"` for a model whose training continued from `base_model`, none for a
            distilled student (the Hub has no relation for distillation; the card says so).
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
    config = load_sslhub_config(folder)
    if base_model_relation == "auto":
        base_model_relation = None if config.model_type == "sslhub_student" else "finetune"
    elif base_model_relation is not None and base_model_relation not in BASE_MODEL_RELATIONS:
        raise ValueError(
            f"base_model_relation must be one of {list(BASE_MODEL_RELATIONS)} or None, got {base_model_relation!r}"
        )
    on_hub = _is_hub_id(base_model)
    results = merge_eval_results([], eval_results)
    tags = ["sslhub", "self-supervised-learning", "image-feature-extraction", "timm"]
    if family.lower().startswith("supervised"):  # trained from random init on labels only
        tags.remove("self-supervised-learning")
    slug = re.sub(r"[^a-z0-9]+", "-", family.lower()).strip("-")
    tags += [t for t in dict.fromkeys([slug.split("-")[0], slug]) if t and t not in tags]
    card_data = ModelCardData(
        model_name=model_name,
        library_name="transformers",
        license=license,
        tags=tags,
        datasets=[d for d in datasets if _is_hub_id(d)] or None,  # local paths mean nothing on the Hub
        pipeline_tag="image-feature-extraction",
        base_model=base_model if on_hub else None,  # a local path means nothing on the Hub
        base_model_relation=base_model_relation if on_hub else None,
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
        paper=PAPERS.get(paper, paper) if paper else "n/a",
        model_class=info["model_class"],
        backbone=info["backbone"],
        backbone_kwargs=json.dumps(info["backbone_kwargs"]) if info.get("backbone_kwargs") else None,
        embedding=embedding,
        embedding_size=info.get("embedding_size", "D"),
        input_description=input_description,
        num_parameters=f"{num_parameters / 1e6:.2f} M" if num_parameters else "?",
        base_model=base_model,
        lineage=_lineage(config, base_model, base_model_relation),
        repo_id=repo_id or REPO_ID_PLACEHOLDER,
        timm_section="",  # filled in by `push_to_hub(..., include_timm=True)`
        reproduce_command=reproduce_command,
        training_rows=[(k, _format_value(v)) for k, v in (training_summary or {}).items()],
        eval_table=_eval_table(results),
        limitations=limitations,
    )
    path = folder / "README.md"
    card.save(path)
    return path


def update_card_eval_results(
    folder: str | os.PathLike, results: list[dict], model_name: str | None = None
) -> None:
    """Merge evaluation results into a model folder's card (`README.md`), creating the card if missing.

    Each result is a dict with keys `task_type` (e.g. `"image-classification"`), `dataset_name`,
    `dataset_type` (the dataset's Hub id), `dataset_split`, `metric_type` (e.g. `"accuracy"`),
    `metric_name` (e.g. `"kNN top-1 (k=200, T=0.1)"` or `"linear probe top-1"`) and `metric_value`:
    a float, a fraction in [0, 1] for accuracies (shown as % in the table). A result replaces an
    existing one with the same dataset, split and metric name; the card's metadata (`model-index`) and
    its evaluation table are both updated.

    Args:
        folder: the saved sslhub model folder.
        results: the results to merge, in the format above.
        model_name: a new name for the model (the card's title and the `model-index` name); default: the
            card's, else the folder's name.
    """
    folder = Path(folder)
    readme = folder / "README.md"
    if not readme.is_file():
        config = load_sslhub_config(folder)
        family = FAMILIES.get(config.model_type, config.model_type)
        if getattr(config, "version", None):
            family = f"{family} {config.version}"
        write_model_card(folder, model_name=folder.name, family=family, paper=default_paper(config))
    card = ModelCard.load(readme)
    merged = merge_eval_results(card.data.eval_results or [], results)
    card.data.eval_results = merged
    previous = card.data.model_name
    card.data.model_name = model_name or previous or folder.name
    table = _eval_table(merged)
    text = card.text
    if previous and previous != card.data.model_name:
        text = text.replace(f"# {previous}\n", f"# {card.data.model_name}\n", 1)
    text = _replace_block(text, "eval-results", table)
    if text is None:  # a hand-written card: append the section
        text = f"{card.text.rstrip()}\n\n## Evaluation\n\n<!-- sslhub:eval-results:start -->\n{table}\n<!-- sslhub:eval-results:end -->\n"
    card.text = text
    card.save(readme)

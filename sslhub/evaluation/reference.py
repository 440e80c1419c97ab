"""The model reference: load any model by name, with the preprocessing it expects.

One function serves evaluation (the encoder to score), distillation (the teacher) and embedding: an sslhub
folder or Hub id, `timm:<name>`, or any transformers image model. Turning its output into an (N, D)
embedding is `sslhub.models.modeling_common.output_embedding`, which the model side shares.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm.data
import torch
from torch import nn
from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification

from ..data import eval_transform
from ..data.loading import check_path_or_hub_id
from ..models.backbones import check_backbone_name, create_backbone
from ..models.configuration_common import IMAGENET_MEAN, IMAGENET_STD
from ..models.modeling_common import output_embedding

TIMM_PREFIX = "timm:"
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "open_clip_model.safetensors",
)


@dataclass
class ModelReference:
    """A loaded model and the preprocessing it expects.

    Attributes:
        model: the model in eval mode; `embed(model, pixel_values)` gives its (N, D) pooled features.
        kind: `"sslhub"`, `"timm"` or `"transformers"`.
        image_size / mean / std / crop_pct: its evaluation preprocessing (resize, centre-crop, normalize).
        fingerprint: what identifies the weights (path + file stamps, Hub revision, timm name), for caches.
    """

    model: nn.Module
    kind: str
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_pct: float
    fingerprint: dict[str, Any] = field(default_factory=dict)

    @property
    def transform(self):
        """The evaluation preprocessing, PIL image -> normalized tensor."""
        return eval_transform(self.image_size, self.mean, self.std, self.crop_pct)

    def embedding_dim(self) -> int:
        """Width of the pooled embedding (read off the model, else from one dry run)."""
        known = getattr(self.model, "num_features", None)
        if known and self.kind != "transformers":
            return int(known)
        parameter = next(self.model.parameters(), None)
        probe = torch.zeros(
            1, 3, self.image_size, self.image_size, device=parameter.device if parameter is not None else None
        )
        with torch.no_grad():
            return embed(self.model.eval(), probe).shape[1]


def embed(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """The pooled (N, D) embedding of a batch for any sslhub model, timm model or transformers image model."""
    return output_embedding(model(pixel_values), "pooled")


def _weights_stamp(folder: Path) -> dict[str, Any]:
    """Path, size and mtime of the weight files of a local model folder (changes when it is re-saved)."""
    stamp: dict[str, Any] = {"path": str(folder.resolve())}
    for name in WEIGHT_FILES:
        file = folder / name
        if file.exists():
            info = file.stat()
            stamp[name] = [info.st_size, info.st_mtime_ns]
    return stamp


def _hub_revision(repo_id: str) -> str | None:
    """The commit of a Hub model in the local cache (the one just loaded), or None."""
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(repo_id, "config.json")
    return Path(path).parent.name if isinstance(path, str) else None


def _processor_settings(spec: str, config) -> tuple[int, tuple, tuple, float]:
    """(image_size, mean, std, crop_pct) of a transformers model, from its image processor where it has one."""
    try:
        processor = AutoImageProcessor.from_pretrained(spec)
    except (OSError, ValueError, TypeError):
        return int(getattr(config, "image_size", 224)), IMAGENET_MEAN, IMAGENET_STD, 1.0
    data_config = getattr(processor, "data_config", None)  # transformers' wrapper of timm models
    if data_config:
        return data_config["input_size"][-1], data_config["mean"], data_config["std"], data_config["crop_pct"]
    crop = getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop", False) else None
    size = getattr(processor, "size", None) or {}
    if crop:
        image_size = crop.get("height") or crop.get("shortest_edge")
        resize = size.get("shortest_edge") or size.get("height") or image_size
        crop_pct = min(1.0, image_size / resize)
    else:
        image_size = size.get("height") or size.get("shortest_edge") or getattr(config, "image_size", 224)
        crop_pct = 1.0
    mean = tuple(getattr(processor, "image_mean", None) or IMAGENET_MEAN)
    std = tuple(getattr(processor, "image_std", None) or IMAGENET_STD)
    return int(image_size), mean, std, float(crop_pct)


def check_model(spec: str) -> None:
    """Raise (`ValueError`, `OSError`) unless `spec` names a model `load_model` can find, without loading
    its weights: a timm model name, or a model folder / Hub id whose config resolves."""
    if spec.startswith(TIMM_PREFIX):
        check_backbone_name(spec.removeprefix(TIMM_PREFIX))
    else:
        check_path_or_hub_id(spec)
        AutoConfig.from_pretrained(spec)


def load_model(
    spec: str,
    *,
    pretrained: bool = True,
    random_init: bool = False,
    classifier: bool = False,
    image_size: int | None = None,
    crop_pct: float | None = None,
    model_kwargs: dict[str, Any] | None = None,
) -> ModelReference:
    """Load a model by name, in eval mode, with the preprocessing it expects.

    Args:
        spec: one of
            - an sslhub model folder or Hub id (`AutoModel` after `import sslhub`); preprocessing from its
              config (`image_size`, `crop_pct`, `image_mean`, `image_std`, as in `preprocessor_config.json`);
            - `"timm:<name>"`: a timm model (headless unless `classifier`), with timm's data config;
            - any other transformers image model folder or Hub id (`AutoModel` + `AutoImageProcessor`).
        pretrained: for `timm:` models, load timm's pretrained weights (needs the Hub or its cache).
        random_init: build the architecture from its config with fresh weights (the random-init baseline).
        classifier: keep (timm) or load (`AutoModelForImageClassification`) the classification head: the
            model then returns logits.
        image_size: use this resolution instead of the model's own (e.g. 32 for a timm model on CIFAR).
        crop_pct: override the resize-then-crop ratio (1.0 resizes straight to `image_size`).
        model_kwargs: extra keyword arguments for `timm.create_model` or `from_pretrained`.
    """
    kwargs = dict(model_kwargs or {})
    if spec.startswith(TIMM_PREFIX):
        name = spec[len(TIMM_PREFIX) :]
        load_weights = pretrained and not random_init
        try:
            model = create_backbone(name, kwargs, pretrained=load_weights, keep_classifier=classifier)
        except Exception as error:
            if not load_weights:
                raise
            raise RuntimeError(
                f"could not load timm's pretrained weights for {name!r} ({error}): fill the Hub cache, or pass "
                "pretrained=False for random weights"
            ) from error
        data_config = timm.data.resolve_model_data_config(model)
        size = kwargs.get("img_size") or data_config["input_size"][-1]
        mean, std, pct = data_config["mean"], data_config["std"], data_config.get("crop_pct", 0.875)
        fingerprint = {"timm": name, "pretrained": load_weights, "timm_version": timm.__version__}
        kind = "timm"
    else:
        config = AutoConfig.from_pretrained(spec)
        auto_class = AutoModelForImageClassification if classifier else AutoModel
        if random_init:
            model = auto_class.from_config(config, **kwargs)
        else:
            model, loading = auto_class.from_pretrained(spec, output_loading_info=True, **kwargs)
            if classifier and loading["missing_keys"]:
                # transformers would give it a new, random head: logits of nothing learned.
                raise ValueError(
                    f"{spec} has no trained classification head (missing: "
                    f"{', '.join(sorted(loading['missing_keys'])[:4])}): its logits would come from a random "
                    "head; use its embeddings instead (pooled / projection), or a fine-tuned classifier"
                )
        if config.model_type.startswith("sslhub_"):
            kind = "sslhub"
            size, mean, std, pct = config.image_size, config.image_mean, config.image_std, config.crop_pct
        else:
            kind = "transformers"
            size, mean, std, pct = _processor_settings(spec, config)
        identity = (
            _weights_stamp(Path(spec))
            if Path(spec).is_dir()
            else {"id": spec, "revision": _hub_revision(spec)}
        )
        fingerprint = {**identity, **({"random_init": True} if random_init else {})}
    size = image_size or size
    pct = crop_pct if crop_pct is not None else pct
    fingerprint.update(image_size=size, crop_pct=pct)
    return ModelReference(
        model=model.eval(),
        kind=kind,
        image_size=int(size),
        mean=tuple(mean),
        std=tuple(std),
        crop_pct=float(pct),
        fingerprint=fingerprint,
    )


def load_encoder(spec: str, **kwargs) -> ModelReference:
    """The encoder to evaluate: `load_model` without a classification head (see its arguments)."""
    return load_model(spec, **kwargs)

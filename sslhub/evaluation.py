"""The standard protocols for frozen self-supervised features: kNN, linear probe, fine-tuning.

- `load_encoder`: any sslhub model (folder or Hub id), a timm model (`"timm:resnet50"`) or a transformers
  image model, with the evaluation preprocessing it expects.
- `extract_features` / `cached_features`: embeddings of a whole dataset in eval mode without
  augmentation, gathered across processes with every sample counted once, optionally cached on disk.
- `knn_predict` / `knn_accuracy`: the weighted kNN classifier of InstDisc (Wu et al. 2018), the standard
  monitor of SSL training: cosine similarity to a bank of labelled training features, the k most
  similar vote for their class with weight exp(s / T).
- `linear_probe`: a linear classifier trained on cached frozen features.
- `load_classifier` / `finetune_transform`: the model and augmentation of full fine-tuning.
- `write_results` / `card_eval_results` / `update_model_card`: `results.json` and the model card's
  `model-index`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm.data
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification

from .data import eval_transform
from .models.backbones import create_backbone
from .models.configuration_common import IMAGENET_MEAN, IMAGENET_STD

TIMM_PREFIX = "timm:"
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "open_clip_model.safetensors",
)

# ----------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------


@dataclass
class LoadedEncoder:
    """A frozen encoder and the preprocessing it expects.

    Attributes:
        model: the encoder in eval mode; `embed_batch(model, pixel_values)` gives its (N, D) features.
        transform: the evaluation preprocessing (resize, centre-crop, normalize), PIL image -> tensor.
        kind: `"sslhub"`, `"timm"` or `"transformers"`.
        image_size / mean / std / crop_pct: the preprocessing settings, reused for fine-tuning views.
        fingerprint: what identifies the weights (path + file stamps, Hub revision, timm name), for caches.
    """

    model: nn.Module
    transform: Callable
    kind: str
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_pct: float
    fingerprint: dict[str, Any] = field(default_factory=dict)


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


def _model_fingerprint(spec: str, **settings) -> dict[str, Any]:
    identity = (
        _weights_stamp(Path(spec)) if Path(spec).is_dir() else {"id": spec, "revision": _hub_revision(spec)}
    )
    return {**identity, **{k: v for k, v in settings.items() if v is not None}}


def _processor_settings(processor) -> tuple[int, tuple, tuple, float]:
    """(image_size, mean, std, crop_pct) of a transformers image processor."""
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
        image_size = size.get("height") or size.get("shortest_edge") or 224
        crop_pct = 1.0
    mean = tuple(getattr(processor, "image_mean", None) or IMAGENET_MEAN)
    std = tuple(getattr(processor, "image_std", None) or IMAGENET_STD)
    return int(image_size), mean, std, float(crop_pct)


def load_encoder(
    spec: str,
    *,
    pretrained: bool = True,
    random_init: bool = False,
    image_size: int | None = None,
    crop_pct: float | None = None,
) -> LoadedEncoder:
    """Load a model to evaluate, with its evaluation preprocessing.

    Args:
        spec: one of
            - an sslhub model folder or Hub id (`AutoModel` after `import sslhub`); preprocessing from its
              config (`image_size`, `crop_pct`, `image_mean`, `image_std`, as saved in
              `preprocessor_config.json`);
            - `"timm:<name>"`: a headless timm model, preprocessed with timm's data config;
            - any other transformers image model folder or Hub id (`AutoModel` + `AutoImageProcessor`).
        pretrained: for `timm:` models, load timm's pretrained weights (needs the Hub or its cache).
        random_init: build the architecture from its config with fresh weights (the random-init baseline).
        image_size: evaluate at this resolution instead of the model's own (e.g. 32 for a timm baseline
            on CIFAR images).
        crop_pct: override the resize-then-crop ratio (1.0 resizes straight to `image_size`).

    Returns:
        A `LoadedEncoder` in eval mode.
    """
    if spec.startswith(TIMM_PREFIX):
        name = spec[len(TIMM_PREFIX) :]
        model = create_backbone(name, pretrained=pretrained and not random_init)
        data_config = timm.data.resolve_model_data_config(model)
        size, mean, std = data_config["input_size"][-1], data_config["mean"], data_config["std"]
        pct = data_config.get("crop_pct", 0.875)
        fingerprint = {
            "timm": name,
            "pretrained": pretrained and not random_init,
            "timm_version": timm.__version__,
        }
        kind = "timm"
    else:
        config = AutoConfig.from_pretrained(spec)
        model = AutoModel.from_config(config) if random_init else AutoModel.from_pretrained(spec)
        if config.model_type.startswith("sslhub_"):
            kind = "sslhub"
            size, mean, std, pct = config.image_size, config.image_mean, config.image_std, config.crop_pct
        else:
            kind = "transformers"
            size, mean, std, pct = _processor_settings(AutoImageProcessor.from_pretrained(spec))
        fingerprint = _model_fingerprint(spec, random_init=random_init or None)
    size = image_size or size
    pct = crop_pct if crop_pct is not None else pct
    fingerprint.update(image_size=size, crop_pct=pct)
    model.eval()
    return LoadedEncoder(
        model=model,
        transform=eval_transform(size, mean, std, pct),
        kind=kind,
        image_size=int(size),
        mean=tuple(mean),
        std=tuple(std),
        crop_pct=float(pct),
        fingerprint=fingerprint,
    )


class LinearClassifier(nn.Module):
    """A headless encoder (e.g. a timm backbone) with a new linear layer: logits = W f(x) + b."""

    def __init__(self, encoder: nn.Module, num_features: int, num_labels: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.classifier = nn.Linear(num_features, num_labels)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.classifier(embed_batch(self.encoder, pixel_values))


def _num_features(encoder: LoadedEncoder) -> int:
    known = getattr(encoder.model, "num_features", None)
    if known:
        return int(known)
    with torch.no_grad():  # a dry run tells the embedding width of any model
        probe = torch.zeros(1, 3, encoder.image_size, encoder.image_size)
        return embed_batch(encoder.model.eval(), probe).shape[1]


def load_classifier(
    spec: str, num_labels: int, *, pretrained: bool = True, random_init: bool = False
) -> nn.Module:
    """The model of full fine-tuning: the encoder of `spec` with a new linear head of `num_labels` classes.

    Models whose family registers a classification head load through `AutoModelForImageClassification`
    (`MoCoForImageClassification`; transformers models get their head replaced); the others (`timm:<name>`,
    sslhub families without a registered head) become a `LinearClassifier` on their pooled embedding.
    Read logits from the output with `classifier_logits`.
    """
    if not spec.startswith(TIMM_PREFIX):
        try:
            if random_init:
                config = AutoConfig.from_pretrained(spec, num_labels=num_labels)
                return AutoModelForImageClassification.from_config(config)
            return AutoModelForImageClassification.from_pretrained(
                spec, num_labels=num_labels, ignore_mismatched_sizes=True
            )
        except ValueError as error:
            if "Unrecognized configuration class" not in str(error):
                raise
    encoder = load_encoder(spec, pretrained=pretrained, random_init=random_init)
    return LinearClassifier(encoder.model, _num_features(encoder), num_labels)


def classifier_logits(output: Any) -> torch.Tensor:
    """The (N, C) logits of a `load_classifier` model's output (a tensor or a `ModelOutput`)."""
    return output if isinstance(output, torch.Tensor) else output.logits


class _Logits(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return classifier_logits(self.model(pixel_values))


def classifier_accuracy(
    model: nn.Module, batches: Iterable[dict[str, torch.Tensor]], accelerator=None
) -> float:
    """Top-1 accuracy (in [0, 1]) of a classifier over labelled batches, each sample counted once.

    Runs in eval mode and gathers like `extract_features` (its training mode is restored afterwards).
    """
    logits, labels = extract_features(_Logits(model), batches, accelerator, description="evaluation")
    if labels is None:
        raise ValueError("the evaluation batches have no labels")
    return (logits.argmax(1) == labels).float().mean().item()


def finetune_transform(
    image_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD, min_scale: float = 0.08
) -> v2.Compose:
    """The augmentation of supervised fine-tuning: RandomResizedCrop and horizontal flip, then normalize."""
    return v2.Compose(
        [
            v2.RandomResizedCrop(image_size, scale=(min_scale, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(mean), list(std)),
        ]
    )


# ----------------------------------------------------------------------------------------------------------
# Features
# ----------------------------------------------------------------------------------------------------------


def embed_batch(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """The pooled embedding of a batch for any sslhub model, timm model or transformers image model."""
    output = model(pixel_values)
    if isinstance(output, torch.Tensor):
        return output if output.ndim == 2 else output.flatten(1)
    pooled = getattr(output, "pooler_output", None)
    if pooled is not None:
        return pooled.flatten(1)
    hidden = output.last_hidden_state
    return hidden.mean(dim=1) if hidden.ndim == 3 else hidden.mean(dim=(2, 3))


def _gather_by_index(accelerator, features: torch.Tensor, labels: torch.Tensor | None, indices: torch.Tensor):
    # Processes may hold different numbers of samples (unreadable images are dropped), so pad to one
    # size for the collective and mark the padding with index -1.
    device = accelerator.device
    features = accelerator.gather(accelerator.pad_across_processes(features.to(device), dim=0)).cpu()
    indices = accelerator.gather(
        accelerator.pad_across_processes(indices.to(device), dim=0, pad_index=-1)
    ).cpu()
    if labels is not None:
        labels = accelerator.gather(accelerator.pad_across_processes(labels.to(device), dim=0)).cpu()
    keep = indices >= 0
    return features[keep], (labels[keep] if labels is not None else None), indices[keep]


def _first_of_each_index(features: torch.Tensor, labels: torch.Tensor | None, indices: torch.Tensor):
    order = torch.argsort(indices, stable=True)
    indices = indices[order]
    first = torch.ones_like(indices, dtype=torch.bool)
    first[1:] = indices[1:] != indices[:-1]
    order = order[first]
    return features[order], (labels[order] if labels is not None else None), indices[first]


@torch.no_grad()
def extract_features(
    model: nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    accelerator=None,
    progress: bool = True,
    description: str = "features",
    return_indices: bool = False,
) -> tuple[torch.Tensor, ...]:
    """Embed every batch with `model` in eval mode, without augmentation.

    Every sample counts exactly once, also across processes where the sampler repeats samples to even
    out the last batch. Batches without an `index` are gathered with `gather_for_metrics`, which drops
    that padding. Batches that carry the dataset `index` (`ImageDataset`) are gathered once at the end,
    deduplicated and sorted by index, which also stays correct when unreadable images leave the
    processes with different numbers of samples.

    Args:
        model: the encoder; its training mode is restored afterwards.
        batches: an iterable of `{"pixel_values", "label"?, "index"?}` batches (an `ImageDataset`
            DataLoader, prepared by `accelerator` or not).
        accelerator: the `Accelerator` of a distributed run; every process receives all features.
        progress: show a progress bar (on the main process only).
        description: label of the progress bar.
        return_indices: also return the dataset index of every row.

    Returns:
        `(features (N, D) float32 on CPU, labels (N,) or None)`, plus `indices (N,)` (None for batches
        without an index) with `return_indices`.
    """
    was_training = model.training
    model.eval()
    features, labels, indices = [], [], []
    device = next(model.parameters()).device
    show = progress and (accelerator is None or accelerator.is_main_process)
    for batch in tqdm(batches, desc=description, disable=not show, leave=False):
        if "pixel_values" not in batch:  # every image of this batch was unreadable
            continue
        embedding = embed_batch(model, batch["pixel_values"].to(device)).float()
        label, index = batch.get("label"), batch.get("index")
        if index is None and accelerator is not None:
            embedding = accelerator.gather_for_metrics(embedding)
            label = accelerator.gather_for_metrics(label.to(device)) if label is not None else None
        features.append(embedding.cpu())
        if label is not None:
            labels.append(label.cpu())
        if index is not None:
            indices.append(index.cpu())
    model.train(was_training)
    if not features:
        raise ValueError("no batch to embed: the dataset is empty or every image was unreadable")
    features_out = torch.cat(features)
    labels_out = torch.cat(labels) if labels else None
    indices_out = torch.cat(indices).long() if indices else None
    if indices_out is not None:
        if accelerator is not None and accelerator.num_processes > 1:
            features_out, labels_out, indices_out = _gather_by_index(
                accelerator, features_out, labels_out, indices_out
            )
        features_out, labels_out, indices_out = _first_of_each_index(features_out, labels_out, indices_out)
    if return_indices:
        return features_out, labels_out, indices_out
    return features_out, labels_out


def cache_key(**settings: Any) -> str:
    """A short hash of JSON-serializable settings (model fingerprint, dataset source and split, transform)."""
    text = json.dumps(settings, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def cached_features(
    cache_dir: str | os.PathLike | None,
    settings: dict[str, Any],
    compute: Callable[[], tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]],
    accelerator=None,
) -> tuple[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None], bool]:
    """Load features from a safetensors cache, or compute and store them.

    Args:
        cache_dir: cache folder; `None` disables caching.
        settings: everything the features depend on: the encoder's `fingerprint`, the dataset source,
            split and sample selection, the transform. Its hash names the file.
        compute: returns `(features, labels, indices)` (as `extract_features(..., return_indices=True)`);
            called on every process (extraction is collective), the main process writes the file.
        accelerator: the run's `Accelerator`, when distributed.

    Returns:
        `((features, labels, indices), hit)`, `hit` telling whether the cache answered.
    """
    if cache_dir is None:
        return compute(), False
    from safetensors.torch import load_file, save_file

    path = Path(cache_dir) / f"features-{cache_key(**settings)}.safetensors"
    if path.exists():
        tensors = load_file(path)
        return (tensors["features"], tensors.get("labels"), tensors.get("indices")), True
    result = compute()
    if accelerator is None or accelerator.is_main_process:
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {
            name: t.contiguous()
            for name, t in zip(("features", "labels", "indices"), result, strict=True)
            if t is not None
        }
        metadata = {"settings": json.dumps(settings, sort_keys=True, default=repr)}
        save_file(tensors, str(path) + ".tmp", metadata=metadata)
        os.replace(str(path) + ".tmp", path)  # a crash mid-write never leaves a truncated cache file
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return result, False


# ----------------------------------------------------------------------------------------------------------
# kNN
# ----------------------------------------------------------------------------------------------------------


@torch.no_grad()
def knn_predict(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Weighted kNN class scores (InstDisc): cosine similarity, top-k neighbours vote exp(s / T).

    Memory stays at `chunk_size x N_train` similarities, so 10,000 queries against 50,000 bank
    features need about 200 MB at the default chunk size.

    Args:
        train_features: (N, D) bank features (normalized here).
        train_labels: (N,) bank labels in [0, num_classes).
        test_features: (M, D) query features (normalized here).
        num_classes: number of classes C.
        k: neighbours; clipped to N.
        temperature: T of the vote weights.
        chunk_size: queries handled at once.

    Returns:
        (M, C) summed vote weights per class; `argmax(1)` is the prediction.
    """
    bank = F.normalize(train_features.float(), dim=1)
    labels = train_labels.to(bank.device).long()
    k = min(k, bank.shape[0])
    scores = []
    for start in range(0, test_features.shape[0], chunk_size):
        queries = F.normalize(test_features[start : start + chunk_size].float().to(bank.device), dim=1)
        similarity = queries @ bank.T  # (m, N)
        top_similarity, top_index = similarity.topk(k, dim=1)  # (m, k)
        weights = (top_similarity / temperature).exp()
        votes = torch.zeros(queries.shape[0], num_classes, device=bank.device)
        votes.scatter_add_(1, labels[top_index], weights)  # (m, C)
        scores.append(votes)
    return torch.cat(scores)


def knn_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    k: int = 200,
    temperature: float = 0.1,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> float:
    """Top-1 accuracy (in [0, 1]) of the weighted kNN classifier."""
    num_classes = num_classes or int(max(train_labels.max(), test_labels.max())) + 1
    scores = knn_predict(train_features, train_labels, test_features, num_classes, k, temperature, chunk_size)
    return (scores.argmax(1).cpu() == test_labels.cpu()).float().mean().item()


@torch.no_grad()
def nearest_neighbours(
    bank_features: torch.Tensor, query_features: torch.Tensor, k: int = 8, exclude_self: bool = False
) -> torch.Tensor:
    """(M, k) indices of the most cosine-similar bank rows of each query (for retrieval pictures).

    With `exclude_self`, the queries are the bank's first M rows and each is left out of its own list.
    """
    bank = F.normalize(bank_features.float(), dim=1)
    similarity = F.normalize(query_features.float(), dim=1) @ bank.T  # (M, N)
    if exclude_self:
        similarity[torch.arange(len(query_features)), torch.arange(len(query_features))] = -math.inf
    return similarity.topk(min(k, bank.shape[0]), dim=1).indices


# ----------------------------------------------------------------------------------------------------------
# Linear probe
# ----------------------------------------------------------------------------------------------------------


@dataclass
class LinearProbeResult:
    """Outcome of `linear_probe`: top-1 accuracy in [0, 1], the trained layer and its input standardization."""

    accuracy: float
    classifier: nn.Linear
    mean: torch.Tensor | None
    std: torch.Tensor | None
    train_accuracy: float


def linear_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int | None = None,
    epochs: int = 100,
    batch_size: int = 256,
    learning_rate: float = 0.1,
    weight_decay: float = 0.0,
    optimizer: str = "sgd",
    standardize: bool = True,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> LinearProbeResult:
    """Linear probe: a linear layer (no BatchNorm) trained with cross-entropy on frozen features.

    This is the common fast variant on features extracted once with the evaluation transform (no
    augmentation), so that hundreds of epochs cost seconds; the papers' protocol (MoCo, solo-learn)
    re-augments images every epoch and scores a little higher. Features are optionally standardized
    with the training set's per-dimension mean and std; the learning rate follows a cosine schedule
    over all steps.

    Args:
        train_features / train_labels: (N, D) features and (N,) labels of the training set.
        test_features / test_labels: (M, D) and (M,) of the evaluation set.
        num_classes: C; inferred from the labels when `None`.
        epochs: passes over the training features.
        batch_size: features per step.
        learning_rate: peak learning rate (0.1 suits SGD on standardized features, 1e-3 AdamW).
        weight_decay: L2 penalty (SGD) or decoupled weight decay (AdamW).
        optimizer: `"sgd"` (momentum 0.9, Nesterov) or `"adamw"`.
        standardize: standardize features with the training statistics first.
        seed: seed of the layer's initialization and of the batch order.
        device: where to train; defaults to the features' device.

    Returns:
        A `LinearProbeResult` with the test top-1 accuracy.
    """
    if optimizer not in ("sgd", "adamw"):
        raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {optimizer!r}")
    device = torch.device(device) if device is not None else train_features.device
    generator = torch.Generator().manual_seed(seed)
    train_x, test_x = train_features.float().to(device), test_features.float().to(device)
    train_y, test_y = train_labels.long().to(device), test_labels.long().to(device)
    num_classes = num_classes or int(max(train_y.max(), test_y.max())) + 1
    mean = std = None
    if standardize:
        mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
        train_x, test_x = (train_x - mean) / std, (test_x - mean) / std

    classifier = nn.Linear(train_x.shape[1], num_classes).to(device)
    with torch.no_grad():
        bound = 1 / math.sqrt(train_x.shape[1])
        classifier.weight.copy_(torch.rand(classifier.weight.shape, generator=generator) * 2 * bound - bound)
        classifier.bias.zero_()
    if optimizer == "sgd":
        opt = torch.optim.SGD(
            classifier.parameters(), learning_rate, momentum=0.9, nesterov=True, weight_decay=weight_decay
        )
    else:
        opt = torch.optim.AdamW(classifier.parameters(), learning_rate, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(train_x) / batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: 0.5 * (1 + math.cos(math.pi * step / (epochs * steps_per_epoch)))
    )
    with torch.enable_grad():
        for _ in range(epochs):
            order = torch.randperm(len(train_x), generator=generator).to(device)
            for start in range(0, len(train_x), batch_size):
                batch = order[start : start + batch_size]
                loss = F.cross_entropy(classifier(train_x[batch]), train_y[batch])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                schedule.step()

    with torch.no_grad():
        accuracy = (classifier(test_x).argmax(1) == test_y).float().mean().item()
        train_accuracy = (classifier(train_x).argmax(1) == train_y).float().mean().item()
    return LinearProbeResult(accuracy, classifier.cpu(), mean, std, train_accuracy)


# ----------------------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------------------


def metric_name(protocol: str, k: int = 200, temperature: float = 0.1) -> str:
    """The name a protocol's top-1 accuracy goes by in results and model cards."""
    names = {
        "knn": f"kNN top-1 (k={k}, T={temperature:g})",
        "linear": "linear probe top-1",
        "finetune": "fine-tuning top-1",
    }
    if protocol not in names:
        raise ValueError(f"protocol must be one of {list(names)}, got {protocol!r}")
    return names[protocol]


def write_results(output_dir: str | os.PathLike, results: dict[str, Any]) -> Path:
    """Write `results` (accuracy and settings) as `output_dir/results.json` and return its path."""
    path = Path(output_dir) / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, sort_keys=False, default=str) + "\n")
    return path


def card_eval_results(
    accuracy: float,
    protocol: str,
    dataset_name: str,
    dataset_type: str,
    dataset_split: str,
    k: int = 200,
    temperature: float = 0.1,
) -> list[dict[str, Any]]:
    """The `model-index` entries of one evaluation, as `sslhub.hub.update_card_eval_results` takes them."""
    return [
        {
            "task_type": "image-classification",
            "dataset_name": dataset_name,
            "dataset_type": dataset_type,
            "dataset_split": dataset_split,
            "metric_type": "accuracy",
            "metric_name": metric_name(protocol, k, temperature),
            "metric_value": round(float(accuracy), 4),
        }
    ]


def update_model_card(folder: str | os.PathLike, entries: list[dict[str, Any]]) -> bool:
    """Merge `entries` into the `model-index` of the model card in `folder` (via `sslhub.hub`).

    Returns:
        False, and changes nothing, when `sslhub.hub` is not available.
    """
    try:
        from .hub.cards import update_card_eval_results
    except ImportError:
        return False
    update_card_eval_results(folder, entries)
    return True

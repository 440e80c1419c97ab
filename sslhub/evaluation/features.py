"""Features of a whole dataset, and the one cache of computed tensors sslhub keeps.

`extract_features` embeds every sample once (also across processes) in eval mode without augmentation.
`cached_tensors` stores any computed tensors (features, a teacher's embeddings, k-means labels) in a
safetensors file tagged with the settings they depend on, and reuses them only for the same settings.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..models.modeling_common import output_embedding


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
def embedded_batches(
    model: nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    how: str = "pooled",
    progress: bool = True,
    description: str = "features",
    total: int | None = None,
) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    """`(batch, embeddings (n, D) float32)` for every batch that holds an image, the model in eval mode
    (its mode is restored at the end); `how` picks the embedding (`output_embedding`: pooled, projection...).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for batch in tqdm(batches, desc=description, disable=not progress, leave=False, total=total):
            if "pixel_values" not in batch:  # every image of this batch was unreadable
                continue
            yield batch, output_embedding(model(batch["pixel_values"].to(device)), how).float()
    finally:
        model.train(was_training)


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
    features, labels, indices = [], [], []
    device = next(model.parameters()).device
    show = progress and (accelerator is None or accelerator.is_main_process)
    for batch, embedding in embedded_batches(model, batches, progress=show, description=description):
        label, index = batch.get("label"), batch.get("index")
        if index is None and accelerator is not None:
            embedding = accelerator.gather_for_metrics(embedding)
            label = accelerator.gather_for_metrics(label.to(device)) if label is not None else None
        features.append(embedding.cpu())
        if label is not None:
            labels.append(label.cpu())
        if index is not None:
            indices.append(index.cpu())
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


def cached_tensors(
    path: str | os.PathLike,
    settings: dict[str, Any],
    compute: Callable[[], dict[str, torch.Tensor | None]],
    accelerator=None,
    collective: bool = True,
) -> tuple[dict[str, torch.Tensor], bool]:
    """The tensors stored at `path` for exactly these `settings`, or computed and stored there.

    Args:
        path: the safetensors file.
        settings: everything the tensors depend on (JSON-serializable); stored in the file and compared.
        compute: returns the tensors by name (None values are left out).
        accelerator: the run's `Accelerator`, when distributed: the main process writes, everyone reads.
        collective: `compute` must run on every process (e.g. sharded feature extraction); otherwise the
            main process computes and the others read its file.

    Returns:
        `(tensors, hit)`, `hit` telling whether the file answered.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    path = Path(path)
    tag = json.dumps(settings, sort_keys=True, default=repr)
    main = accelerator is None or accelerator.is_main_process

    def stored() -> dict[str, torch.Tensor] | None:
        if not path.exists():
            return None
        with safe_open(str(path), framework="pt") as file:
            if (file.metadata() or {}).get("settings") != tag:
                return None
        return load_file(path)

    found = stored()
    if found is not None:
        return found, True
    tensors = None
    if collective or main:
        tensors = {name: t.contiguous() for name, t in compute().items() if t is not None}
    if main:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path) + ".tmp", metadata={"settings": tag})
        os.replace(str(path) + ".tmp", path)  # a crash mid-write never leaves a truncated file
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return (tensors if tensors is not None else stored()), False


def cached_features(
    cache_dir: str | os.PathLike | None,
    settings: dict[str, Any],
    compute: Callable[[], tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]],
    accelerator=None,
) -> tuple[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None], bool]:
    """`(features, labels, indices)` from the cache in `cache_dir` (keyed by the hash of `settings`), or
    computed by `compute` (as `extract_features(..., return_indices=True)`, on every process); `None`
    disables caching. Returns them with whether the cache answered."""
    if cache_dir is None:
        return compute(), False
    names = ("features", "labels", "indices")
    tensors, hit = cached_tensors(
        Path(cache_dir) / f"features-{cache_key(**settings)}.safetensors",
        settings,
        lambda: dict(zip(names, compute(), strict=True)),
        accelerator,
    )
    return tuple(tensors.get(name) for name in names), hit

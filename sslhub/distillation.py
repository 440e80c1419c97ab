"""User side of distillation: load a frozen teacher, cache its embeddings, k-means pseudo-labels.

`load_teacher` turns an sslhub checkpoint, a timm model or a transformers image model into a
`TeacherAdapter` (a frozen eval-mode module returning (N, D) embeddings) for `StudentForDistillation`.
`Renormalize` / `renormalize_for_teacher` hand the student's images to a teacher that expects another
normalization or input size. `kmeans` and `assign_clusters` give the pseudo-labels of the clustering
baseline (CompRess, after ClusterFit).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification

from .models.backbones import check_backbone_name, create_backbone
from .models.configuration_common import check_choice
from .models.modeling_student import TEACHER_OUTPUTS, TeacherAdapter


def _timm_teacher(name: str, output: str, pretrained: bool, model_kwargs: dict[str, Any]) -> TeacherAdapter:
    check_backbone_name(name)
    try:
        if output == "logits":
            import timm

            # The only timm call outside `backbones.py`: `create_backbone` drops the classifier KD needs.
            model = timm.create_model(name, pretrained=pretrained, **model_kwargs)
        else:
            model = create_backbone(name, model_kwargs, pretrained=pretrained)
    except Exception as error:
        if not pretrained:
            raise
        raise RuntimeError(
            f"could not load timm's pretrained weights for {name!r} ({error}); a teacher must be trained: "
            f"fill the Hub cache, or pass pretrained=False for a randomly initialized one (tests only)"
        ) from error
    if output == "logits":
        embedding_dim = model.num_classes
    else:
        embedding_dim = getattr(model, "head_hidden_size", None) or model.num_features
        output = "pooled" if output == "auto" else output
    data_config = model.pretrained_cfg or {}
    input_size = model_kwargs.get("img_size") or (data_config.get("input_size") or (None, None))[-1]
    return TeacherAdapter(
        model,
        output=output,
        embedding_dim=embedding_dim,
        image_mean=tuple(data_config["mean"]) if "mean" in data_config else None,
        image_std=tuple(data_config["std"]) if "std" in data_config else None,
        image_size=input_size,
    )


def _transformers_teacher(
    spec: str, output: str, pretrained: bool, model_kwargs: dict[str, Any]
) -> TeacherAdapter:
    # sslhub configs and models are registered with the Auto classes when the package is imported.
    config = AutoConfig.from_pretrained(spec)
    auto_class = AutoModelForImageClassification if output == "logits" else AutoModel
    if pretrained:
        model = auto_class.from_pretrained(spec, **model_kwargs)
    else:
        model = auto_class.from_config(config, **model_kwargs)
    image_mean = image_std = image_size = None
    if config.model_type.startswith("sslhub_"):
        image_mean, image_std, image_size = (
            tuple(config.image_mean),
            tuple(config.image_std),
            config.image_size,
        )
    else:
        try:
            processor = AutoImageProcessor.from_pretrained(spec)
            image_mean, image_std = tuple(processor.image_mean), tuple(processor.image_std)
            crop = getattr(processor, "crop_size", None) or getattr(processor, "size", None) or {}
            image_size = crop.get("height") or crop.get("shortest_edge")
        except (OSError, ValueError, AttributeError, TypeError):
            pass
        image_size = image_size or getattr(config, "image_size", None)
    return TeacherAdapter(
        model, output=output, image_mean=image_mean, image_std=image_std, image_size=image_size
    )


def check_teacher(spec: str) -> None:
    """Raise (`ValueError`, `OSError`) unless `spec` names a teacher `load_teacher` can find, without loading
    its weights: a timm model name, or a model folder / Hub id whose config resolves."""
    if spec.startswith("timm:"):
        check_backbone_name(spec.removeprefix("timm:"))
    else:
        AutoConfig.from_pretrained(spec)


def load_teacher(
    spec: str,
    output: str = "auto",
    pretrained: bool = True,
    model_kwargs: dict[str, Any] | None = None,
    device: torch.device | str | None = None,
) -> TeacherAdapter:
    """Load a frozen, eval-mode teacher whose `forward(pixel_values)` returns (N, D) embeddings.

    Args:
        spec: `"timm:<name>"` (a timm model), or a folder / Hub id of an sslhub checkpoint (e.g. a MoCo
            model) or of any transformers image model.
        output: which embedding the teacher gives (see `TeacherAdapter`): `"auto"` is an sslhub model's
            projection (else pooled feature; SEED distils the 128-d projection), a timm model's pooled
            feature, a transformers model's `pooler_output` (else the mean of its tokens); `"pooled"`
            (CompRess uses the backbone feature), `"projection"`, `"logits"` (Hinton KD), `"cls"`, `"mean"`.
        pretrained: load the trained weights. `False` builds the architecture with random weights, which is
            only useful in tests.
        model_kwargs: extra keyword arguments for `timm.create_model` or `from_pretrained`.
        device: where to put the teacher.

    Returns:
        A `TeacherAdapter` with `embedding_dim` and, when known, `image_mean`, `image_std` and `image_size`
        (the normalization and input size the teacher expects).
    """
    check_choice("output", output, TEACHER_OUTPUTS)
    model_kwargs = dict(model_kwargs or {})
    if spec.startswith("timm:"):
        teacher = _timm_teacher(spec.removeprefix("timm:"), output, pretrained, model_kwargs)
    else:
        teacher = _transformers_teacher(spec, output, pretrained, model_kwargs)
    if device is not None:
        teacher.to(device)
    if teacher.embedding_dim is None:
        teacher.embedding_dim = _probe_embedding_dim(teacher)
    return teacher


@torch.no_grad()
def _probe_embedding_dim(teacher: TeacherAdapter) -> int:
    parameter = next(teacher.parameters(), None)
    size = teacher.image_size or 224
    images = torch.zeros(1, 3, size, size, device=parameter.device if parameter is not None else None)
    return teacher(images).shape[1]


class Renormalize(nn.Module):
    """Images normalized for one model, re-normalized (and resized) for another.

    Un-normalizing with `(mean, std)` and normalizing with `(target_mean, target_std)` is one affine map
    per channel, `x * std / target_std + (mean - target_mean) / target_std`; the resize (bilinear) commutes
    with it. Without a change of normalization or size it returns its input unchanged.

    Args:
        mean / std: the normalization the images have.
        target_mean / target_std: the normalization wanted; `None` keeps `mean` / `std`.
        target_size: the side of the square output; `None` keeps the input size.
    """

    def __init__(
        self,
        mean: tuple[float, ...] | list[float],
        std: tuple[float, ...] | list[float],
        target_mean: tuple[float, ...] | list[float] | None = None,
        target_std: tuple[float, ...] | list[float] | None = None,
        target_size: int | None = None,
    ) -> None:
        super().__init__()
        mean, std = torch.tensor(mean, dtype=torch.float64), torch.tensor(std, dtype=torch.float64)
        target_mean = mean if target_mean is None else torch.tensor(target_mean, dtype=torch.float64)
        target_std = std if target_std is None else torch.tensor(target_std, dtype=torch.float64)
        scale, shift = std / target_std, (mean - target_mean) / target_std  # (3,), (3,)
        self.changes_normalization = not (
            torch.allclose(scale, torch.ones_like(scale)) and torch.allclose(shift, torch.zeros_like(shift))
        )
        self.register_buffer("scale", scale.float().view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", shift.float().view(1, 3, 1, 1), persistent=False)
        self.target_size = target_size

    @property
    def is_identity(self) -> bool:
        """True when only a change of input size could make it do anything (and no size is set)."""
        return not self.changes_normalization and self.target_size is None

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, 3, S, S) re-normalized, S = `target_size` (default H, W unchanged)."""
        size = self.target_size
        if size is not None and tuple(pixel_values.shape[-2:]) != (size, size):
            pixel_values = F.interpolate(
                pixel_values, size=(size, size), mode="bilinear", align_corners=False, antialias=True
            )
        if self.changes_normalization:
            scale, shift = self.scale.to(pixel_values), self.shift.to(pixel_values)
            pixel_values = pixel_values * scale + shift
        return pixel_values


def renormalize_for_teacher(
    teacher: TeacherAdapter,
    image_mean: tuple[float, ...] | list[float],
    image_std: tuple[float, ...] | list[float],
    image_size: int,
    teacher_image_size: int | None = None,
) -> Renormalize:
    """The map from the student's normalized images to the inputs `teacher` expects.

    Args:
        teacher: a `TeacherAdapter` (e.g. from `load_teacher`); its `image_mean` / `image_std` /
            `image_size`, where known, are the teacher's settings, else the student's are kept.
        image_mean / image_std / image_size: the student's input settings.
        teacher_image_size: the teacher's input size, overriding `teacher.image_size`.
    """
    size = teacher_image_size or teacher.image_size or image_size
    return Renormalize(
        image_mean,
        image_std,
        teacher.image_mean,
        teacher.image_std,
        target_size=None if size == image_size else size,
    )


@torch.no_grad()
def precompute_teacher_embeddings(
    teacher: nn.Module,
    batches: Iterable[torch.Tensor | dict[str, torch.Tensor] | tuple | list],
    input_key: str = "pixel_values",
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Embed a dataset once with the teacher, to train the student from the cache (`teacher_embeddings=`).

    Args:
        teacher: a `TeacherAdapter` (e.g. from `load_teacher`) or any module returning (N, D) tensors.
        batches: an iterable (e.g. a non-shuffling `DataLoader`) of image tensors (N, 3, H, W), of dicts
            holding them under `input_key`, or of tuples whose first element they are.
        input_key: the images' key in dict batches.
        device: where to run the teacher; default the device of its parameters.

    Returns:
        (num_images, D) float32 embeddings on the CPU, in the order of `batches`.
    """
    if device is not None:
        teacher.to(device)
    parameter = next(teacher.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    teacher.eval()
    embeddings = []
    for batch in batches:
        if isinstance(batch, dict):
            images = batch[input_key]
        elif isinstance(batch, (tuple, list)):
            images = batch[0]
        else:
            images = batch
        embeddings.append(teacher(images.to(device)).float().cpu())
    return torch.cat(embeddings)


def _squared_distances(x: torch.Tensor, centroids: torch.Tensor, chunk_size: int) -> Iterable[torch.Tensor]:
    """Yield (chunk, k) squared Euclidean distances, `|x|^2 - 2 x.c + |c|^2`, for chunks of rows of x."""
    centroid_norms = centroids.pow(2).sum(dim=1)  # (k,)
    for start in range(0, x.shape[0], chunk_size):
        chunk = x[start : start + chunk_size]
        distances = chunk.pow(2).sum(dim=1, keepdim=True) - 2 * chunk @ centroids.T + centroid_norms  # (n, k)
        yield distances.clamp_min_(0)


@torch.no_grad()
def assign_clusters(
    features: torch.Tensor, centroids: torch.Tensor, chunk_size: int = 16384
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid of every feature vector.

    Args:
        features: (N, D) vectors.
        centroids: (k, D) cluster centres.
        chunk_size: rows per distance block, bounding memory to `chunk_size x k`.

    Returns:
        `(labels, squared_distances)`: (N,) long indices of the nearest centroid and (N,) the squared
        distance to it.
    """
    dtype = torch.promote_types(features.dtype, torch.float32)
    x, c = features.to(dtype), centroids.to(device=features.device, dtype=dtype)
    labels, distances = [], []
    for block in _squared_distances(x, c, chunk_size):
        distance, label = block.min(dim=1)
        labels.append(label)
        distances.append(distance)
    return torch.cat(labels), torch.cat(distances)


@torch.no_grad()
def kmeans(
    features: torch.Tensor,
    num_clusters: int,
    iters: int = 50,
    seed: int = 0,
    chunk_size: int = 16384,
) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means (Lloyd's algorithm) with k-means++ initialization (Arthur & Vassilvitskii 2007), in torch.

    Minimizes the sum of squared Euclidean distances of the vectors to their cluster centre. A cluster
    that loses all its members is re-seeded with the vector farthest from its own centre. For cosine
    clustering of embeddings, L2-normalize `features` first.

    Args:
        features: (N, D) vectors, on any device.
        num_clusters: k, at most N.
        iters: maximum number of Lloyd iterations; stops earlier once no assignment changes.
        seed: seed of the k-means++ sampling (results are reproducible for a given seed and device).
        chunk_size: rows per distance block, bounding memory to `chunk_size x k`.

    Returns:
        `(centroids, labels)`: (k, D) centres and (N,) long cluster index of every vector.
    """
    num_points = features.shape[0]
    if not 1 <= num_clusters <= num_points:
        raise ValueError(
            f"num_clusters must be in [1, {num_points}] (the number of vectors), got {num_clusters}"
        )
    dtype = torch.promote_types(features.dtype, torch.float32)
    x = features.to(dtype)
    generator = torch.Generator(device="cpu").manual_seed(seed)

    # k-means++: each new centre is drawn with probability proportional to the squared distance to the
    # nearest centre chosen so far.
    first = int(torch.randint(num_points, (1,), generator=generator))
    centroids = x.new_empty(num_clusters, x.shape[1])
    centroids[0] = x[first]
    nearest = torch.cat(list(_squared_distances(x, centroids[:1], chunk_size)))[:, 0]  # (N,)
    for index in range(1, num_clusters):
        weights = nearest.double().cpu()
        if weights.sum() <= 0:  # fewer distinct points than clusters: any point will do
            weights = torch.ones_like(weights)
        choice = int(torch.multinomial(weights, 1, generator=generator))
        centroids[index] = x[choice]
        new = torch.cat(list(_squared_distances(x, centroids[index : index + 1], chunk_size)))[:, 0]
        nearest = torch.minimum(nearest, new)

    labels = None
    for _ in range(max(iters, 1)):
        new_labels, distances = assign_clusters(x, centroids, chunk_size)
        if labels is not None and torch.equal(new_labels, labels):
            break
        labels = new_labels
        counts = torch.bincount(labels, minlength=num_clusters)  # (k,)
        sums = torch.zeros_like(centroids).index_add_(0, labels, x)  # (k, D)
        centroids = sums / counts.clamp_min(1).unsqueeze(1).to(dtype)
        empty = (counts == 0).nonzero().flatten()
        if len(empty):
            farthest = distances.topk(len(empty)).indices
            centroids[empty] = x[farthest]
    labels, _ = assign_clusters(x, centroids, chunk_size)  # consistent with the final centres
    return centroids, labels


__all__ = [
    "Renormalize",
    "assign_clusters",
    "check_teacher",
    "kmeans",
    "load_teacher",
    "precompute_teacher_embeddings",
    "renormalize_for_teacher",
]

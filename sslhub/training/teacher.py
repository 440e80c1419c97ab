"""The teacher of distillation: any model by name, frozen, with its inputs adapted from the student's.

`load_teacher` turns an sslhub checkpoint, a timm model or a transformers image model (loaded through
`sslhub.evaluation.load_model`) into a `TeacherAdapter` (a frozen eval-mode module returning (N, D)
embeddings) for `StudentForDistillation`. `Renormalize` / `renormalize_for_teacher` hand the student's
images to a teacher that expects another normalization or input size.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..evaluation.reference import check_model, load_model
from ..models.configuration_common import check_choice
from ..models.modeling_common import EMBEDDINGS
from ..models.modeling_student import TeacherAdapter

check_teacher = check_model  # a teacher is any model `load_model` can find


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
        A `TeacherAdapter` with `embedding_dim`, `image_mean`, `image_std` and `image_size` (the
        normalization and input size the teacher expects).
    """
    check_choice("output", output, EMBEDDINGS)
    reference = load_model(
        spec,
        pretrained=pretrained,
        random_init=not pretrained,
        classifier=output == "logits",
        model_kwargs=model_kwargs,
    )
    model, embedding_dim = reference.model, None
    if reference.kind == "timm":  # a headless timm model returns its pooled feature
        if output == "logits":
            embedding_dim = model.num_classes
        else:
            embedding_dim = getattr(model, "head_hidden_size", None) or model.num_features
            output = "pooled" if output == "auto" else output
    teacher = TeacherAdapter(
        model,
        output=output,
        embedding_dim=embedding_dim,
        image_mean=reference.mean,
        image_std=reference.std,
        image_size=reference.image_size,
    )
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

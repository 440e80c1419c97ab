"""Configuration of a student distilled from a frozen self-supervised teacher.

Losses: Hinton KD (Hinton et al. 2015), embedding regression (with BN on the target, as in CompRess'
baseline), SEED (Fang et al. 2021), CompRess 1q/2q (Koohpayegani et al. 2020), and k-means pseudo-labels
with cross-entropy (the clustering baseline of CompRess, after ClusterFit).
"""

from __future__ import annotations

from typing import Any

from .configuration_common import SSLHubConfig, check_choice, check_positive

DISTILLATION_LOSSES = ("kl", "mse", "seed", "compress_1q", "compress_2q", "cluster")
QUEUE_LOSSES = ("seed", "compress_1q", "compress_2q")

# The papers' defaults, used where a field is left at None.
DEFAULT_TEMPERATURE = {"kl": 4.0, "seed": 0.2, "compress_1q": 0.04, "compress_2q": 0.04}
DEFAULT_TEACHER_TEMPERATURE = {"seed": 1e-4, "compress_1q": 0.04, "compress_2q": 0.04}
DEFAULT_QUEUE_SIZE = {"seed": 65536, "compress_1q": 128000, "compress_2q": 128000}


class StudentConfig(SSLHubConfig):
    """Architecture and loss settings of a distilled student. The teacher itself is never part of it.

    Args:
        backbone: timm model name of the student (any CNN or ViT).
        backbone_kwargs: extra keyword arguments for `timm.create_model`.
        small_input_stem: for ResNets on 32x32 images: 3x3 stride-1 stem conv and no max-pool.
        loss: `"kl"` (Hinton KD on teacher logits), `"mse"` (regression of the teacher embedding),
            `"seed"` (SEED), `"compress_1q"` / `"compress_2q"` (CompRess with one or two anchor banks),
            `"cluster"` (cross-entropy on the teacher's k-means pseudo-labels).
        teacher_dim: width of the teacher's embedding (its number of classes for `"kl"`); the student's
            projector maps to this width. 128 is the MoCo-v2 projection SEED distils; CompRess uses the
            2048-d ResNet-50 feature.
        projector_num_layers: linear layers of the student's projection head; 0 means none (then the pooled
            feature must already have `teacher_dim` values, except for `"compress_2q"` and `"cluster"`).
        projector_hidden_size: hidden width of the projector; `None` uses the backbone width.
        projector_batch_norm: BatchNorm after the projector's hidden layers.
        temperature: softmax temperature of the student (the shared T for `"kl"`); `None` takes the paper's
            default: kl 4.0, seed 0.2, compress 0.04.
        teacher_temperature: softmax temperature of the teacher's similarities; `None` takes seed 1e-4
            (the SEED authors' code) or compress 0.04.
        queue_size: size of the teacher (and, for 2q, student) embedding queue; `None` takes seed 65536,
            compress 128000, and 0 for the losses without a queue.
        mse_target_batch_norm: `"mse"` regresses a non-affine BatchNorm of the teacher embedding (CompRess
            reports 52.2 -> 58.2 ImageNet linear top-1 for a ResNet-18 with it).
        num_clusters: k of the k-means pseudo-labels for `"cluster"` (16000, ClusterFit's ImageNet setting).
        teacher_name: where the teacher came from (Hub id, `timm:<name>`), for provenance only.
    """

    model_type = "sslhub_student"

    backbone: str = "resnet18"
    backbone_kwargs: dict[str, Any] | None = None
    small_input_stem: bool = False
    loss: str = "seed"
    teacher_dim: int = 128
    projector_num_layers: int = 2
    projector_hidden_size: int | None = None
    projector_batch_norm: bool = False
    temperature: float | None = None
    teacher_temperature: float | None = None
    queue_size: int | None = None
    mse_target_batch_norm: bool = True
    num_clusters: int = 16000
    teacher_name: str | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        check_choice("loss", self.loss, DISTILLATION_LOSSES)
        check_positive("teacher_dim", self.teacher_dim)
        check_positive("num_clusters", self.num_clusters)
        if self.projector_num_layers < 0:
            raise ValueError(f"projector_num_layers must be >= 0, got {self.projector_num_layers}")
        if self.projector_hidden_size is not None:
            check_positive("projector_hidden_size", self.projector_hidden_size)
        if self.temperature is None:
            self.temperature = DEFAULT_TEMPERATURE.get(self.loss, 1.0)
        if self.teacher_temperature is None:
            self.teacher_temperature = DEFAULT_TEACHER_TEMPERATURE.get(self.loss, self.temperature)
        check_positive("temperature", self.temperature)
        check_positive("teacher_temperature", self.teacher_temperature)
        if self.queue_size is None:
            self.queue_size = DEFAULT_QUEUE_SIZE.get(self.loss, 0)
        if self.loss in QUEUE_LOSSES:
            check_positive("queue_size", self.queue_size)
        elif self.queue_size != 0:
            raise ValueError(
                f"queue_size is only used by the losses {list(QUEUE_LOSSES)}; "
                f"set queue_size=0 for loss={self.loss!r} (got {self.queue_size})"
            )
        from .backbones import check_backbone_name

        check_backbone_name(self.backbone)

    @property
    def has_queue(self) -> bool:
        """Whether the loss keeps a queue of teacher embeddings (SEED, CompRess)."""
        return self.loss in QUEUE_LOSSES


__all__ = ["StudentConfig"]

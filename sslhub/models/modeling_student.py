"""Self-supervised distillation as Hugging Face models: a small student learns from a large frozen teacher.

- `StudentModel`: the student encoder (backbone + projector), what downstream code loads.
- `StudentForImageClassification`: the student encoder with a linear head, for linear probing or fine-tuning.
- `StudentForDistillation(config, teacher=...)`: the student, the distillation loss (Hinton KD, regression,
  SEED, CompRess 1q/2q, k-means cluster cross-entropy) and its queues. The teacher is held outside the
  module tree: it is never saved, never trained and never in `parameters()`.
- `TeacherAdapter`: wraps any teacher (sslhub, timm or transformers model) so that it returns an (N, D)
  embedding tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import ModelOutput

from .backbones import create_backbone
from .configuration_common import check_choice
from .configuration_student import StudentConfig
from .distributed import gather_without_grad
from .heads import projection_head
from .losses_distillation import (
    cluster_cross_entropy,
    compress_kl,
    embedding_regression_mse,
    knowledge_distillation_kl,
    seed_cross_entropy,
)
from .modeling_common import (
    EMBEDDINGS,
    EncoderMixin,
    EncoderOutput,
    ImageClassifierMixin,
    SSLHubPreTrainedModel,
    output_embedding,
    returns_dict,
)
from .momentum import enqueue, random_queue

# State of `StudentForDistillation` outside the student encoder (queues, cluster head, target BN).
_LOSS_STATE_KEYS = [
    r"^teacher_queue",
    r"^student_queue",
    r"^queue_ptr",
    r"^cluster_head\.",
    r"^target_norm\.",
]


def _is_timm_model(model: nn.Module) -> bool:
    return all(hasattr(model, name) for name in ("forward_features", "forward_head", "pretrained_cfg"))


class TeacherAdapter(nn.Module):
    """A frozen teacher whose `forward(pixel_values)` returns an (N, D) embedding tensor.

    It is always in eval mode (`train()` is a no-op) and has no trainable parameters.

    Args:
        model: an sslhub model (`projection` / `pooler_output`), a timm model or a transformers image model.
        output: which embedding to return (see `output_embedding`). For a timm model `"pooled"`
            is its pre-logits feature (`forward_head(..., pre_logits=True)`) and `"logits"` its classifier
            output; `"auto"` calls the model as is.
        embedding_dim: width D of the embedding, when known.
        image_mean / image_std: the input normalization the teacher expects, when known.
        image_size: the input size the teacher was trained at, when known.
    """

    def __init__(
        self,
        model: nn.Module,
        output: str = "auto",
        embedding_dim: int | None = None,
        image_mean: tuple[float, ...] | None = None,
        image_std: tuple[float, ...] | None = None,
        image_size: int | None = None,
    ) -> None:
        super().__init__()
        check_choice("output", output, EMBEDDINGS)
        self.model = model
        self.output = output
        self.embedding_dim = embedding_dim
        self.image_mean = image_mean
        self.image_std = image_std
        self.image_size = image_size
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> TeacherAdapter:
        """A teacher stays in eval mode (frozen BN statistics, no dropout) whatever `mode` is."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Embed (N, 3, H, W) images normalized as the teacher expects; returns (N, D) without gradient."""
        if self.model.training:  # someone switched the wrapped model itself to train mode
            self.model.eval()
        if self.output in ("pooled", "logits") and _is_timm_model(self.model):
            features = self.model.forward_features(pixel_values)
            return self.model.forward_head(features, pre_logits=self.output == "pooled")
        return output_embedding(self.model(pixel_values), self.output)


StudentModelOutput = EncoderOutput  # its projection has the teacher's width


@dataclass
class StudentForDistillationOutput(ModelOutput):
    """Output of `StudentForDistillation`.

    Args:
        loss: the distillation loss.
        logits: the student's logits inside the loss: class logits (kl), similarity logits over
            `[own teacher key, queue]` (N, 1 + K, seed) or over the anchors (N, K, compress), cluster logits
            (N, num_clusters, cluster); `None` for mse.
        student_embeddings: (N, D) the student's embedding (L2-normalized for seed and compress).
        teacher_embeddings: (N, teacher_dim) the teacher's embedding (L2-normalized for seed and compress),
            without gradient; `None` for cluster when none was given.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    student_embeddings: torch.Tensor | None = None
    teacher_embeddings: torch.Tensor | None = None


class StudentPreTrainedModel(SSLHubPreTrainedModel):
    """Base class of the student models: the config class and the prefix of the student's weights."""

    config_class = StudentConfig
    base_model_prefix = "student"
    # Loading the encoder from a distillation checkpoint leaves out the loss state: not worth a warning.
    _keys_to_ignore_on_load_unexpected = _LOSS_STATE_KEYS


class StudentModel(EncoderMixin, StudentPreTrainedModel):
    """The student encoder: a timm backbone and (optionally) a projection head to the teacher's width.

    Backbone weights sit under `backbone.`; stripped of that prefix they load into
    `timm.create_model(config.backbone, num_classes=0)`.
    """

    def __init__(self, config: StudentConfig) -> None:
        super().__init__(config)
        self.backbone = create_backbone(config.backbone, config.backbone_kwargs, config.small_input_stem)
        self.num_features = self.backbone.num_features
        self.projector = projection_head(
            self.num_features,
            config.projector_num_layers,
            config.projector_hidden_size,
            config.teacher_dim,
            config.projector_batch_norm,
        )
        self.embedding_dim = config.teacher_dim if self.projector is not None else self.num_features
        self.post_init()


class StudentForImageClassification(ImageClassifierMixin, StudentPreTrainedModel):
    """The student encoder with a linear classifier on the pooled embedding (linear probe or fine-tuning).

    Loads the encoder from any student folder (`StudentModel` or `StudentForDistillation`) with a new
    classifier; `forward` and the loss of `config.problem_type`: see `ImageClassifierMixin`.
    """

    _keys_to_ignore_on_load_unexpected = [*_LOSS_STATE_KEYS, r"projector\."]

    def __init__(self, config: StudentConfig) -> None:
        super().__init__(config)
        self._init_classifier(StudentModel(config))


class StudentForDistillation(StudentPreTrainedModel):
    """Distillation of a frozen teacher into the student, with the loss chosen by `config.loss`.

    Each call of `forward` in training mode is one step:
    1. the student embeds `pixel_values` (projector output, else the pooled feature);
    2. the teacher embeds `teacher_pixel_values` (default: the same images) without gradient, unless
       precomputed `teacher_embeddings` are given;
    3. the loss: `kl` (Hinton KD on logits), `mse` (regression, optionally of a non-affine BatchNorm of the
       target), `seed` / `compress_1q` / `compress_2q` (similarity distributions over a queue of teacher
       embeddings, and for 2q a parallel queue of student embeddings), or `cluster` (cross-entropy to the
       `pseudo_labels` of k-means on teacher embeddings, through a linear cluster head);
    4. the embeddings of all processes are enqueued, replacing the oldest.

    The teacher: any module returning an (N, teacher_dim) tensor, or an sslhub / timm / transformers model,
    which is wrapped in `TeacherAdapter` (see `sslhub.training.load_teacher`). It is frozen, kept in eval
    mode and held outside the module tree, so it is absent from `state_dict()`, `parameters()`,
    `save_pretrained` and DDP. Device placement: `.to()` / `.cuda()` / `.half()` of this model apply to the
    teacher too; should the teacher sit elsewhere, its inputs are moved to its device and its embeddings back.
    `from_pretrained` loads without a teacher; attach one with `teacher=` there or with `set_teacher`. The
    losses that need the teacher then raise unless `teacher_embeddings` are passed. From a `StudentModel`
    folder the queues are drawn afresh (pointer 0); from a `StudentForDistillation` folder they are as saved.
    """

    # Settled by `_after_load` (fresh queues) and `_init_weights` when a checkpoint lacks them,
    # e.g. when distillation starts from a `StudentModel` folder.
    _keys_to_ignore_on_load_missing = _LOSS_STATE_KEYS

    def __init__(self, config: StudentConfig, teacher: nn.Module | None = None) -> None:
        super().__init__(config)
        self.student = StudentModel(config)
        width = self.student.embedding_dim
        if config.loss not in ("compress_2q", "cluster") and width != config.teacher_dim:
            raise ValueError(
                f"loss={config.loss!r} compares student and teacher embeddings directly, but the student's "
                f"pooled feature has {width} values and teacher_dim={config.teacher_dim}: "
                f"set projector_num_layers >= 1"
            )
        self.cluster_head = nn.Linear(width, config.num_clusters) if config.loss == "cluster" else None
        self.target_norm = None
        if config.loss == "mse" and config.mse_target_batch_norm:
            self.target_norm = nn.BatchNorm1d(config.teacher_dim, affine=False)
        teacher_queue = student_queue = queue_ptr = None
        if config.has_queue:
            teacher_queue = random_queue(config.queue_size, config.teacher_dim)
            queue_ptr = torch.zeros(1, dtype=torch.long)
            if config.loss == "compress_2q":
                student_queue = random_queue(config.queue_size, width)
        # Absent (None) buffers are left out of the state dict.
        self.register_buffer("teacher_queue", teacher_queue)  # (K, teacher_dim), oldest at queue_ptr
        self.register_buffer("student_queue", student_queue)  # (K, width) 2q: same images, same order
        self.register_buffer("queue_ptr", queue_ptr)
        object.__setattr__(self, "_teacher", None)
        self.set_teacher(teacher)
        self.post_init()

    # -- the teacher, outside the module tree ------------------------------------------------------------

    @property
    def teacher(self) -> TeacherAdapter | None:
        """The frozen teacher (a `TeacherAdapter`), or `None`."""
        return self._teacher

    def set_teacher(self, teacher: nn.Module | None) -> None:
        """Attach (or with `None` remove) the teacher: it is frozen, put in eval mode and never registered.

        A module that is not a `TeacherAdapter` is wrapped in one with `output="auto"`.
        """
        if teacher is not None and not isinstance(teacher, TeacherAdapter):
            teacher = TeacherAdapter(teacher)
        if teacher is not None:
            teacher.requires_grad_(False).eval()
        object.__setattr__(self, "_teacher", teacher)

    def __setattr__(self, name: str, value) -> None:
        # `model.teacher = m` would otherwise register `m` as a submodule (saved, trained, wrapped by DDP).
        if name == "teacher":
            self.set_teacher(value)
        else:
            super().__setattr__(name, value)

    def _apply(self, fn, *args, **kwargs):
        # `.to()`, `.cuda()`, `.half()` ... reach every tensor through `_apply`: the teacher follows the student.
        super()._apply(fn, *args, **kwargs)
        if self._teacher is not None:
            self._teacher._apply(fn, *args, **kwargs)
        return self

    # -- state ---------------------------------------------------------------------------------------------

    def _after_load(self, loaded: set[str]) -> None:
        super()._after_load(loaded)
        fresh = False
        for name in ("teacher_queue", "student_queue"):
            queue = getattr(self, name)
            if queue is not None and name not in loaded:
                queue.copy_(random_queue(*queue.shape, device=queue.device, dtype=queue.dtype))
                fresh = True
        if self.queue_ptr is not None and (fresh or "queue_ptr" not in loaded):
            self.queue_ptr.zero_()

    @torch.no_grad()
    def _teacher_embeddings(
        self, pixel_values: torch.Tensor, teacher_pixel_values: torch.Tensor | None, like: torch.Tensor
    ) -> torch.Tensor:
        if self._teacher is None:
            raise ValueError(
                f"loss={self.config.loss!r} needs the teacher's embeddings: build StudentForDistillation with "
                f"`teacher=...` (or call `set_teacher`), or pass precomputed `teacher_embeddings`"
            )
        images = pixel_values if teacher_pixel_values is None else teacher_pixel_values
        parameter = next(self._teacher.parameters(), None)
        if parameter is not None:
            images = images.to(parameter.device)
        return self._teacher(images).to(like.device)

    def forward(
        self,
        pixel_values: torch.Tensor,
        teacher_pixel_values: torch.Tensor | None = None,
        teacher_embeddings: torch.Tensor | None = None,
        pseudo_labels: torch.Tensor | None = None,
        update_queue: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> StudentForDistillationOutput | tuple:
        """One distillation step.

        Args:
            pixel_values: (N, 3, H, W) images normalized for the student.
            teacher_pixel_values: (N, 3, H', W') the same images normalized for the teacher, when it expects
                another normalization or size; default `pixel_values`.
            teacher_embeddings: (N, teacher_dim) precomputed (cached) teacher embeddings; the teacher is
                then not run.
            pseudo_labels: (N,) k-means cluster index of each image's teacher embedding (loss `cluster`).
            update_queue: enqueue this batch's embeddings; defaults to `self.training`.
        """
        config = self.config
        output = self.student(pixel_values, return_dict=True)
        student = output.projection if output.projection is not None else output.pooler_output  # (N, D)
        teacher, logits = teacher_embeddings, None
        if config.loss == "cluster":
            if pseudo_labels is None:
                raise ValueError(
                    "loss='cluster' needs `pseudo_labels`: the k-means cluster of each image's teacher "
                    "embedding (see `sslhub.training.kmeans` and `assign_clusters`)"
                )
            logits = self.cluster_head(student)  # (N, num_clusters)
            loss = cluster_cross_entropy(logits, pseudo_labels)
            return self._output(loss, logits, student, teacher, returns_dict(self.config, return_dict))

        if teacher is None:
            teacher = self._teacher_embeddings(pixel_values, teacher_pixel_values, like=student)
        teacher = teacher.detach()
        if teacher.shape != (student.shape[0], config.teacher_dim):
            raise ValueError(
                f"teacher embeddings have shape {tuple(teacher.shape)}, expected "
                f"({student.shape[0]}, teacher_dim={config.teacher_dim})"
            )
        if config.loss == "kl":
            logits = student
            loss = knowledge_distillation_kl(student, teacher, config.temperature)
        elif config.loss == "mse":
            target = self.target_norm(teacher) if self.target_norm is not None else teacher
            loss = embedding_regression_mse(student, target)
        else:
            student, teacher = F.normalize(student, dim=1), F.normalize(teacher, dim=1)
            # Clones: the queues change in place below, after autograd saved them for the backward pass.
            teacher_bank = self.teacher_queue.clone().detach()
            if config.loss == "seed":
                loss, logits = seed_cross_entropy(
                    student, teacher, teacher_bank, config.temperature, config.teacher_temperature
                )
            else:
                student_bank = self.student_queue.clone().detach() if self.student_queue is not None else None
                loss, logits = compress_kl(
                    student,
                    teacher,
                    teacher_bank,
                    student_bank,
                    config.temperature,
                    config.teacher_temperature,
                )
            if self.training if update_queue is None else update_queue:
                self._enqueue(student, teacher)
        return self._output(loss, logits, student, teacher, returns_dict(self.config, return_dict))

    @torch.no_grad()
    def _enqueue(self, student: torch.Tensor, teacher: torch.Tensor) -> None:
        if self.student_queue is not None:  # both queues advance together: read the pointer before it moves
            enqueue(self.student_queue, self.queue_ptr.clone(), gather_without_grad(student.detach()))
        enqueue(self.teacher_queue, self.queue_ptr, gather_without_grad(teacher))

    @staticmethod
    def _output(loss, logits, student, teacher, return_dict) -> StudentForDistillationOutput | tuple:
        output = StudentForDistillationOutput(
            loss=loss, logits=logits, student_embeddings=student, teacher_embeddings=teacher
        )
        return output if return_dict else output.to_tuple()


__all__ = [
    "StudentForDistillation",
    "StudentForImageClassification",
    "StudentModel",
    "StudentPreTrainedModel",
    "TeacherAdapter",
]

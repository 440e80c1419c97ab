"""MoCo as Hugging Face models: momentum contrast (He et al. 2020), v2 (Chen et al. 2020), v3 (Chen, Xie, He 2021).

- `MoCoModel`: the query encoder (backbone + projector), what downstream code loads.
- `MoCoForPreTraining`: query and key (momentum) encoders, the key queue and the InfoNCE loss.
- `MoCoForImageClassification`: the encoder with a linear head, for linear probing or fine-tuning.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.utils import ModelOutput

from .backbones import create_backbone
from .configuration_moco import MoCoConfig
from .distributed import gather_without_grad, rank, shuffle_bn
from .heads import MLPHead, projection_head
from .losses_contrastive import info_nce_in_batch, info_nce_with_queue
from .modeling_common import (
    EncoderMixin,
    EncoderOutput,
    ImageClassifierMixin,
    SSLHubPreTrainedModel,
    returns_dict,
)
from .momentum import enqueue, momentum_update, random_queue

MoCoModelOutput = EncoderOutput  # last_hidden_state, pooler_output, hidden_states, projection


@dataclass
class MoCoForPreTrainingOutput(ModelOutput):
    """Output of `MoCoForPreTraining`.

    Args:
        loss: the InfoNCE loss (summed over both view orders with `symmetric_loss`).
        logits: (N, 1 + K) logits of the first view order; the positive is column 0 with a queue,
            column `rank * N + i` for in-batch keys.
        query_embeddings: (N, D) L2-normalized queries of the first view.
        key_embeddings: (N, D) L2-normalized keys of the second view (no gradient).
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    query_embeddings: torch.Tensor | None = None
    key_embeddings: torch.Tensor | None = None


class MoCoPreTrainedModel(SSLHubPreTrainedModel):
    """Base class of the MoCo models: the config class and the prefix of the query encoder's weights."""

    config_class = MoCoConfig
    base_model_prefix = "query_encoder"
    # Loading an encoder from a pre-training checkpoint leaves out the key branch: not worth a warning.
    _keys_to_ignore_on_load_unexpected = [r"key_encoder\.", r"^queue", r"^predictor\."]


class MoCoModel(EncoderMixin, MoCoPreTrainedModel):
    """The MoCo query encoder: a timm backbone and (optionally) the projection head.

    Backbone weights sit under `backbone.`; stripped of that prefix they load into
    `timm.create_model(config.backbone, num_classes=0)`.
    """

    def __init__(self, config: MoCoConfig) -> None:
        super().__init__(config)
        self.backbone = create_backbone(
            config.backbone,
            config.backbone_kwargs,
            config.small_input_stem,
            position_embedding=config.position_embedding,
        )
        self.num_features = self.backbone.num_features
        self.projector = projection_head(
            self.num_features,
            config.projector_num_layers,
            config.projector_hidden_size,
            config.projection_dim,
            config.projector_batch_norm,
            config.projector_last_batch_norm,
            bias=config.mlp_bias,
        )
        self.post_init()


class MoCoForPreTraining(MoCoPreTrainedModel):
    """MoCo pre-training: query encoder (+ predictor for v3), key (momentum) encoder, key queue, InfoNCE.

    Each call of `forward` in training mode is one MoCo step for the two views:
    1. the key encoder is updated as the EMA of the query encoder (before keys are computed);
    2. keys are computed without gradient, with shuffle-BN when configured (across processes; in one
       process over `shuffle_bn_splits` sub-batches of the shuffled batch);
    3. InfoNCE against the queue (v1/v2) or the gathered in-batch keys (v3), summed over both view orders
       if symmetric;
    4. the keys of all processes are enqueued, replacing the oldest (v1/v2).

    The key encoder starts as an exact copy of the query encoder and never receives gradients.
    `from_pretrained` of a `MoCoModel` folder starts pre-training: the key encoder is a copy of the loaded
    query encoder (weights and BatchNorm statistics), the queue is drawn afresh (pointer 0). From a
    `MoCoForPreTraining` folder it continues: key encoder, queue and pointer as saved. Either way the key
    encoder is frozen.
    """

    # Absent from a `MoCoModel` folder, not worth a warning: `_after_load` copies the query encoder into the
    # key encoder and draws a fresh queue; a v3 predictor starts from its initialization, as in a new model.
    _keys_to_ignore_on_load_missing = [r"^key_encoder\.", r"^queue", r"^predictor\."]

    def __init__(self, config: MoCoConfig) -> None:
        super().__init__(config)
        self.query_encoder = MoCoModel(config)
        if self.query_encoder.projector is None:
            raise ValueError("MoCoForPreTraining needs a projector: set projector_num_layers >= 1")
        self.predictor = None
        if config.predictor_num_layers > 0:
            self.predictor = MLPHead(
                config.projection_dim,
                config.predictor_hidden_size,
                config.projection_dim,
                num_layers=config.predictor_num_layers,
                batch_norm=True,
                last_batch_norm=config.predictor_last_batch_norm,
                bias=config.mlp_bias,
            )
        self.key_encoder = copy.deepcopy(self.query_encoder)
        self.key_encoder.requires_grad_(False)
        self.momentum = config.momentum  # the recipe may schedule it
        if config.has_queue:
            queue = random_queue(config.queue_size, config.projection_dim)
            self.register_buffer("queue", queue)  # (K, D), L2-normalized keys, oldest at queue_ptr
            self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))
        else:
            self.queue = self.queue_ptr = None
        self.post_init()

    def _after_load(self, loaded: set[str]) -> None:
        super()._after_load(loaded)
        key_state = self.key_encoder.state_dict()
        if not all(f"key_encoder.{name}" in loaded for name in key_state):
            # No (complete) key encoder in the checkpoint, e.g. a `MoCoModel` folder: start as a copy.
            self.key_encoder.load_state_dict(self.query_encoder.state_dict())
        self.key_encoder.requires_grad_(False)  # loading rebuilt its parameters with requires_grad=True
        if self.queue is not None and "queue" not in loaded:
            self.queue.copy_(
                random_queue(*self.queue.shape, device=self.queue.device, dtype=self.queue.dtype)
            )
        if self.queue is not None and ("queue" not in loaded or "queue_ptr" not in loaded):
            self.queue_ptr.zero_()

    @torch.no_grad()
    def update_key_encoder(self) -> None:
        """One momentum update of the key encoder towards the query encoder (He et al. 2020, Eq. 2): what
        `forward` does first with `update_key_encoder=True`; a recipe may call it on its own, e.g. to time it."""
        momentum_update(self.key_encoder, self.query_encoder, self.momentum)

    def _queries(self, pixel_values: torch.Tensor) -> torch.Tensor:
        query = self.query_encoder(pixel_values, return_dict=True).projection
        if self.predictor is not None:
            query = self.predictor(query)
        return F.normalize(query, dim=1)

    @torch.no_grad()
    def _keys(self, pixel_values: torch.Tensor) -> torch.Tensor:
        def encode(images: torch.Tensor) -> torch.Tensor:
            return F.normalize(self.key_encoder(images, return_dict=True).projection, dim=1)  # (n, D)

        if self.training and self.config.key_batch_norm == "shuffle":
            return shuffle_bn(encode, pixel_values, self.config.shuffle_bn_splits, module=self.key_encoder)
        return encode(pixel_values)

    def _contrast(self, query: torch.Tensor, key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.queue is not None:
            return info_nce_with_queue(query, key, self.queue.clone().detach(), self.config.temperature)
        keys = gather_without_grad(key)
        return info_nce_in_batch(
            query, keys, self.config.temperature, positive_offset=rank() * query.shape[0]
        )

    def forward(
        self,
        query_pixel_values: torch.Tensor,
        key_pixel_values: torch.Tensor,
        update_key_encoder: bool | None = None,
        enqueue_keys: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> MoCoForPreTrainingOutput | tuple:
        """One MoCo step on two augmented views of the same images.

        Args:
            query_pixel_values: (N, 3, H, W) first views.
            key_pixel_values: (N, 3, H, W) second views.
            update_key_encoder: apply the momentum update first; defaults to `self.training`. With gradient
                accumulation, pass True only on the first micro-batch of an optimizer step.
            enqueue_keys: enqueue this batch's keys afterwards; defaults to `update_key_encoder`.
        """
        update = self.training if update_key_encoder is None else update_key_encoder
        enqueue_keys = update if enqueue_keys is None else enqueue_keys
        if update:
            self.update_key_encoder()

        query = self._queries(query_pixel_values)
        key = self._keys(key_pixel_values)
        loss, logits = self._contrast(query, key)
        new_keys = key
        if self.config.symmetric_loss:
            query_2 = self._queries(key_pixel_values)
            key_2 = self._keys(query_pixel_values)
            loss_2, _ = self._contrast(query_2, key_2)
            # The sum, as v3 (each term scaled by 2T) and the authors' v1/v2 CIFAR-10 demo (loss_12 + loss_21).
            loss = loss + loss_2
            new_keys = torch.cat([key, key_2])

        if enqueue_keys and self.queue is not None:
            enqueue(self.queue, self.queue_ptr, gather_without_grad(new_keys))

        output = MoCoForPreTrainingOutput(
            loss=loss, logits=logits, query_embeddings=query, key_embeddings=key
        )
        return output if returns_dict(self.config, return_dict) else output.to_tuple()


class MoCoForImageClassification(ImageClassifierMixin, MoCoPreTrainedModel):
    """The MoCo query encoder with a linear classifier on the pooled embedding (linear probe or fine-tuning).

    Loads the encoder from any MoCo folder (`MoCoModel` or `MoCoForPreTraining`) with a new classifier;
    `forward` and the loss of `config.problem_type`: see `ImageClassifierMixin`.
    """

    _keys_to_ignore_on_load_unexpected = [
        *MoCoPreTrainedModel._keys_to_ignore_on_load_unexpected,
        r"projector\.",
    ]

    def __init__(self, config: MoCoConfig) -> None:
        super().__init__(config)
        self._init_classifier(MoCoModel(config))


__all__ = ["MoCoForImageClassification", "MoCoForPreTraining", "MoCoModel", "MoCoPreTrainedModel"]

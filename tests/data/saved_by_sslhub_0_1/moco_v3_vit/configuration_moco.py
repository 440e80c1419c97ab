"""Configuration of the MoCo family: MoCo v1 (He et al. 2020), v2 (Chen et al. 2020), v3 (Chen, Xie, He 2021)."""

from __future__ import annotations

from typing import Any

from .configuration_common import SSLHubConfig, check_choice, check_positive

MOCO_VERSIONS = ("v1", "v2", "v3")
KEY_BATCH_NORMS = ("shuffle", "sync", "none")


class MoCoConfig(SSLHubConfig):
    """Architecture and loss settings of a MoCo model.

    Use the presets for the papers' defaults: `MoCoConfig.v1()`, `MoCoConfig.v2(backbone="resnet18")`,
    `MoCoConfig.v3(backbone="vit_small_patch16_224")`; any field can be overridden by keyword.

    Args:
        version: `"v1"`, `"v2"` (queue of negatives) or `"v3"` (in-batch keys, predictor, no queue).
        backbone: any timm model name (CNN or ViT).
        backbone_kwargs: extra keyword arguments for `timm.create_model`.
        small_input_stem: for ResNets on 32x32 images: 3x3 stride-1 stem conv and no max-pool.
        projector_num_layers: linear layers of the projection head; 0 means no projector.
        projector_hidden_size: hidden width of the projector; `None` uses the backbone width.
        projection_dim: output width of the projector (the contrastive embedding).
        projector_batch_norm: BatchNorm after the projector's hidden layers (v3).
        projector_last_batch_norm: BatchNorm without affine on the projector output (v3).
        predictor_num_layers: layers of the query-side predictor (v3); 0 means none.
        predictor_hidden_size: hidden width of the predictor.
        predictor_last_batch_norm: BatchNorm without affine on the predictor output (v3 ViT).
        queue_size: number of negative keys kept (v1/v2); 0 for v3.
        momentum: key-encoder EMA momentum m (the base value when a recipe schedules it).
        temperature: softmax temperature T of InfoNCE.
        symmetric_loss: also swap the two views and average (v3 always does; optional for v1/v2).
        key_batch_norm: batch-norm of the key branch across processes: `"shuffle"` (shuffle-BN, v1/v2),
            `"sync"` (SyncBatchNorm, v3; applied by the recipe) or `"none"`.
        batch_size: the global training batch, when known, to check that it divides `queue_size`.
    """

    model_type = "sslhub_moco"

    version: str = "v2"
    backbone: str = "resnet50"
    backbone_kwargs: dict[str, Any] | None = None
    small_input_stem: bool = False
    projector_num_layers: int = 2
    projector_hidden_size: int | None = None
    projection_dim: int = 128
    projector_batch_norm: bool = False
    projector_last_batch_norm: bool = False
    predictor_num_layers: int = 0
    predictor_hidden_size: int = 4096
    predictor_last_batch_norm: bool = False
    queue_size: int = 65536
    momentum: float = 0.999
    temperature: float = 0.2
    symmetric_loss: bool = False
    key_batch_norm: str = "shuffle"
    batch_size: int | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        check_choice("version", self.version, MOCO_VERSIONS)
        check_choice("key_batch_norm", self.key_batch_norm, KEY_BATCH_NORMS)
        check_positive("temperature", self.temperature)
        check_positive("projection_dim", self.projection_dim)
        if not 0.0 <= self.momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {self.momentum}")
        if self.projector_num_layers < 0 or self.predictor_num_layers < 0:
            raise ValueError("projector_num_layers and predictor_num_layers must be >= 0")
        if self.queue_size < 0:
            raise ValueError(f"queue_size must be >= 0, got {self.queue_size}")
        if self.version == "v3" and self.queue_size > 0:
            raise ValueError(
                f"version='v3' uses in-batch keys and no queue: set queue_size=0 (got {self.queue_size})"
            )
        if self.version in ("v1", "v2") and self.queue_size == 0:
            raise ValueError(f"version={self.version!r} needs a queue of negatives: set queue_size > 0")
        if self.batch_size is not None and self.queue_size > 0:
            check_positive("batch_size", self.batch_size)
            keys_per_step = self.batch_size * (2 if self.symmetric_loss else 1)
            if self.queue_size % keys_per_step:
                raise ValueError(
                    f"queue_size={self.queue_size} must be a multiple of the keys enqueued per step "
                    f"({keys_per_step} = batch_size{' x 2 (symmetric_loss)' if self.symmetric_loss else ''})"
                )
        from .backbones import check_backbone_name

        check_backbone_name(self.backbone)

    @property
    def has_queue(self) -> bool:
        """Whether negatives come from a queue (v1/v2) rather than the batch (v3)."""
        return self.queue_size > 0

    @classmethod
    def v1(cls, backbone: str = "resnet50", **kwargs) -> MoCoConfig:
        """MoCo v1: linear head to 128, queue 65536, m=0.999, T=0.07, shuffle-BN."""
        defaults = dict(
            version="v1",
            projector_num_layers=1,
            projection_dim=128,
            queue_size=65536,
            momentum=0.999,
            temperature=0.07,
            key_batch_norm="shuffle",
        )
        return cls(backbone=backbone, **{**defaults, **kwargs})

    @classmethod
    def v2(cls, backbone: str = "resnet50", **kwargs) -> MoCoConfig:
        """MoCo v2: MLP head (d-d-128, no BN), queue 65536, m=0.999, T=0.2, shuffle-BN."""
        defaults = dict(
            version="v2",
            projector_num_layers=2,
            projection_dim=128,
            queue_size=65536,
            momentum=0.999,
            temperature=0.2,
            key_batch_norm="shuffle",
        )
        return cls(backbone=backbone, **{**defaults, **kwargs})

    @classmethod
    def v3(cls, backbone: str = "resnet50", **kwargs) -> MoCoConfig:
        """MoCo v3: BN MLP projector (4096 -> 256) and predictor, no queue, symmetric loss, SyncBN.

        ResNets use a 2-layer projector and T=1.0; ViTs a 3-layer projector and T=0.2 (the paper's
        settings); the momentum 0.99 is the start of the recipe's cosine schedule to 1.
        """
        from .backbones import check_backbone_name

        check_backbone_name(backbone)
        is_vit = backbone.startswith(("vit", "deit"))
        defaults = dict(
            version="v3",
            projector_num_layers=3 if is_vit else 2,
            projector_hidden_size=4096,
            projection_dim=256,
            projector_batch_norm=True,
            projector_last_batch_norm=True,
            predictor_num_layers=2,
            predictor_hidden_size=4096,
            predictor_last_batch_norm=is_vit,
            queue_size=0,
            momentum=0.99,
            temperature=0.2 if is_vit else 1.0,
            symmetric_loss=True,
            key_batch_norm="sync",
        )
        return cls(backbone=backbone, **{**defaults, **kwargs})


__all__ = ["MoCoConfig"]

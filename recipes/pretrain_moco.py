"""MoCo pre-training (v1, v2, v3) with Accelerate.

    accelerate launch recipes/pretrain_moco.py --config recipes/configs/moco_v2_resnet18_cifar10.yaml
    accelerate launch --config_file recipes/accelerate/multi_gpu.yaml recipes/pretrain_moco.py \
        --config recipes/configs/moco_v2_resnet50_imagenet.yaml --output_dir outputs/r50
    python recipes/pretrain_moco.py --config recipes/configs/demo.yaml      # one process, no launcher

Settings: the defaults below, then the `--config` YAML file, then `--field value` overrides
(`python recipes/pretrain_moco.py --help` lists them). The run writes TensorBoard logs to
`output_dir/logs`, checkpoints to `output_dir/checkpoints/step_N` (`--resume latest` continues exactly),
and the inference model with its image processor and model card to `output_dir/final`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from sslhub import MoCoConfig, MoCoForPreTraining
from sslhub.configuration_common import IMAGENET_MEAN, IMAGENET_STD
from sslhub.data import dataset_card_name
from sslhub.momentum import cosine_momentum
from sslhub.training import (
    TrainingConfig,
    TrainingRun,
    TwoViews,
    command_line,
    create_accelerator,
    create_optimizer,
    parse_config,
    pretraining_loader,
    publish_final_model,
    save_config,
)


@dataclass
class MoCoRecipeConfig(TrainingConfig):
    """MoCo pre-training settings (model and augmentation; the rest is shared by every recipe)."""

    version: str = "v2"  # "v1", "v2" or "v3": picks the paper preset for every model setting left as None
    backbone: str = "resnet50"  # any timm model name
    backbone_kwargs: dict | None = None
    small_input_stem: bool = False  # 3x3 stride-1 stem, no max-pool: ResNets on 32x32 images
    image_size: int = 224
    image_mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    image_std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    augmentation: str | None = None  # "v1", "v2" or "v3"; defaults to `version`
    min_crop_scale: float | None = None  # lower bound of RandomResizedCrop's scale (0.2 v1/v2, 0.08 v3)
    # None keeps the preset's value
    queue_size: int | None = None
    momentum: float | None = None  # key-encoder EMA momentum (start value when final_momentum is set)
    final_momentum: float | None = None  # cosine schedule of the momentum to this value (v3: 1.0)
    temperature: float | None = None
    symmetric_loss: bool | None = None
    projection_dim: int | None = None
    projector_hidden_size: int | None = None
    predictor_hidden_size: int | None = None
    # ViTs: keep the patch embedding at its random init (the MoCo v3 stability trick)
    freeze_patch_embed: bool = False


MODEL_FIELDS = (
    "queue_size",
    "momentum",
    "temperature",
    "symmetric_loss",
    "projection_dim",
    "projector_hidden_size",
    "predictor_hidden_size",
)


def build_model(cfg: MoCoRecipeConfig, global_batch: int) -> MoCoForPreTraining:
    overrides = {name: getattr(cfg, name) for name in MODEL_FIELDS if getattr(cfg, name) is not None}
    preset = getattr(MoCoConfig, cfg.version)
    config = preset(
        backbone=cfg.backbone,
        backbone_kwargs=cfg.backbone_kwargs,
        small_input_stem=cfg.small_input_stem,
        image_size=cfg.image_size,
        image_mean=cfg.image_mean,
        image_std=cfg.image_std,
        crop_pct=1.0 if cfg.image_size <= 64 else 0.875,
        batch_size=global_batch,
        **overrides,
    )
    return MoCoForPreTraining(config)


def main(cfg: MoCoRecipeConfig) -> dict[str, float]:
    # Accelerator first: it decides devices, processes, mixed precision and seeds everything.
    accelerator = create_accelerator(cfg)
    os.makedirs(cfg.output_dir, exist_ok=True)
    if accelerator.is_main_process:
        save_config(cfg, os.path.join(cfg.output_dir, "config.yaml"))

    # Data: two views per image; sharded across processes, order a function of (seed, epoch).
    augmentation = cfg.augmentation or cfg.version
    loader = pretraining_loader(
        cfg, accelerator, augmentation, cfg.image_size, cfg.image_mean, cfg.image_std, cfg.min_crop_scale
    )

    # Model: every process builds the same model (same seed), so query, key and queue start identical.
    model = build_model(cfg, cfg.batch_size * accelerator.num_processes)
    if cfg.freeze_patch_embed:
        model.query_encoder.backbone.patch_embed.requires_grad_(False)
    if model.config.key_batch_norm == "sync" and accelerator.num_processes > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    base_momentum = model.config.momentum

    # Optimizer; learning rate and momentum are pure functions of the step (set inside the loop).
    optimizer = create_optimizer(model, cfg)
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)

    # The loop: resume, schedules, logs, kNN monitor and checkpoints are the shared TrainingRun's job.
    run = TrainingRun(
        cfg,
        accelerator,
        model,
        optimizer,
        loader,
        encoder=lambda: unwrapped.query_encoder,
        image_size=cfg.image_size,
        mean=cfg.image_mean,
        std=cfg.image_std,
        name="pretrain-moco",
    )
    # With batched augmentation the loader gives uint8 images and the views are made on the device.
    views = TwoViews(cfg, augmentation, cfg.image_size, cfg.image_mean, cfg.image_std, cfg.min_crop_scale)
    for batch in run:
        if run.first_micro_batch and cfg.final_momentum is not None:
            unwrapped.momentum = cosine_momentum(run.step, run.total_steps, base_momentum, cfg.final_momentum)
        query, key = views(batch, run)
        with accelerator.accumulate(model):
            # The key encoder moves once per optimizer step, before its keys are computed.
            output = model(
                query_pixel_values=query,
                key_pixel_values=key,
                update_key_encoder=run.first_micro_batch,
                enqueue_keys=True,
            )
            run.backward(output.loss)
        run.log(momentum=unwrapped.momentum)
    metrics = run.finish()

    # The inference model (query encoder) + image processor + model card, ready to push.
    if accelerator.is_main_process:
        publish_final_model(
            cfg,
            unwrapped.query_encoder,
            card=dict(
                family=f"MoCo {cfg.version}",
                paper=f"moco-{cfg.version}",  # a key of sslhub.hub.PAPERS
                datasets=[dataset_card_name(cfg.dataset)],
                reproduce_command=command_line(),
                training_summary=metrics,
            ),
        )
    accelerator.end_training()
    return metrics


if __name__ == "__main__":
    config = parse_config(MoCoRecipeConfig)
    main(config)

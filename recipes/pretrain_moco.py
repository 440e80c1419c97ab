"""MoCo pre-training (v1, v2, v3) with Accelerate.

    accelerate launch recipes/pretrain_moco.py --config recipes/configs/moco_v2_resnet18_cifar10.yaml
    accelerate launch --config_file recipes/accelerate/multi_gpu.yaml recipes/pretrain_moco.py \
        --config recipes/configs/moco_v2_resnet50_imagenet.yaml --output_dir outputs/r50
    python recipes/pretrain_moco.py --config recipes/configs/demo.yaml      # one process, no launcher

Settings: the defaults below, then the `--config` YAML file, then `--name value` overrides; the model's
settings are the `model:` section (`--model.temperature 0.1`), passed to `MoCoConfig.<version>`
(`python recipes/pretrain_moco.py --help` lists them all). The run writes TensorBoard logs to
`output_dir/logs`, checkpoints to `output_dir/checkpoints/step_N` (`--resume latest` continues exactly),
and the inference model with its image processor and model card to `output_dir/final`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from sslhub import MoCoConfig, MoCoForPreTraining
from sslhub.data import dataset_card_name, describe_preset
from sslhub.models.backbones import is_vit_name
from sslhub.models.configuration_common import check_choice
from sslhub.models.configuration_moco import MOCO_VERSIONS
from sslhub.models.momentum import cosine_momentum
from sslhub.training import (
    Checkpointer,
    KNNMonitor,
    LRSchedule,
    RunLength,
    RunLogger,
    TrainingArguments,
    TwoViews,
    ViewsAhead,
    check_queue_fits_data,
    command_line,
    create_accelerator,
    create_optimizer,
    end_training,
    micro_batches,
    parse_args,
    pretraining_loader,
    publish_final_model,
    save_arguments,
    saved_model_config,
    set_lr,
    setting,
)


@dataclass
class MoCoArguments(TrainingArguments):
    """MoCo pre-training settings (the rest is shared by every recipe)."""

    model_config = MoCoConfig
    model_fields_set_by_recipe = ("version", "batch_size")

    version: str = setting(
        "v2", "MoCo version v1, v2 or v3: its presets fill every model and training setting left unset"
    )
    augmentation: str | None = setting(None, "augmentation preset v1, v2 or v3 (default: the version)")
    min_crop_scale: float | None = setting(None, "lower bound of RandomResizedCrop's scale")
    final_momentum: float | None = setting(None, "cosine schedule of the key-encoder momentum up to this")
    freeze_patch_embed: bool | None = setting(None, "ViTs: keep the patch embedding at its random init")
    init_from: str | None = setting(
        None,
        "continue pre-training a saved MoCo model (folder or Hub id); its version and architecture are kept",
    )

    def training_preset(self) -> dict:
        backbone = self.model.get("backbone", self._saved.get("backbone", MoCoConfig.backbone))
        vit = self.version == "v3" and is_vit_name(backbone)
        return TRAINING_PRESETS["v3-vit" if vit else self.version]

    def __post_init__(self) -> None:
        self._saved = saved_model_config(self.init_from, MoCoConfig) if self.init_from else {}
        self.version = self._saved.get("version", self.version)
        check_choice("version", self.version, MOCO_VERSIONS)
        super().__post_init__()
        if self.augmentation is not None:
            check_choice("augmentation", self.augmentation, MOCO_VERSIONS)
        if self.final_momentum is not None and not 0 <= self.final_momentum <= 1:
            raise ValueError(f"final_momentum must be in [0, 1], got {self.final_momentum}")


# The training side of each paper's recipe (the model side is `MoCoConfig.<version>`): MoCo v1 (He et al.
# 2020: SGD, x0.1 at epochs 120 and 160 of 200), v2 (Chen et al. 2020: cosine), v3 (Chen, Xie, He 2021,
# and the authors' CONFIG.md: ResNets LARS lr 0.6 wd 1e-6, 10 warm-up epochs of 100; ViTs AdamW lr 1.5e-4
# wd 0.1, 40 of 300, frozen patch embedding; both with the momentum on a cosine from 0.99 to 1).
# Learning rates are per 256 images.
TRAINING_PRESETS = {
    "v1": dict(
        optimizer="sgd",
        learning_rate=0.03,
        weight_decay=1e-4,
        lr_schedule="step",
        warmup_epochs=0.0,
        epochs=200,
        min_crop_scale=0.2,
        freeze_patch_embed=False,
    ),
    "v2": dict(
        optimizer="sgd",
        learning_rate=0.03,
        weight_decay=1e-4,
        lr_schedule="cosine",
        warmup_epochs=0.0,
        epochs=200,
        min_crop_scale=0.2,
        freeze_patch_embed=False,
    ),
    "v3": dict(
        optimizer="lars",
        learning_rate=0.6,
        weight_decay=1e-6,
        lr_schedule="cosine",
        warmup_epochs=10.0,
        epochs=100,
        final_momentum=1.0,
        min_crop_scale=0.2,
        freeze_patch_embed=False,
    ),
    "v3-vit": dict(
        optimizer="adamw",
        learning_rate=1.5e-4,
        weight_decay=0.1,
        lr_schedule="cosine",
        warmup_epochs=40.0,
        epochs=300,
        final_momentum=1.0,
        min_crop_scale=0.08,
        freeze_patch_embed=True,
    ),
}


def moco_config(args: MoCoArguments, num_processes: int = 1) -> MoCoConfig:
    """The model config: the version's preset (or the `init_from` model's config) with the `model`
    section's settings."""
    settings = dict(args.model, batch_size=args.batch_size * num_processes)  # the queue takes global batches
    if num_processes > 1:  # shuffle-BN across the processes: the one-process splits do not apply
        settings.setdefault("shuffle_bn_splits", 1)
    try:
        if args.init_from:
            return MoCoConfig.from_pretrained(args.init_from, **settings)
        return getattr(MoCoConfig, args.version)(**settings)
    except ValueError as error:
        raise SystemExit(f"error: model.{error}") from None


def main(args: MoCoArguments) -> dict[str, float]:
    # Accelerator first: it decides devices, processes, mixed precision and seeds everything.
    accelerator = create_accelerator(args)
    # The model config checks every model setting now, before any data is read.
    config = moco_config(args, accelerator.num_processes)
    os.makedirs(args.output_dir, exist_ok=True)
    if accelerator.is_main_process:
        save_arguments(args, os.path.join(args.output_dir, "config.yaml"))

    # Data: two views per image; sharded across processes, order a function of (seed, epoch).
    augmentation = args.augmentation or args.version
    image = (config.image_size, config.image_mean, config.image_std, args.min_crop_scale)
    loader = pretraining_loader(args, accelerator, augmentation, *image)
    views = TwoViews(args, augmentation, *image, device=accelerator.device)  # batched: made on the device
    length = RunLength.of(args, loader)
    check_queue_fits_data(accelerator, config.queue_size, loader)

    # Model: every process builds the same model (same seed), so query, key and queue start identical;
    # from a saved model, the key encoder and queue are those saved, or a copy of its encoder and a new queue.
    model = (
        MoCoForPreTraining.from_pretrained(args.init_from, config=config)
        if args.init_from
        else MoCoForPreTraining(config)
    )
    if args.freeze_patch_embed:
        model.query_encoder.backbone.patch_embed.requires_grad_(False)
    if config.key_batch_norm == "sync" and accelerator.num_processes > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if args.compile:
        model.compile()  # in place: the state dict, hence checkpoints and the final model, keep their names

    model.to(accelerator.device)  # the optimizer picks its kernels for the model's device
    # Optimizer; learning rate and momentum are pure functions of the step (set inside the loop).
    optimizer = create_optimizer(model, args)
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)
    schedule = LRSchedule.of(args, length, accelerator.num_processes)  # lr: a function of the step

    # Checkpoints hold weights, key encoder, queue, optimizer, RNG states and the loop position.
    checkpointer = Checkpointer(accelerator, args.output_dir, args.save_total_limit)
    step = checkpointer.resume(args.resume, schedule)
    metrics = checkpointer.state.metrics  # kNN accuracies, saved with every checkpoint
    monitor = KNNMonitor(args, accelerator, config) if args.knn_steps else None
    if monitor is not None and step == 0:
        metrics["knn_top1_random_init"] = monitor(unwrapped.query_encoder)
        accelerator.print(f"kNN top-1 before training: {metrics['knn_top1_random_init']:.4f}")
    logger = RunLogger(accelerator, args, length, checkpointer, name="pretrain-moco")
    # Each micro-batch with its views; with --prefetch the next views are made while this step runs.
    batches = ViewsAhead(views, accelerator, args.seed, ahead=args.prefetch, timed=logger.timed)

    model.train()
    for micro, query, key in batches(micro_batches(loader, accelerator, length, step)):
        if micro.first:  # this optimizer step's learning rate and key-encoder momentum
            lr = schedule(step)
            set_lr(optimizer, lr)
            if args.final_momentum is not None:
                unwrapped.momentum = cosine_momentum(
                    step, length.total_steps, config.momentum, args.final_momentum
                )
            with logger.timed("momentum"):  # once per optimizer step, before its keys are computed
                unwrapped.update_key_encoder()
        with accelerator.accumulate(model):
            with logger.timed("forward_backward"):  # the keys' enqueue included
                output = model(
                    query_pixel_values=query,
                    key_pixel_values=key,
                    update_key_encoder=False,
                    enqueue_keys=True,
                )
                accelerator.backward(output.loss)
            with logger.timed("optimizer"):
                if accelerator.sync_gradients and args.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        logger.update(output.loss, micro.batch)
        if not micro.last:
            continue

        step += 1
        with logger.timed("logging"):
            logger.step(step, lr=lr, momentum=unwrapped.momentum)
            logger.evaluate(step, monitor, unwrapped.query_encoder)  # metrics["knn_top1"] at its steps
            logger.checkpoint(step)  # at save_steps and the end
    metrics = logger.summary(step)

    # The inference model (query encoder) + image processor + model card, ready to push.
    if accelerator.is_main_process:
        publish_final_model(
            args,
            unwrapped.query_encoder,
            card=dict(
                family=f"MoCo {args.version}",
                paper=f"moco-{args.version}",  # a key of sslhub.hub.PAPERS
                base_model=args.init_from,
                datasets=[dataset_card_name(args.dataset)],
                reproduce_command=command_line(),
            ),
            metrics=metrics,
            method_settings={
                "Augmentation": describe_preset(augmentation, config.image_size, args.min_crop_scale),
                "Key encoder": f"momentum {config.momentum:g}"
                + (f" -> {args.final_momentum:g} (cosine)" if args.final_momentum is not None else "")
                + (f", queue of {config.queue_size} keys" if config.queue_size else ""),
                "Temperature": f"{config.temperature:g}",
            },
        )
    end_training(accelerator)
    return metrics


if __name__ == "__main__":
    main(parse_args(MoCoArguments))

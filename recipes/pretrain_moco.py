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
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from sslhub import MoCoConfig, MoCoForPreTraining
from sslhub.configuration_common import IMAGENET_MEAN, IMAGENET_STD
from sslhub.momentum import cosine_momentum
from sslhub.training import (
    KNNMonitor,
    LoopState,
    LossWatch,
    Throughput,
    TrainingConfig,
    command_line,
    cosine_lr,
    create_accelerator,
    create_optimizer,
    parse_config,
    peak_memory_mb,
    pretraining_loader,
    resolve_resume,
    save_checkpoint,
    save_config,
    save_final_model,
    scaled_lr,
    set_loader_epoch,
    set_lr,
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
    freeze_patch_embed: bool = (
        False  # ViTs: keep the patch embedding at its random init (MoCo v3 stability trick)
    )


MODEL_FIELDS = (
    "queue_size",
    "momentum",
    "temperature",
    "symmetric_loss",
    "projection_dim",
    "projector_hidden_size",
    "predictor_hidden_size",
)
PAPERS = {
    "v1": "He et al., Momentum Contrast for Unsupervised Visual Representation Learning, CVPR 2020",
    "v2": "Chen et al., Improved Baselines with Momentum Contrastive Learning, arXiv:2003.04297",
    "v3": "Chen, Xie, He, An Empirical Study of Training Self-Supervised Vision Transformers, ICCV 2021",
}


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
    if cfg.streaming and cfg.max_steps is None:
        raise SystemExit("error: a streamed dataset has no known length: set --max_steps")
    steps_per_epoch = len(loader) // cfg.gradient_accumulation_steps if not cfg.streaming else cfg.max_steps
    if steps_per_epoch == 0:
        raise SystemExit(
            f"error: fewer than {cfg.batch_size * cfg.gradient_accumulation_steps} images per "
            "process: lower --batch_size"
        )
    total_steps = cfg.max_steps or cfg.epochs * steps_per_epoch

    # Model: every process builds the same model (same seed), so query, key and queue start identical.
    model = build_model(cfg, cfg.batch_size * accelerator.num_processes)
    if cfg.freeze_patch_embed:
        model.query_encoder.backbone.patch_embed.requires_grad_(False)
    if model.config.key_batch_norm == "sync" and accelerator.num_processes > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    base_momentum = model.config.momentum

    # Optimizer and pure schedules of the step: the schedule position is the step counter itself.
    optimizer = create_optimizer(model, cfg)
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)
    peak_lr = scaled_lr(cfg, accelerator)
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)

    # Resume: weights, key encoder, queue, optimizer, RNG states and the loop position.
    state = LoopState()
    accelerator.register_for_checkpointing(state)
    resume_from = resolve_resume(cfg.resume, cfg.output_dir)
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        accelerator.print(f"resumed from {resume_from} at step {state.step}")
    last_checkpoint = resume_from

    monitor = None
    if cfg.knn_steps:
        monitor = KNNMonitor(cfg, accelerator, cfg.image_size, cfg.image_mean, cfg.image_std)
        if state.step == 0:
            state.metrics["knn_top1_random_init"] = monitor(unwrapped.query_encoder)
            accelerator.print(
                f"kNN top-1 before training (random init): {state.metrics['knn_top1_random_init']:.4f}"
            )

    accelerator.init_trackers(
        "pretrain_moco", config={k: v for k, v in vars(cfg).items() if isinstance(v, (int, float, str, bool))}
    )
    watch, throughput = LossWatch(accelerator.device), Throughput()
    skipped = torch.zeros((), dtype=torch.long, device=accelerator.device)
    progress = tqdm(
        total=total_steps,
        initial=state.step,
        desc="pre-training",
        dynamic_ncols=True,
        disable=not accelerator.is_main_process,
    )
    started = time.perf_counter()
    model.train()
    while state.step < total_steps:
        epoch = state.step // steps_per_epoch
        set_loader_epoch(loader, epoch)
        # Skip the batches this epoch already consumed (at the sampler level: nothing is decoded).
        done_in_epoch = (state.step % steps_per_epoch) * cfg.gradient_accumulation_steps
        batches = accelerator.skip_first_batches(loader, done_in_epoch) if done_in_epoch else loader
        for micro_step, batch in enumerate(batches):
            first_micro_batch = micro_step % cfg.gradient_accumulation_steps == 0
            if first_micro_batch:
                set_lr(optimizer, cosine_lr(state.step, total_steps, peak_lr, warmup_steps))
                if cfg.final_momentum is not None:
                    unwrapped.momentum = cosine_momentum(
                        state.step, total_steps, base_momentum, cfg.final_momentum
                    )
            query, key = batch["query_pixel_values"], batch["key_pixel_values"]
            if cfg.channels_last:
                query = query.contiguous(memory_format=torch.channels_last)
                key = key.contiguous(memory_format=torch.channels_last)
            with accelerator.accumulate(model):
                # The key encoder moves once per optimizer step, before its keys are computed.
                output = model(
                    query_pixel_values=query,
                    key_pixel_values=key,
                    update_key_encoder=first_micro_batch,
                    enqueue_keys=True,
                )
                accelerator.backward(output.loss)
                if accelerator.sync_gradients and cfg.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            watch.update(output.loss)
            skipped += batch["num_skipped"].to(skipped.device)
            throughput.add(query.shape[0] * accelerator.num_processes)
            if (micro_step + 1) % cfg.gradient_accumulation_steps:
                continue

            state.step += 1
            progress.update(1)
            at_end = state.step >= total_steps
            if state.step % cfg.log_steps == 0 or at_end:
                loss = watch.check(state.step, last_checkpoint)  # raises on NaN/inf, before any save
                logs = {
                    "train/loss": loss,
                    "train/lr": optimizer.param_groups[0]["lr"],
                    "train/momentum": unwrapped.momentum,
                    "train/images_per_second": throughput.rate(),
                    "train/epoch": state.step / steps_per_epoch,
                }
                accelerator.log(logs, step=state.step)
                progress.set_postfix(loss=f"{loss:.4f}", lr=f"{logs['train/lr']:.3g}")
            if monitor is not None and (state.step % cfg.knn_steps == 0 or at_end):
                state.metrics["knn_top1"] = monitor(unwrapped.query_encoder)
                accelerator.log({"monitor/knn_top1": state.metrics["knn_top1"]}, step=state.step)
                model.train()
            if state.step % cfg.save_steps == 0 or at_end:
                watch.check(state.step, last_checkpoint)
                state.skipped_images = int(accelerator.reduce(skipped, reduction="sum"))
                last_checkpoint = save_checkpoint(
                    accelerator, cfg.output_dir, state.step, cfg.save_total_limit
                )
            if at_end or state.step % steps_per_epoch == 0:
                break
    progress.close()

    # The inference model (query encoder) + image processor + model card, ready to push.
    elapsed = time.perf_counter() - started
    state.skipped_images = int(accelerator.reduce(skipped, reduction="sum"))
    metrics = {
        **state.metrics,
        "steps": state.step,
        "epochs": round(state.step / steps_per_epoch, 2),
        "train_seconds": round(elapsed, 1),
        "peak_memory_mb": round(peak_memory_mb(accelerator.device)),
    }
    if state.skipped_images:
        accelerator.print(
            f"warning: {state.skipped_images} unreadable images were skipped (see the log above)"
        )
    if accelerator.is_main_process:
        final = save_final_model(
            unwrapped.query_encoder,
            cfg.output_dir,
            card=dict(
                model_name=os.path.basename(os.path.normpath(cfg.output_dir)),
                family="moco",
                paper=PAPERS[cfg.version],
                datasets=[cfg.dataset],
                reproduce_command=command_line(),
                training_summary=metrics,
            ),
        )
        if cfg.push_to_hub:
            from sslhub.hub import push_to_hub

            push_to_hub(final, cfg.hub_model_id or os.path.basename(os.path.normpath(cfg.output_dir)))
    accelerator.end_training()
    return metrics


if __name__ == "__main__":
    config = parse_config(MoCoRecipeConfig)
    main(config)

"""Colorization pre-training (Zhang, Isola, Efros, "Colorful Image Colorization", ECCV 2016) with Accelerate.

    accelerate launch recipes/pretrain_colorization.py --config recipes/configs/colorization_resnet18_cifar10.yaml
    accelerate launch --config_file recipes/accelerate/multi_gpu.yaml recipes/pretrain_colorization.py \
        --config recipes/configs/colorization_resnet50_imagenet.yaml --output_dir outputs/color_r50
    python recipes/pretrain_colorization.py --dataset sample --model.backbone resnet10t \
        --model.small_input_stem true --model.image_size 32 --max_steps 200 --batch_size 64   # no launcher

The encoder sees the L channel of each image and a decoder predicts the distribution of its ab colour
over the 313 in-gamut bins, trained with a class-rebalanced cross-entropy. Before training, the empirical
ab prior is estimated on `--prior_images` training images (at the 1/4 resolution of the loss's targets)
and turned into the rebalancing weights (a buffer of the model, so checkpoints carry it and a resumed run
does not re-estimate it).

Settings: the defaults below, then the `--config` YAML file, then `--name value` overrides; the model's
settings are the `model:` section (`--model.backbone resnet18`), passed to `ColorizationConfig.<preset>`
(`python recipes/pretrain_colorization.py --help` lists them all). The run writes TensorBoard logs to
`output_dir/logs`, a PNG grid every `--sample_steps` steps to `output_dir/samples/step_N.png` (rows:
grayscale input, prediction, ground truth), checkpoints to `output_dir/checkpoints/step_N`
(`--resume latest` continues exactly), and the encoder (`ColorizationModel`) with its image processor
and model card to `output_dir/final`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision.utils import make_grid, save_image

from sslhub import ColorizationConfig, ColorizationForPreTraining
from sslhub.data import ImageDataset, collate, dataset_card_name, eval_transform, load_image_dataset
from sslhub.models.color import colorize, estimate_ab_prior
from sslhub.models.configuration_common import check_choice, check_positive
from sslhub.training import (
    Checkpointer,
    KNNMonitor,
    LRSchedule,
    RunLength,
    RunLogger,
    TrainingArguments,
    command_line,
    create_accelerator,
    create_optimizer,
    end_training,
    micro_batches,
    parse_args,
    pretraining_loader,
    publish_final_model,
    resolve_resume,
    save_arguments,
    saved_model_config,
    set_lr,
    setting,
)

PRESETS = ("paper", "authors_code")


@dataclass
class ColorizationArguments(TrainingArguments):
    """Colorization pre-training settings: preset, augmentation, prior, sample grids (the rest is shared)."""

    model_config = ColorizationConfig
    data_sources = (*TrainingArguments.data_sources, "sample_dataset")

    preset: str = setting("paper", "model preset: paper, or authors_code (10-neighbour soft-encoding)")
    min_crop_scale: float = setting(0.2, "lower bound of RandomResizedCrop's scale; no colour augmentation")
    # class rebalancing: the empirical ab prior, estimated once before training
    prior_images: int = setting(10000, "training images the ab prior is estimated on (a seeded subset)")
    # sample grids: grayscale input, prediction, ground truth of fixed held-out images
    sample_steps: int = setting(
        500, "a sample grid every N optimizer steps, at step 0 and at the end; 0: off"
    )
    sample_images: int = setting(8, "images in a sample grid")
    sample_dataset: str | None = setting(
        None, "data of the sample grids (default: knn_eval_dataset, dataset)"
    )
    sample_split: str | None = setting(None, "split of the sample grids (default: knn_eval_split)")
    batch_size: int = setting(40, "images per process and micro-batch (the paper: 40)")
    sync_batch_norm: bool = setting(
        True, "with several processes, BatchNorm statistics over the global batch"
    )
    init_from: str | None = setting(
        None, "continue pre-training a saved colorization model (folder or Hub id); its architecture is kept"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("preset", self.preset, PRESETS)
        if self.init_from:
            saved_model_config(self.init_from, ColorizationConfig)
        check_positive("prior_images", self.prior_images)

    def training_preset(self) -> dict:
        # The paper's Adam (beta2 0.99, L2 1e-3) at lr 3e-5 for batch 40, i.e. 1.92e-4 per 256 images; here
        # AdamW (decoupled decay) on a cosine schedule rather than steps at 200k and 375k iterations.
        return {
            **super().training_preset(),
            "optimizer": "adamw",
            "learning_rate": 1.92e-4,
            "weight_decay": 1e-3,
        }


def colorization_config(args: ColorizationArguments) -> ColorizationConfig:
    """The model config: the preset (or the `init_from` model's config) with the `model` section's settings."""
    try:
        if args.init_from:
            return ColorizationConfig.from_pretrained(args.init_from, **args.model)
        return getattr(ColorizationConfig, args.preset)(**args.model)
    except ValueError as error:
        raise SystemExit(f"error: model.{error}") from None


def first_rows(
    dataset: datasets.Dataset | datasets.IterableDataset, count: int, seed: int
) -> datasets.Dataset:
    """`count` rows as a map-style dataset: a seeded random subset, or the head of a streamed dataset."""
    if isinstance(dataset, datasets.IterableDataset):
        return datasets.Dataset.from_list(list(dataset.take(count)), features=dataset.features)
    return dataset.shuffle(seed=seed).select(range(min(count, len(dataset))))


def estimate_prior(
    args: ColorizationArguments, config: ColorizationConfig, device: torch.device
) -> tuple[torch.Tensor, int]:
    """The empirical ab-bin prior of `prior_images` unaugmented training images, and how many there were.

    The prior of what the loss sees: the pixels its targets are subsampled to (every `decoder_output_stride`
    pixel of the input-sized image), with its grey mask; a sixteenth of the pixels of the full image.
    """
    dataset = load_image_dataset(
        args.dataset,
        args.split,
        image_column=args.image_column,
        label_column=args.label_column,
        streaming=args.streaming,
    )
    subset = first_rows(dataset, args.prior_images, args.seed)
    # sRGB in [0, 1]: mean 0 and std 1 leave the pixels unnormalized.
    images = ImageDataset(subset, eval_transform(config.image_size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 1.0))
    loader = DataLoader(images, batch_size=256, collate_fn=collate, num_workers=args.num_workers)
    stride = config.decoder_output_stride
    prior = estimate_ab_prior(
        (
            batch["pixel_values"][..., ::stride, ::stride].to(device)
            for batch in loader
            if "pixel_values" in batch
        ),
        grey_threshold=config.grey_threshold,
        grey_mask=config.grey_mask,
    )
    return prior, len(subset)


def held_out_images(args: ColorizationArguments, config: ColorizationConfig) -> torch.Tensor:
    """The fixed held-out images of the sample grids, normalized like the training views.

    Falls back to training images (with a warning) when the dataset has no such held-out split.
    """
    source = args.sample_dataset or args.knn_eval_dataset or args.dataset
    split = args.sample_split or args.knn_eval_split
    columns = dict(image_column=args.image_column, label_column=args.label_column, streaming=args.streaming)
    try:
        dataset = load_image_dataset(source, split, **columns)
    except ValueError as error:
        print(f"warning: sample grids show training images: no held-out split ({error}); set --sample_split")
        dataset = load_image_dataset(args.dataset, args.split, **columns)
    images = ImageDataset(
        first_rows(dataset, args.sample_images, args.seed),
        eval_transform(config.image_size, config.image_mean, config.image_std, 1.0),
    )
    return torch.stack([item["pixel_values"] for item in images if item is not None])


@torch.no_grad()
def save_sample_grid(
    model: ColorizationForPreTraining, pixel_values: torch.Tensor, path: Path
) -> torch.Tensor:
    """Save a PNG grid, one column per image: grayscale input, annealed-mean prediction, ground truth.

    Runs in eval mode (BatchNorm statistics stay untouched, so sampling does not change the run).
    """
    was_training = model.training
    model.eval()
    pixel_values = pixel_values.to(model.class_weights.device)
    lab = model.encoder.pixel_values_to_lab(pixel_values)  # (N, 3, H, W)
    grey = colorize(lab[:, :1], torch.zeros_like(lab[:, 1:]))
    predicted = model.colorize(pixel_values)
    mean = torch.tensor(model.config.image_mean, device=pixel_values.device)[:, None, None]
    std = torch.tensor(model.config.image_std, device=pixel_values.device)[:, None, None]
    truth = (pixel_values * std + mean).clamp(0, 1)
    model.train(was_training)
    rows = torch.cat([grey, predicted, truth]).float().cpu()  # (3N, 3, H, W)
    scale = max(1, 96 // rows.shape[-1])  # small images (CIFAR) are enlarged to be seen
    rows = F.interpolate(rows, scale_factor=scale, mode="nearest") if scale > 1 else rows
    grid = make_grid(rows, nrow=len(pixel_values), padding=2, pad_value=1.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(grid, path)
    return grid


def main(args: ColorizationArguments) -> dict[str, float]:
    # Accelerator first: it decides devices, processes, mixed precision and seeds everything.
    accelerator = create_accelerator(args)
    # The model config checks every model setting now, before any data is read.
    config = colorization_config(args)
    os.makedirs(args.output_dir, exist_ok=True)
    if accelerator.is_main_process:
        save_arguments(args, os.path.join(args.output_dir, "config.yaml"))

    # Data: one view per image, geometry only (colour augmentation would corrupt the target).
    image = (config.image_size, config.image_mean, config.image_std, args.min_crop_scale)
    loader = pretraining_loader(args, accelerator, "crop_flip", *image)
    length = RunLength.of(args, loader)
    samples = held_out_images(args, config) if args.sample_steps and accelerator.is_main_process else None

    # Model; the rebalancing weights come from a resumed checkpoint, a saved training model (init_from), or
    # are estimated from the data.
    if args.init_from:
        model = ColorizationForPreTraining.from_pretrained(args.init_from, config=config)
    else:
        model = ColorizationForPreTraining(config)
    if resolve_resume(args.resume, args.output_dir) is None and model.class_weights_source != "checkpoint":
        with accelerator.main_process_first():  # every process reads the same subset: same weights
            prior, counted = estimate_prior(args, config, accelerator.device)
        weights = model.set_class_weights_from_prior(prior)
        accelerator.print(
            f"ab prior from {counted} images: {int((prior > 0).sum())}/{len(prior)} bins seen, "
            f"rebalancing weights {weights.min():.3g} to {weights.max():.3g}"
        )
    if args.sync_batch_norm and accelerator.num_processes > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if args.compile:
        model.compile()  # in place: the state dict, hence checkpoints and the final model, keep their names

    model.to(accelerator.device)  # the optimizer picks its kernels for the model's device
    # Optimizer; the learning rate is a pure function of the step (set inside the loop).
    optimizer = create_optimizer(model, args)
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)
    schedule = LRSchedule.of(args, length, accelerator.num_processes)  # lr: a function of the step

    # Checkpoints hold the model (with its class weights), optimizer, RNG states and the loop position.
    checkpointer = Checkpointer(accelerator, args.output_dir, args.save_total_limit)
    step = checkpointer.resume(args.resume, schedule)
    metrics = checkpointer.state.metrics  # kNN accuracies, saved with every checkpoint
    monitor = KNNMonitor(args, accelerator, config) if args.knn_steps else None
    if monitor is not None and step == 0:
        metrics["knn_top1_random_init"] = monitor(unwrapped.encoder)
        accelerator.print(f"kNN top-1 before training: {metrics['knn_top1_random_init']:.4f}")
    logger = RunLogger(accelerator, args, length, checkpointer, name="pretrain-colorization")

    def sample(step: int) -> None:
        grid = save_sample_grid(unwrapped, samples, Path(args.output_dir) / "samples" / f"step_{step}.png")
        if any(tracker.name == "tensorboard" for tracker in accelerator.trackers):
            accelerator.get_tracker("tensorboard", unwrap=True).add_image("samples", grid, step)

    model.train()
    for micro in logger.timed.iterate(micro_batches(loader, accelerator, length, step), "data"):
        if micro.first:  # this optimizer step's learning rate
            # The grid of step N shows the model after N optimizer steps (step 0: random init).
            if samples is not None and step % args.sample_steps == 0:
                sample(step)
            lr = schedule(step)
            set_lr(optimizer, lr)
        pixel_values = micro.batch["pixel_values"]
        if args.channels_last:
            pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
        with accelerator.accumulate(model):
            with logger.timed("forward_backward"):
                output = model(pixel_values=pixel_values)
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
            logger.step(step, lr=lr)
            logger.evaluate(step, monitor, unwrapped.encoder)  # metrics["knn_top1"] at its steps
            logger.checkpoint(step)  # at save_steps and the end
    metrics = logger.summary(step)
    if samples is not None:
        sample(step)

    # The inference model (the encoder on L) + image processor + model card, ready to push.
    if accelerator.is_main_process:
        publish_final_model(
            args,
            unwrapped.encoder,
            card=dict(
                family="colorization",
                paper="colorization",
                base_model=args.init_from,
                datasets=[dataset_card_name(args.dataset)],
                reproduce_command=command_line(),
            ),
            metrics=metrics,
            method_settings={
                "Augmentation": f"crops of scale [{args.min_crop_scale:g}, 1] and flips, no colour changes",
                "Colour classes": f"{config.num_bins} ab bins, {config.soft_encoding_neighbors}-neighbour soft "
                f"encoding, class rebalancing lambda {config.rebalancing_lambda:g} (preset `{args.preset}`)",
            },
        )
    end_training(accelerator)
    return metrics


if __name__ == "__main__":
    main(parse_args(ColorizationArguments))

"""Colorization pre-training (Zhang, Isola, Efros, "Colorful Image Colorization", ECCV 2016) with Accelerate.

    accelerate launch recipes/pretrain_colorization.py --config recipes/configs/colorization_resnet18_cifar10.yaml
    accelerate launch --config_file recipes/accelerate/multi_gpu.yaml recipes/pretrain_colorization.py \
        --config recipes/configs/colorization_resnet50_imagenet.yaml --output_dir outputs/color_r50
    python recipes/pretrain_colorization.py --dataset sample --backbone resnet10t --small_input_stem \
        --image_size 32 --max_steps 200 --batch_size 64             # one process, no launcher

The encoder sees the L channel of each image and a decoder predicts the distribution of its ab colour
over the 313 in-gamut bins, trained with a class-rebalanced cross-entropy. Before training, the empirical
ab prior is estimated on `--prior_images` training images (at the 1/4 resolution of the loss's targets)
and turned into the rebalancing weights (a buffer of the model, so checkpoints carry it and a resumed run
does not re-estimate it).

Settings: the defaults below, then the `--config` YAML file, then `--field value` overrides
(`python recipes/pretrain_colorization.py --help` lists them). The run writes TensorBoard logs to
`output_dir/logs`, a PNG grid every `--sample_steps` steps to `output_dir/samples/step_N.png` (rows:
grayscale input, prediction, ground truth), checkpoints to `output_dir/checkpoints/step_N`
(`--resume latest` continues exactly), and the encoder (`ColorizationModel`) with its image processor
and model card to `output_dir/final`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision.utils import make_grid, save_image

from sslhub import ColorizationConfig, ColorizationForPreTraining
from sslhub.color import colorize, estimate_ab_prior
from sslhub.configuration_common import IMAGENET_MEAN, IMAGENET_STD
from sslhub.data import ImageDataset, collate, dataset_card_name, eval_transform, load_image_dataset
from sslhub.training import (
    TrainingConfig,
    TrainingRun,
    command_line,
    create_accelerator,
    create_optimizer,
    parse_config,
    pretraining_loader,
    publish_final_model,
    resolve_resume,
    save_config,
)

PRESETS = ("paper", "authors_code")


@dataclass
class ColorizationRecipeConfig(TrainingConfig):
    """Colorization pre-training settings (model, augmentation, prior, sample grids; the rest is shared)."""

    preset: str = "paper"  # "paper" or "authors_code" (10-neighbour soft-encoding): model settings left None
    backbone: str = "resnet50"  # any timm model name; built with one input channel (L)
    backbone_kwargs: dict | None = None
    small_input_stem: bool = False  # 3x3 stride-1 stem, no max-pool: ResNets on 32x32 images
    image_size: int = 176  # the authors' training crops (of 256x256 images)
    image_mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    image_std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    min_crop_scale: float = 0.2  # lower bound of RandomResizedCrop's scale; no colour augmentation at all
    # None keeps the preset's value
    soft_encoding_neighbors: int | None = None
    rebalancing_lambda: float | None = None
    annealed_mean_temperature: float | None = None
    decoder_hidden_size: int | None = None
    decoder_num_layers: int | None = None
    grey_mask: str | None = None
    grey_threshold: float | None = None
    # class rebalancing: the empirical ab prior, estimated once before training
    prior_images: int = 10000  # training images it is estimated on (a seeded random subset)
    # sample grids: grayscale input, prediction, ground truth of fixed held-out images
    sample_steps: int = 500  # every N optimizer steps, at step 0 and at the end (0 disables)
    sample_images: int = 8
    sample_dataset: str | None = None  # defaults to knn_eval_dataset, then dataset
    sample_split: str | None = None  # defaults to knn_eval_split
    # optimization: the paper's Adam (beta2 0.99, L2 1e-3) at lr 3e-5 for batch 40, i.e. 1.92e-4 per 256
    # images; here AdamW (decoupled decay) on a cosine schedule rather than steps at 200k / 375k iterations
    optimizer: str = "adamw"
    learning_rate: float = 1.92e-4
    weight_decay: float = 1e-3
    batch_size: int = 40


MODEL_FIELDS = (
    "soft_encoding_neighbors",
    "rebalancing_lambda",
    "annealed_mean_temperature",
    "decoder_hidden_size",
    "decoder_num_layers",
    "grey_mask",
    "grey_threshold",
)


def build_model(cfg: ColorizationRecipeConfig) -> ColorizationForPreTraining:
    if cfg.preset not in PRESETS:
        raise SystemExit(f"error: --preset must be one of {list(PRESETS)}, got {cfg.preset!r}")
    overrides = {name: getattr(cfg, name) for name in MODEL_FIELDS if getattr(cfg, name) is not None}
    config = getattr(ColorizationConfig, cfg.preset)(
        backbone=cfg.backbone,
        backbone_kwargs=cfg.backbone_kwargs,
        small_input_stem=cfg.small_input_stem,
        image_size=cfg.image_size,
        image_mean=cfg.image_mean,
        image_std=cfg.image_std,
        crop_pct=1.0 if cfg.image_size <= 64 else 0.875,
        **overrides,
    )
    return ColorizationForPreTraining(config)


def first_rows(
    dataset: datasets.Dataset | datasets.IterableDataset, count: int, seed: int
) -> datasets.Dataset:
    """`count` rows as a map-style dataset: a seeded random subset, or the head of a streamed dataset."""
    if isinstance(dataset, datasets.IterableDataset):
        return datasets.Dataset.from_list(list(dataset.take(count)), features=dataset.features)
    return dataset.shuffle(seed=seed).select(range(min(count, len(dataset))))


def estimate_prior(
    cfg: ColorizationRecipeConfig, size: int, device: torch.device
) -> tuple[torch.Tensor, int]:
    """The empirical ab-bin prior of `prior_images` unaugmented training images, and how many there were.

    The images are resized to `size`, the resolution of the loss's targets (1/4 of the input): the prior
    of what the loss sees, at a sixteenth of the cost of full resolution.
    """
    dataset = load_image_dataset(
        cfg.dataset,
        cfg.split,
        image_column=cfg.image_column,
        label_column=cfg.label_column,
        streaming=cfg.streaming,
    )
    subset = first_rows(dataset, cfg.prior_images, cfg.seed)
    # sRGB in [0, 1]: mean 0 and std 1 leave the pixels unnormalized.
    images = ImageDataset(subset, eval_transform(size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 1.0))
    loader = DataLoader(images, batch_size=256, collate_fn=collate, num_workers=cfg.num_workers)
    prior = estimate_ab_prior(batch["pixel_values"].to(device) for batch in loader if "pixel_values" in batch)
    return prior, len(subset)


def held_out_images(cfg: ColorizationRecipeConfig) -> torch.Tensor:
    """The fixed held-out images of the sample grids, normalized like the training views.

    Falls back to training images (with a warning) when the dataset has no such held-out split.
    """
    source = cfg.sample_dataset or cfg.knn_eval_dataset or cfg.dataset
    split = cfg.sample_split or cfg.knn_eval_split
    columns = dict(image_column=cfg.image_column, label_column=cfg.label_column, streaming=cfg.streaming)
    try:
        dataset = load_image_dataset(source, split, **columns)
    except ValueError as error:
        print(f"warning: sample grids show training images: no held-out split ({error}); set --sample_split")
        dataset = load_image_dataset(cfg.dataset, cfg.split, **columns)
    images = ImageDataset(
        first_rows(dataset, cfg.sample_images, cfg.seed),
        eval_transform(cfg.image_size, cfg.image_mean, cfg.image_std, 1.0),
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


def main(cfg: ColorizationRecipeConfig) -> dict[str, float]:
    # Accelerator first: it decides devices, processes, mixed precision and seeds everything.
    accelerator = create_accelerator(cfg)
    os.makedirs(cfg.output_dir, exist_ok=True)
    if accelerator.is_main_process:
        save_config(cfg, os.path.join(cfg.output_dir, "config.yaml"))

    # Data: one view per image, geometry only (colour augmentation would corrupt the target).
    loader = pretraining_loader(
        cfg, accelerator, "crop_flip", cfg.image_size, cfg.image_mean, cfg.image_std, cfg.min_crop_scale
    )
    samples = held_out_images(cfg) if cfg.sample_steps and accelerator.is_main_process else None

    # Model; a fresh run estimates the rebalancing weights, a resumed one loads them with its checkpoint.
    model = build_model(cfg)
    if resolve_resume(cfg.resume, cfg.output_dir) is None:
        with accelerator.main_process_first():  # every process reads the same subset: same weights
            target_size = max(cfg.image_size // model.config.decoder_output_stride, 1)
            prior, counted = estimate_prior(cfg, target_size, accelerator.device)
        weights = model.set_class_weights_from_prior(prior)
        accelerator.print(
            f"ab prior from {counted} images: {int((prior > 0).sum())}/{len(prior)} bins seen, "
            f"rebalancing weights {weights.min():.3g} to {weights.max():.3g}"
        )
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)

    # Optimizer; the learning rate is a pure function of the step (set inside the loop).
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
        encoder=lambda: unwrapped.encoder,
        image_size=cfg.image_size,
        mean=cfg.image_mean,
        std=cfg.image_std,
        name="pretrain-colorization",
    )

    def sample(step: int) -> None:
        grid = save_sample_grid(unwrapped, samples, Path(cfg.output_dir) / "samples" / f"step_{step}.png")
        accelerator.get_tracker("tensorboard", unwrap=True).add_image("samples", grid, step)

    for batch in run:
        # The grid of step N shows the model after N optimizer steps (step 0: random init).
        if samples is not None and run.first_micro_batch and run.step % cfg.sample_steps == 0:
            sample(run.step)
        pixel_values = batch["pixel_values"]
        if cfg.channels_last:
            pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
        with accelerator.accumulate(model):
            run.backward(model(pixel_values=pixel_values).loss)
    metrics = run.finish()
    if samples is not None:
        sample(run.step)

    # The inference model (the encoder on L) + image processor + model card, ready to push.
    if accelerator.is_main_process:
        publish_final_model(
            cfg,
            unwrapped.encoder,
            card=dict(
                family="colorization",
                paper="colorization",
                datasets=[dataset_card_name(cfg.dataset)],
                reproduce_command=command_line(),
                training_summary=metrics,
            ),
        )
    accelerator.end_training()
    return metrics


if __name__ == "__main__":
    config = parse_config(ColorizationRecipeConfig)
    main(config)

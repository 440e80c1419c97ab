"""Self-supervised distillation of a frozen teacher into a small student, with Accelerate.

    accelerate launch recipes/distill.py --config recipes/configs/distill_resnet18_from_moco_resnet50.yaml
    python recipes/distill.py --dataset sample --teacher outputs/demo/final --student resnet10t \
        --small_input_stem --image_size 32 --loss seed --queue_size 4096 --max_steps 200

Losses (`--loss`): `seed` (SEED), `compress_1q` / `compress_2q` (CompRess), `cluster` (cross-entropy on the
teacher's k-means pseudo-labels), `mse` (embedding regression), `kl` (Hinton KD on teacher logits, with
`--teacher_output logits`). The teacher (`--teacher`: an sslhub folder or Hub id such as a MoCo run's
`final` folder, `timm:<name>`, or a transformers image model id) is frozen, in eval mode and run without
gradient; it is never part of the student's config or weights. The model card names it as `base_model`.

What the teacher sees (`--teacher_view`):
- `same` (SEED / CompRess): the student's augmented view, the same tensor, re-normalized and resized on the
  fly when the teacher expects other image settings;
- `other`: the second augmented view of the image (the MoCo key view);
- `eval`: the un-augmented image (evaluation transform): embedded once before training and cached in
  `output_dir/teacher_embeddings.safetensors`, so the teacher costs nothing per step.
`cluster` always uses k-means on the cached `eval` embeddings of the training images; its pseudo-labels are
cached in `output_dir/teacher_clusters.safetensors` and looked up by each batch's dataset `index`.

Settings, checkpoints (`--resume latest`), logs and the final folder work as in `pretrain_moco.py`; the
final folder holds the `StudentModel` (backbone + projector), its image processor and its model card.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader

from sslhub import StudentConfig, StudentForDistillation
from sslhub.configuration_common import IMAGENET_MEAN, IMAGENET_STD
from sslhub.data import ImageDataset, collate, dataset_card_name, eval_transform
from sslhub.distillation import kmeans, load_teacher, renormalize_for_teacher
from sslhub.evaluation import extract_features
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
class DistillRecipeConfig(TrainingConfig):
    """Distillation settings (teacher, student, loss, augmentation; the rest is shared by every recipe)."""

    # the teacher
    teacher: str | None = None  # sslhub folder / Hub id, "timm:<name>" or a transformers image model id
    teacher_output: str = "auto"  # sslhub: projection, timm: pooled; or pooled, projection, logits, cls, mean
    teacher_pretrained: bool = True  # false: the teacher's architecture with random weights (tests only)
    teacher_view: str = "same"  # "same" augmented view as the student, "other" view, or "eval" (cached)
    teacher_image_size: int | None = None  # None: the teacher's own input size when known, else image_size
    teacher_batch_size: int = 256  # the one-off teacher pass over the training images (eval, cluster)
    teacher_hub_id: str | None = None  # the model card's base_model when --teacher is a local folder
    # the student
    student: str = "resnet18"  # any timm model name
    student_kwargs: dict | None = None
    small_input_stem: bool = False  # 3x3 stride-1 stem, no max-pool: ResNets on 32x32 images
    image_size: int = 224
    image_mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    image_std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    augmentation: str = "v2"  # MoCo augmentation preset of the student's view: "v1", "v2" or "v3"
    min_crop_scale: float | None = None  # lower bound of RandomResizedCrop's scale (default 0.2)
    projector_num_layers: int = 2  # the student's MLP head to the teacher's width (SEED, CompRess)
    projector_hidden_size: int | None = None  # None: the backbone's width
    projector_batch_norm: bool = False
    # the loss; None takes the paper's value (seed: T 0.2, teacher T 1e-4, queue 65536; compress: T 0.04,
    # bank 128000; kl: T 4)
    loss: str = "seed"  # "seed", "compress_1q", "compress_2q", "cluster", "mse" or "kl"
    temperature: float | None = None
    teacher_temperature: float | None = None
    queue_size: int | None = None
    mse_target_batch_norm: bool = True  # mse: regress a non-affine BatchNorm of the teacher embedding
    num_clusters: int = 16000  # cluster: k of the k-means on the teacher's embeddings
    kmeans_iters: int = 50


TEACHER_VIEWS = ("same", "other", "eval")
PAPERS = {
    "seed": "seed",
    "compress_1q": "compress",
    "compress_2q": "compress",
    "cluster": "compress",
    "mse": "compress",
    "kl": "Hinton, Vinyals, Dean, Distilling the Knowledge in a Neural Network, arXiv:1503.02531",
}


def student_config(cfg: DistillRecipeConfig, teacher_dim: int) -> StudentConfig:
    return StudentConfig(
        backbone=cfg.student,
        backbone_kwargs=cfg.student_kwargs,
        small_input_stem=cfg.small_input_stem,
        loss=cfg.loss,
        teacher_dim=teacher_dim,
        projector_num_layers=cfg.projector_num_layers,
        projector_hidden_size=cfg.projector_hidden_size,
        projector_batch_norm=cfg.projector_batch_norm,
        temperature=cfg.temperature,
        teacher_temperature=cfg.teacher_temperature,
        queue_size=cfg.queue_size,
        mse_target_batch_norm=cfg.mse_target_batch_norm,
        num_clusters=cfg.num_clusters,
        teacher_name=cfg.teacher,
        image_size=cfg.image_size,
        image_mean=cfg.image_mean,
        image_std=cfg.image_std,
        crop_pct=1.0 if cfg.image_size <= 64 else 0.875,
    )


def _cached(path: Path, metadata: dict[str, str]) -> dict[str, torch.Tensor] | None:
    """The tensors of `path` if it was written for the same settings (`metadata`), else None."""
    if not path.exists():
        return None
    with safe_open(str(path), framework="pt") as file:
        if file.metadata() != metadata:
            return None
    return load_file(path)


def teacher_embeddings_of_training_images(
    cfg: DistillRecipeConfig, accelerator, teacher: nn.Module, dataset
) -> torch.Tensor:
    """(num_images, D) teacher embeddings of the un-augmented training images, row i for dataset index i.

    Computed once (sharded over the processes) and cached in `output_dir`; a resumed run reads the cache.
    An unreadable image gets the row of the next readable one, the image the training views show instead.
    """
    path = Path(cfg.output_dir) / "teacher_embeddings.safetensors"
    metadata = {
        name: str(getattr(cfg, name))
        for name in ("teacher", "teacher_output", "teacher_image_size", "dataset", "split", "image_size")
    }
    metadata["num_images"] = str(len(dataset))
    found = _cached(path, metadata)
    if found is not None:
        accelerator.print(f"reusing the teacher embeddings cached in {path}")
        return found["embeddings"]
    crop_pct = 1.0 if cfg.image_size <= 64 else 0.875
    transform = eval_transform(cfg.image_size, cfg.image_mean, cfg.image_std, crop_pct)
    images = DataLoader(
        ImageDataset(dataset, transform),
        batch_size=cfg.teacher_batch_size,
        collate_fn=collate,
        num_workers=cfg.num_workers,
    )
    features, _, indices = extract_features(
        teacher,
        accelerator.prepare(images),
        accelerator,
        description="teacher embeddings",
        return_indices=True,
    )
    readable = indices.sort().values  # (M,) dataset indices that decoded
    nearest = readable[torch.searchsorted(readable, torch.arange(len(dataset))) % len(readable)]
    table = torch.zeros(len(dataset), features.shape[1])
    table[indices] = features
    embeddings = table[nearest].contiguous()  # (num_images, D)
    if accelerator.is_main_process:
        save_file({"embeddings": embeddings}, str(path), metadata=metadata)
    accelerator.wait_for_everyone()
    return embeddings


def cluster_pseudo_labels(cfg: DistillRecipeConfig, accelerator, embeddings: torch.Tensor) -> torch.Tensor:
    """(num_images,) k-means cluster of each image's L2-normalized teacher embedding, cached in `output_dir`."""
    path = Path(cfg.output_dir) / "teacher_clusters.safetensors"
    metadata = {
        "num_clusters": str(cfg.num_clusters),
        "kmeans_iters": str(cfg.kmeans_iters),
        "seed": str(cfg.seed),
        "num_images": str(len(embeddings)),
        "embeddings_sum": f"{embeddings.double().sum().item():.10e}",  # ties the labels to the embeddings
    }
    found = _cached(path, metadata)
    if found is None:
        # One process clusters and writes; the others read the file, so every process has the same labels.
        if accelerator.is_main_process:
            accelerator.print(f"k-means: {cfg.num_clusters} clusters of {len(embeddings)} teacher embeddings")
            centroids, labels = kmeans(
                F.normalize(embeddings.to(accelerator.device), dim=1),
                cfg.num_clusters,
                iters=cfg.kmeans_iters,
                seed=cfg.seed,
            )
            save_file({"labels": labels.cpu(), "centroids": centroids.cpu()}, str(path), metadata=metadata)
        accelerator.wait_for_everyone()
        found = _cached(path, metadata)
    else:
        accelerator.print(f"reusing the k-means pseudo-labels cached in {path}")
    return found["labels"]


def main(cfg: DistillRecipeConfig) -> dict[str, float]:
    if cfg.teacher is None:
        raise SystemExit(
            "error: --teacher is required (a model folder, Hub id, timm:<name> or transformers id)"
        )
    if cfg.teacher_view not in TEACHER_VIEWS:
        raise SystemExit(
            f"error: --teacher_view must be one of {list(TEACHER_VIEWS)}, got {cfg.teacher_view!r}"
        )
    needs_cache = cfg.loss == "cluster" or cfg.teacher_view == "eval"
    if needs_cache and cfg.streaming:
        raise SystemExit(
            "error: cached teacher outputs (cluster, --teacher_view eval) need a map-style dataset"
        )

    # Accelerator first: it decides devices, processes, mixed precision and seeds everything.
    accelerator = create_accelerator(cfg)
    os.makedirs(cfg.output_dir, exist_ok=True)
    if accelerator.is_main_process:
        save_config(cfg, os.path.join(cfg.output_dir, "config.yaml"))

    # Data: the MoCo views; the student trains on the query view, the teacher sees it too (or the key view).
    loader = pretraining_loader(
        cfg, accelerator, cfg.augmentation, cfg.image_size, cfg.image_mean, cfg.image_std, cfg.min_crop_scale
    )

    # Teacher: frozen, eval mode, outside the student's module tree; it gets the student's images
    # re-normalized (and resized) to its own settings.
    with accelerator.main_process_first():  # the first process fills the Hub cache
        teacher = load_teacher(
            cfg.teacher, cfg.teacher_output, pretrained=cfg.teacher_pretrained, device=accelerator.device
        )
    to_teacher = renormalize_for_teacher(
        teacher, cfg.image_mean, cfg.image_std, cfg.image_size, cfg.teacher_image_size
    )
    accelerator.print(
        f"teacher {cfg.teacher}: {teacher.embedding_dim}-d embeddings, inputs "
        + ("as the student's" if to_teacher.is_identity else "re-normalized / resized for it")
    )

    # Model: the student and its loss state (queues, cluster head); every process builds the same one.
    model = StudentForDistillation(student_config(cfg, teacher.embedding_dim))
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)

    # Teacher outputs of un-augmented images are computed once and cached; otherwise it runs every step.
    cached_embeddings = pseudo_labels = None
    if needs_cache:
        train_images = loader.dataset.dataset
        cached_embeddings = teacher_embeddings_of_training_images(
            cfg, accelerator, nn.Sequential(to_teacher, teacher), train_images
        )
        if cfg.loss == "cluster":
            pseudo_labels = cluster_pseudo_labels(cfg, accelerator, cached_embeddings)
            cached_embeddings = None  # the student learns the teacher's clusters, not its embeddings
    else:
        model.set_teacher(teacher)

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
        encoder=lambda: unwrapped.student,
        image_size=cfg.image_size,
        mean=cfg.image_mean,
        std=cfg.image_std,
        name="distill",
    )
    # With batched augmentation the loader gives uint8 images and the views are made on the device.
    views = TwoViews(cfg, cfg.augmentation, cfg.image_size, cfg.image_mean, cfg.image_std, cfg.min_crop_scale)
    for batch in run:
        images, other_view = views(batch, run)
        teacher_inputs = {}
        if pseudo_labels is not None:
            teacher_inputs["pseudo_labels"] = pseudo_labels[batch["index"].cpu()].to(images.device)
        elif cached_embeddings is not None:
            teacher_inputs["teacher_embeddings"] = cached_embeddings[batch["index"].cpu()].to(images.device)
        else:
            view = other_view if cfg.teacher_view == "other" else images
            teacher_inputs["teacher_pixel_values"] = to_teacher(view)
        with accelerator.accumulate(model):
            # Queues (seed, compress) take the embeddings of every process, as MoCo's key queue does.
            output = model(pixel_values=images, **teacher_inputs)
            run.backward(output.loss)
    metrics = run.finish()

    # The student encoder + image processor + model card naming the teacher; the teacher is not saved.
    if accelerator.is_main_process:
        publish_final_model(
            cfg,
            unwrapped.student,
            card=dict(
                family="student",
                paper=PAPERS[cfg.loss],
                base_model=cfg.teacher_hub_id or cfg.teacher,
                datasets=[dataset_card_name(cfg.dataset)],
                summary=(
                    f"A `{cfg.student}` student distilled from the frozen teacher `{cfg.teacher}` with the "
                    f"`{cfg.loss}` loss, without labels. It maps an image to an embedding for retrieval, kNN "
                    "classification, linear probing or fine-tuning; it predicts no labels by itself."
                ),
                reproduce_command=command_line(),
                training_summary={
                    "teacher": cfg.teacher,
                    "loss": cfg.loss,
                    "teacher_view": cfg.teacher_view,
                    **metrics,
                },
            ),
        )
    accelerator.end_training()
    return metrics


if __name__ == "__main__":
    config = parse_config(DistillRecipeConfig)
    main(config)

"""Self-supervised distillation of a frozen teacher into a small student, with Accelerate.

    accelerate launch recipes/distill.py --config recipes/configs/distill_resnet18_from_moco_resnet50.yaml
    python recipes/distill.py --dataset sample --teacher outputs/demo/final --model.backbone resnet10t \
        --model.image_size 32 --model.loss seed --model.queue_size 4096 --max_steps 200

Losses (`--model.loss`): `seed` (SEED), `compress_1q` / `compress_2q` (CompRess), `cluster` (cross-entropy on the
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
student's settings are the `model:` section (`--model.loss seed`, `--model.backbone resnet18`), passed to
`StudentConfig`. The final folder holds the `StudentModel` (backbone + projector), its image processor and
its model card.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from sslhub import StudentConfig, StudentForDistillation
from sslhub.data import ImageDataset, collate, dataset_card_name, describe_preset, eval_transform
from sslhub.evaluation import cached_tensors, extract_features
from sslhub.hub import portable_path
from sslhub.models.configuration_common import check_choice, check_positive
from sslhub.models.modeling_common import EMBEDDINGS
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
    check_teacher,
    command_line,
    create_accelerator,
    create_optimizer,
    end_training,
    kmeans,
    load_teacher,
    micro_batches,
    parse_args,
    pretraining_loader,
    publish_final_model,
    renormalize_for_teacher,
    save_arguments,
    saved_model_config,
    set_lr,
    setting,
)


@dataclass
class DistillArguments(TrainingArguments):
    """Distillation settings: the teacher and the student's augmentation (the rest is shared)."""

    model_config = StudentConfig
    model_fields_set_by_recipe = ("teacher_dim", "teacher_name")
    legacy_model_names = {"student": "backbone", "student_kwargs": "backbone_kwargs"}

    teacher: str | None = setting(
        None, "sslhub folder or Hub id, timm:<name>, or a transformers image model id"
    )
    teacher_output: str = setting(
        "auto",
        "teacher embedding: auto (logits for loss kl, else sslhub projection, timm pooled), pooled, projection, "
        "logits, cls, mean",
    )
    teacher_pretrained: bool = setting(True, "false: the teacher's architecture with random weights (tests)")
    teacher_view: str = setting("same", "what the teacher sees: same view, other view, or eval (cached)")
    teacher_image_size: int | None = setting(None, "teacher input size; default its own when known")
    teacher_batch_size: int = setting(256, "batch of the one-off teacher pass (eval view, cluster)")
    teacher_hub_id: str | None = setting(None, "the card's base_model when --teacher is a local folder")
    augmentation: str = setting("v2", "MoCo augmentation preset of the student's view: v1, v2 or v3")
    min_crop_scale: float | None = setting(None, "lower bound of RandomResizedCrop's scale (default 0.2)")
    kmeans_iters: int = setting(50, "cluster: Lloyd iterations of the k-means on the teacher's embeddings")
    init_from: str | None = setting(
        None, "continue distilling a saved student (folder or Hub id); its architecture and loss are kept"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.init_from:
            saved_model_config(self.init_from, StudentConfig)
        if self.teacher is None:
            raise ValueError(
                "teacher is required: a model folder, Hub id, timm:<name> or transformers image model id"
            )
        check_choice("teacher_view", self.teacher_view, TEACHER_VIEWS)
        check_choice("teacher_output", self.teacher_output, EMBEDDINGS)
        check_choice("augmentation", self.augmentation, ("v1", "v2", "v3"))
        check_positive("kmeans_iters", self.kmeans_iters)
        cached = self.model.get("loss") == "cluster" or self.teacher_view == "eval"
        if cached and self.streaming:
            raise ValueError(
                "cached teacher outputs (loss cluster, teacher_view eval) need a map-style dataset"
            )


TEACHER_VIEWS = ("same", "other", "eval")
PAPERS = {
    "seed": "seed",
    "compress_1q": "compress",
    "compress_2q": "compress",
    "cluster": "compress",
    "mse": "compress",
    "kl": "Hinton, Vinyals, Dean, Distilling the Knowledge in a Neural Network, arXiv:1503.02531",
}


def student_config(args: DistillArguments, teacher_dim: int) -> StudentConfig:
    """The student's config: the `model` section (over the `init_from` student's config) with the teacher's
    embedding width and name."""
    teacher_name = portable_path(args.teacher)  # provenance a reader can use, without this machine's folders
    try:
        if args.init_from:
            config = StudentConfig.from_pretrained(args.init_from, **args.model, teacher_name=teacher_name)
            if teacher_dim != 1 and config.teacher_dim != teacher_dim:
                raise SystemExit(
                    f"error: the student in {args.init_from} matches {config.teacher_dim}-d teacher embeddings, "
                    f"the teacher {args.teacher} gives {teacher_dim}-d ones"
                )
            return config
        return StudentConfig(**args.model, teacher_dim=teacher_dim, teacher_name=teacher_name)
    except ValueError as error:
        raise SystemExit(f"error: model.{error}") from None


def with_cluster_count(args: DistillArguments, config: StudentConfig, num_images: int) -> StudentConfig:
    """The config with `num_clusters` fitted to the dataset: unset, one cluster per 80 images (ClusterFit's
    16,000 clusters of ImageNet's 1.28M images), at most 16,000; set, at most `num_images`."""
    if "num_clusters" not in args.model:
        args.model["num_clusters"] = max(2, min(16000, num_images // 80))
        print(
            f"cluster: {args.model['num_clusters']} k-means clusters for {num_images} images (set model.num_clusters)"
        )
    elif args.model["num_clusters"] > num_images:
        raise SystemExit(
            f"error: model.num_clusters={args.model['num_clusters']} is more than the {num_images} training "
            f"images: k-means needs at least one image per cluster; leave it unset (one cluster per 80 images) "
            f"or set at most {num_images}"
        )
    return student_config(args, config.teacher_dim)


def teacher_embeddings_of_training_images(
    args: DistillArguments, config: StudentConfig, accelerator, teacher: nn.Module, dataset
) -> torch.Tensor:
    """(num_images, D) teacher embeddings of the un-augmented training images, row i for dataset index i.

    Computed once (sharded over the processes) and cached in `output_dir`; a resumed run reads the cache.
    An unreadable image gets the row of the next readable one, the image the training views show instead.
    """
    settings = {
        name: getattr(args, name)
        for name in ("teacher", "teacher_output", "teacher_image_size", "dataset", "split")
    }
    settings.update(image_size=config.image_size, num_images=len(dataset))

    def compute() -> dict[str, torch.Tensor]:
        transform = eval_transform(config.image_size, config.image_mean, config.image_std, config.crop_pct)
        images = DataLoader(
            ImageDataset(dataset, transform),
            batch_size=args.teacher_batch_size,
            collate_fn=collate,
            num_workers=args.num_workers,
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
        return {"embeddings": table[nearest]}  # (num_images, D)

    path = Path(args.output_dir) / "teacher_embeddings.safetensors"
    tensors, hit = cached_tensors(path, settings, compute, accelerator)
    if hit:
        accelerator.print(f"reusing the teacher embeddings cached in {path}")
    return tensors["embeddings"]


def cluster_pseudo_labels(
    args: DistillArguments, config: StudentConfig, accelerator, embeddings: torch.Tensor
) -> torch.Tensor:
    """(num_images,) k-means cluster of each image's L2-normalized teacher embedding, cached in `output_dir`.

    One process clusters and writes; the others read its file, so every process has the same labels.
    """
    settings = {
        "num_clusters": config.num_clusters,
        "kmeans_iters": args.kmeans_iters,
        "seed": args.seed,
        "num_images": len(embeddings),
        "embeddings_sum": f"{embeddings.double().sum().item():.10e}",  # ties the labels to the embeddings
    }

    def compute() -> dict[str, torch.Tensor]:
        accelerator.print(f"k-means: {config.num_clusters} clusters of {len(embeddings)} teacher embeddings")
        features = F.normalize(embeddings.to(accelerator.device), dim=1)
        centroids, labels = kmeans(features, config.num_clusters, iters=args.kmeans_iters, seed=args.seed)
        return {"labels": labels.cpu(), "centroids": centroids.cpu()}

    path = Path(args.output_dir) / "teacher_clusters.safetensors"
    tensors, hit = cached_tensors(path, settings, compute, accelerator, collective=False)
    if hit:
        accelerator.print(f"reusing the k-means pseudo-labels cached in {path}")
    return tensors["labels"]


def main(args: DistillArguments) -> dict[str, float]:
    # Accelerator first: it decides devices, processes, mixed precision and seeds everything.
    accelerator = create_accelerator(args)
    # The student config checks every model setting now (the teacher's width is filled in later), and the
    # teacher must exist: a bad setting fails here, before any data is read or any image embedded.
    config = student_config(args, teacher_dim=1)
    if config.loss == "kl" and args.teacher_output == "auto":  # Hinton KD distils class probabilities
        args.teacher_output = "logits"
        accelerator.print("loss kl: the teacher gives its class logits (teacher_output logits)")
    try:
        check_teacher(args.teacher)
    except (OSError, ValueError) as error:
        raise SystemExit(f"error: teacher={args.teacher!r} cannot be loaded: {error}") from None
    os.makedirs(args.output_dir, exist_ok=True)
    if accelerator.is_main_process:
        save_arguments(args, os.path.join(args.output_dir, "config.yaml"))

    # Data: the MoCo views; the student trains on the query view, the teacher sees it too (or the key view).
    image = (config.image_size, config.image_mean, config.image_std, args.min_crop_scale)
    loader = pretraining_loader(args, accelerator, args.augmentation, *image)
    views = TwoViews(
        args, args.augmentation, *image, device=accelerator.device
    )  # batched: made on the device
    length = RunLength.of(args, loader)
    check_queue_fits_data(accelerator, config.queue_size, loader)
    if config.loss == "cluster":  # the number of k-means clusters must fit the dataset
        config = with_cluster_count(args, config, num_images=len(loader.dataset))

    # Teacher: frozen, eval mode, outside the student's module tree; it gets the student's images
    # re-normalized (and resized) to its own settings.
    with accelerator.main_process_first():  # the first process fills the Hub cache
        try:
            teacher = load_teacher(
                args.teacher,
                args.teacher_output,
                pretrained=args.teacher_pretrained,
                device=accelerator.device,
            )
        except ValueError as error:  # e.g. logits asked of a model without a trained head
            raise SystemExit(f"error: teacher={args.teacher!r}: {error}") from None
    to_teacher = renormalize_for_teacher(
        teacher, config.image_mean, config.image_std, config.image_size, args.teacher_image_size
    )
    accelerator.print(
        f"teacher {args.teacher}: {teacher.embedding_dim}-d embeddings, inputs "
        + ("as the student's" if to_teacher.is_identity else "re-normalized / resized for it")
    )

    # Model: the student and its loss state (queues, cluster head); every process builds the same one.
    config = student_config(args, teacher.embedding_dim)
    if args.init_from:  # the saved student and, from a distillation checkpoint, its queues
        model = StudentForDistillation.from_pretrained(args.init_from, config=config)
    else:
        model = StudentForDistillation(config)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if args.compile:
        model.compile()  # in place: the state dict, hence checkpoints and the final model, keep their names

    # Teacher outputs of un-augmented images are computed once and cached; otherwise it runs every step.
    cached_embeddings = pseudo_labels = None
    if config.loss == "cluster" or args.teacher_view == "eval":
        train_images = loader.dataset.dataset
        cached_embeddings = teacher_embeddings_of_training_images(
            args, config, accelerator, nn.Sequential(to_teacher, teacher), train_images
        )
        if config.loss == "cluster":
            pseudo_labels = cluster_pseudo_labels(args, config, accelerator, cached_embeddings)
            cached_embeddings = None  # the student learns the teacher's clusters, not its embeddings
    else:
        model.set_teacher(teacher)

    model.to(accelerator.device)  # the optimizer picks its kernels for the model's device
    # Optimizer; the learning rate is a pure function of the step (set inside the loop).
    optimizer = create_optimizer(model, args)
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)
    schedule = LRSchedule.of(args, length, accelerator.num_processes)  # lr: a function of the step

    # Checkpoints hold the student, its queues, optimizer, RNG states and the loop position.
    checkpointer = Checkpointer(accelerator, args.output_dir, args.save_total_limit)
    step = checkpointer.resume(args.resume, schedule)
    metrics = checkpointer.state.metrics  # kNN accuracies, saved with every checkpoint
    monitor = KNNMonitor(args, accelerator, config) if args.knn_steps else None
    if monitor is not None and step == 0:
        metrics["knn_top1_random_init"] = monitor(unwrapped.student)
        accelerator.print(f"kNN top-1 before training: {metrics['knn_top1_random_init']:.4f}")
    logger = RunLogger(accelerator, args, length, checkpointer, name="distill")
    # Each micro-batch with its views; with --prefetch the next views are made while this step runs.
    batches = ViewsAhead(views, accelerator, args.seed, ahead=args.prefetch, timed=logger.timed)

    model.train()
    for micro, images, other_view in batches(micro_batches(loader, accelerator, length, step)):
        if micro.first:  # this optimizer step's learning rate
            lr = schedule(step)
            set_lr(optimizer, lr)
        teacher_inputs = {}
        if pseudo_labels is not None:
            teacher_inputs["pseudo_labels"] = pseudo_labels[micro.batch["index"].cpu()].to(images.device)
        elif cached_embeddings is not None:
            teacher_inputs["teacher_embeddings"] = cached_embeddings[micro.batch["index"].cpu()].to(
                images.device
            )
        else:
            view = other_view if args.teacher_view == "other" else images
            teacher_inputs["teacher_pixel_values"] = to_teacher(view)
        with accelerator.accumulate(model):
            # Queues (seed, compress) take the embeddings of every process, as MoCo's key queue does.
            with logger.timed("forward_backward"):  # the teacher's forward included
                output = model(pixel_values=images, **teacher_inputs)
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
            logger.evaluate(step, monitor, unwrapped.student)  # metrics["knn_top1"] at its steps
            logger.checkpoint(step)  # at save_steps and the end
    metrics = logger.summary(step)

    # The student encoder + image processor + model card naming the teacher; the teacher is not saved.
    if accelerator.is_main_process:
        publish_final_model(
            args,
            unwrapped.student,
            card=dict(
                family="student",
                paper=PAPERS[config.loss],
                base_model=args.teacher_hub_id or args.teacher,
                datasets=[dataset_card_name(args.dataset)],
                summary=(
                    f"A `{config.backbone}` student distilled from the frozen teacher `{portable_path(args.teacher)}` with "
                    f"the `{config.loss}` loss, without labels. It maps an image to an embedding for retrieval, "
                    "kNN classification, linear probing or fine-tuning; it predicts no labels by itself."
                ),
                reproduce_command=command_line(),
            ),
            metrics={
                "teacher": args.teacher,
                "loss": config.loss,
                "teacher_view": args.teacher_view,
                **metrics,
            },
            method_settings={
                "Teacher": f"`{portable_path(args.teacher)}`, its {args.teacher_output} output, "
                f"shown the {args.teacher_view} view",
                "Loss": f"`{config.loss}`" + (f", queue of {config.queue_size}" if config.has_queue else ""),
                "Augmentation": describe_preset(args.augmentation, config.image_size, args.min_crop_scale),
            },
        )
    end_training(accelerator)
    return metrics


if __name__ == "__main__":
    main(parse_args(DistillArguments))

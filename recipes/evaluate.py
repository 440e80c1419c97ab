"""Evaluate a model's features on a labelled dataset: weighted kNN, linear probe or full fine-tuning.

    python recipes/evaluate.py --model outputs/demo/final --train_dataset sample --protocol knn --plots
    python recipes/evaluate.py --model outputs/demo/final --train_dataset sample --protocol linear \
        --cache_dir ~/.cache/sslhub/features
    python recipes/evaluate.py --model timm:resnet18 --image_size 32 --train_dataset uoft-cs/cifar10 \
        --protocol knn                                   # a supervised timm baseline
    accelerate launch recipes/evaluate.py --model org/moco-v2-r50 --train_dataset ILSVRC/imagenet-1k \
        --eval_split validation --protocol linear --temperature 0.07

`--model` is an sslhub folder or Hub id, `timm:<name>`, or any transformers image model. The training
split is the kNN bank / the probe's training set; accuracy is top-1 on the evaluation split. The run
writes `output_dir/results.json` (accuracy and settings), PNG pictures with `--plots`, and adds the
result to the `model-index` of the model card when the model is a local sslhub folder. Settings: the
defaults below, then a `--config` YAML file, then `--field value` overrides (`--help` lists them).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, set_seed
from torch.utils.data import DataLoader

import sslhub
from sslhub.data import (
    ImageDataset,
    class_names,
    collate,
    dataset_card_name,
    decode_image,
    finetune_transform,
    load_image_dataset,
)
from sslhub.evaluation import (
    cached_features,
    card_eval_results,
    classifier_accuracy,
    classifier_logits,
    extract_features,
    knn_accuracy,
    linear_probe,
    load_classifier,
    load_encoder,
    metric_name,
    nearest_neighbours,
    update_model_card,
    write_results,
)
from sslhub.training import cosine_lr, parse_args, set_lr, setting

PROTOCOLS = ("knn", "linear", "finetune")


@dataclass
class EvalArguments:
    """Evaluation settings: model, labelled data, protocol and outputs."""

    # model
    model: str = setting(
        "outputs/demo/final", "sslhub folder or Hub id, timm:<name>, or a transformers image model"
    )
    pretrained: bool = setting(True, "timm models: load timm's pretrained weights")
    random_init: bool = setting(False, "the same architecture with fresh weights: the random-init baseline")
    image_size: int | None = setting(None, "evaluate at this resolution instead of the model's own")
    crop_pct: float | None = setting(
        None, "resize to image_size / crop_pct, then centre-crop; unset: the model's"
    )
    # data: a Hub id, image folder, parquet file/glob, or "sample"; one dataset with two splits, or two
    train_dataset: str = setting("sample", "labelled training data: the kNN bank / the probe's training set")
    eval_dataset: str | None = setting(None, "labelled evaluation data (default: train_dataset)")
    split: str = setting("train", "split of train_dataset")
    eval_split: str | None = setting(
        None, "'test' for the same dataset; else the first of test/validation/train found"
    )
    image_column: str | None = setting(None, "the image column; found automatically when unset")
    label_column: str | None = setting(None, "the label column; found automatically when unset")
    max_train_samples: int | None = setting(None, "a random subset (seeded) of the training data")
    max_eval_samples: int | None = setting(None, "a random subset (seeded) of the evaluation data")
    # protocol
    protocol: str = setting("knn", "knn, linear or finetune")
    k: int = setting(200, "kNN neighbours (InstDisc)")
    temperature: float = setting(0.1, "kNN vote weights exp(s / T): 0.1 on CIFAR, 0.07 on ImageNet")
    epochs: int | None = setting(None, "linear: 100 (over cached features), finetune: 30")
    learning_rate: float | None = setting(None, "linear: 0.1 (SGD, standardized features), finetune: 5e-4")
    weight_decay: float | None = setting(None, "linear: 0, finetune: 0.05")
    optimizer: str | None = setting(None, "linear: sgd or adamw (default sgd); finetune uses AdamW")
    warmup_epochs: float = setting(1.0, "finetune: linear warmup before the cosine decay")
    min_crop_scale: float = setting(0.08, "finetune: RandomResizedCrop scale lower bound (0.2-0.5 at 32x32)")
    batch_size: int = setting(256, "images per process")
    mixed_precision: str = setting("no", "'no', 'bf16' or 'fp16'")
    num_workers: int = setting(2, "DataLoader worker processes")
    seed: int = setting(0, "seed of subsets, the probe and fine-tuning")
    # outputs
    output_dir: str = setting("outputs/eval", "results.json and pictures go here")
    cache_dir: str | None = setting(
        None, "cache extracted features here (safetensors, keyed on model + data)"
    )
    plots: bool = setting(False, "embedding map, retrieval grid and training curves as PNG")
    log_dir: str | None = setting(
        None, "TensorBoard logs for the curves; default: the logs next to the model"
    )
    update_card: bool = setting(True, "add the result to the model card of a local sslhub model folder")


EvalConfig = EvalArguments  # the name of sslhub 0.1


def load_split(cfg: EvalArguments, source: str, split: str, max_samples: int | None):
    dataset = load_image_dataset(source, split, image_column=cfg.image_column, label_column=cfg.label_column)
    if "label" not in dataset.column_names:
        raise ValueError(f"{source!r} ({split}) has no label column; pass --label_column")
    if max_samples is not None and max_samples < len(dataset):
        dataset = dataset.shuffle(seed=cfg.seed).select(
            range(max_samples)
        )  # datasets are often sorted by class
    return dataset


def load_eval_split(cfg: EvalArguments):
    if cfg.eval_dataset is None or cfg.eval_split is not None:
        split = cfg.eval_split or "test"
        return load_split(cfg, cfg.eval_dataset or cfg.train_dataset, split, cfg.max_eval_samples), split
    for split in ("test", "validation", "train"):  # a separate file or folder often holds one "train" split
        try:
            return load_split(cfg, cfg.eval_dataset, split, cfg.max_eval_samples), split
        except ValueError as error:
            if "split" not in str(error).lower():
                raise
    raise ValueError(f"no test, validation or train split in {cfg.eval_dataset!r}; pass --eval_split")


def main(cfg: EvalArguments) -> dict:
    if cfg.protocol not in PROTOCOLS:
        raise SystemExit(f"error: --protocol must be one of {list(PROTOCOLS)}, got {cfg.protocol!r}")
    started = time.perf_counter()
    output_dir = Path(cfg.output_dir)

    # Accelerator: DDP must tolerate parameters that do not reach the logits (e.g. MoCo's projector).
    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        log_with="tensorboard" if cfg.protocol == "finetune" else None,
        project_dir=str(output_dir / "logs"),
    )
    set_seed(cfg.seed)
    say = accelerator.print

    # Data: the first process prepares the datasets cache, the others reuse it.
    with accelerator.main_process_first():
        train_data = load_split(cfg, cfg.train_dataset, cfg.split, cfg.max_train_samples)
        eval_data, eval_split = load_eval_split(cfg)
    names = class_names(train_data)
    num_classes = len(names) if names else int(max(max(train_data["label"]), max(eval_data["label"]))) + 1
    eval_source = cfg.eval_dataset or cfg.train_dataset
    say(
        f"train: {cfg.train_dataset} [{cfg.split}] {len(train_data)} images; "
        f"eval: {eval_source} [{eval_split}] {len(eval_data)} images; {num_classes} classes"
    )

    # Model in eval mode with its own preprocessing; no augmentation for kNN / linear probe.
    encoder = load_encoder(
        cfg.model,
        pretrained=cfg.pretrained,
        random_init=cfg.random_init,
        image_size=cfg.image_size,
        crop_pct=cfg.crop_pct,
    )
    say(
        f"model: {cfg.model} ({encoder.kind}{', random init' if cfg.random_init else ''}), "
        f"{encoder.image_size}px, crop_pct {encoder.crop_pct}"
    )

    def loader(dataset, transform, shuffle=False):
        return accelerator.prepare(
            DataLoader(
                ImageDataset(dataset, transform),
                batch_size=cfg.batch_size,
                shuffle=shuffle,
                drop_last=shuffle,
                collate_fn=collate,
                num_workers=cfg.num_workers,
            )
        )

    features, cache_hits = {}, []
    if cfg.protocol in ("knn", "linear") or cfg.plots:
        model = accelerator.prepare_model(encoder.model, evaluation_mode=True)
        for name, source, split, dataset, limit in (
            ("train", cfg.train_dataset, cfg.split, train_data, cfg.max_train_samples),
            ("eval", eval_source, eval_split, eval_data, cfg.max_eval_samples),
        ):
            # The cache key holds everything the features depend on.
            cache_settings = dict(
                model=encoder.fingerprint,
                dataset=source,
                split=split,
                max_samples=limit,
                seed=cfg.seed if limit or cfg.random_init else None,
                image_column=cfg.image_column,
                label_column=cfg.label_column,
                transform=repr(encoder.transform),
                mixed_precision=cfg.mixed_precision,
            )

            def compute(dataset=dataset, name=name):
                with accelerator.autocast():
                    return extract_features(
                        model,
                        loader(dataset, encoder.transform),
                        accelerator,
                        description=f"{name} features",
                        return_indices=True,
                    )

            features[name], hit = cached_features(cfg.cache_dir, cache_settings, compute, accelerator)
            cache_hits.append(hit)
        say(
            f"features: {tuple(features['train'][0].shape)} train, {tuple(features['eval'][0].shape)} eval"
            + (f" (cache hits: {cache_hits})" if cfg.cache_dir else "")
        )

    settings: dict = {}
    if cfg.protocol == "knn":
        (train_x, train_y, _), (eval_x, eval_y, _) = features["train"], features["eval"]
        accuracy = knn_accuracy(train_x, train_y, eval_x, eval_y, cfg.k, cfg.temperature, num_classes)
        settings = {"k": cfg.k, "temperature": cfg.temperature}

    elif cfg.protocol == "linear":
        # Every process trains the same seeded probe on the same gathered features: no communication.
        (train_x, train_y, _), (eval_x, eval_y, _) = features["train"], features["eval"]
        settings = {
            "epochs": cfg.epochs or 100,
            "learning_rate": cfg.learning_rate or 0.1,
            "weight_decay": cfg.weight_decay or 0.0,
            "optimizer": cfg.optimizer or "sgd",
            "batch_size": cfg.batch_size,
            "standardize": True,
            "augmentation": False,
        }
        probe = linear_probe(
            train_x,
            train_y,
            eval_x,
            eval_y,
            num_classes,
            epochs=settings["epochs"],
            batch_size=cfg.batch_size,
            learning_rate=settings["learning_rate"],
            weight_decay=settings["weight_decay"],
            optimizer=settings["optimizer"],
            seed=cfg.seed,
            device=accelerator.device,
        )
        accuracy = probe.accuracy
        settings["train_accuracy"] = probe.train_accuracy

    else:
        # Full fine-tuning: the whole encoder and a new linear head, with crop + flip augmentation.
        epochs = cfg.epochs or 30
        learning_rate = cfg.learning_rate or 5e-4
        weight_decay = cfg.weight_decay if cfg.weight_decay is not None else 0.05
        settings = {
            "epochs": epochs,
            "learning_rate": learning_rate,
            "weight_decay": weight_decay,
            "optimizer": "adamw",
            "warmup_epochs": cfg.warmup_epochs,
            "batch_size": cfg.batch_size,
            "min_crop_scale": cfg.min_crop_scale,
            "augmentation": "RandomResizedCrop + flip",
        }
        classifier = load_classifier(
            cfg.model, num_classes, pretrained=cfg.pretrained, random_init=cfg.random_init
        )
        train_view = finetune_transform(encoder.image_size, encoder.mean, encoder.std, cfg.min_crop_scale)
        train_loader = loader(train_data, train_view, shuffle=True)
        eval_loader = loader(eval_data, encoder.transform)
        # No weight decay on biases and normalization weights.
        parameters = [p for p in classifier.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in parameters if p.ndim > 1]},
            {"params": [p for p in parameters if p.ndim <= 1], "weight_decay": 0.0},
        ]
        optimizer = torch.optim.AdamW(groups, lr=learning_rate, weight_decay=weight_decay)
        classifier, optimizer = accelerator.prepare(classifier, optimizer)
        if len(train_loader) == 0:
            raise ValueError(f"{len(train_data)} training images make no full batch of {cfg.batch_size}")
        total_steps = epochs * len(train_loader)
        warmup_steps = math.ceil(cfg.warmup_epochs * len(train_loader))
        accelerator.init_trackers("finetune", config={k: v for k, v in settings.items() if v is not None})
        step = 0
        classifier.train()
        for epoch in range(epochs):
            train_loader.set_epoch(epoch)
            for batch in train_loader:
                if "pixel_values" not in batch:
                    continue
                lr = cosine_lr(step, total_steps, learning_rate, warmup_steps)  # pure function of the step
                set_lr(optimizer, lr)
                with accelerator.autocast():
                    logits = classifier_logits(classifier(batch["pixel_values"]))
                loss = F.cross_entropy(logits.float(), batch["label"])
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                accelerator.log({"train/loss": loss.item(), "train/lr": lr}, step=step)
                step += 1
            say(f"epoch {epoch + 1}/{epochs}: loss {loss.item():.4f}")
        with accelerator.autocast():
            accuracy = classifier_accuracy(classifier, eval_loader, accelerator)
        accelerator.end_training()

    name = metric_name(cfg.protocol, cfg.k, cfg.temperature)
    say(f"{name}: {accuracy:.4f}")

    # Results: JSON always, the model card when the model is a local sslhub folder with trained weights.
    results = {
        "protocol": cfg.protocol,
        "metric_name": name,
        "accuracy": round(float(accuracy), 6),
        "model": cfg.model,
        "model_kind": encoder.kind,
        "random_init": cfg.random_init,
        "model_fingerprint": encoder.fingerprint,
        "image_size": encoder.image_size,
        "crop_pct": encoder.crop_pct,
        "train_dataset": cfg.train_dataset,
        "train_split": cfg.split,
        "eval_dataset": eval_source,
        "eval_split": eval_split,
        "num_train": len(train_data),
        "num_eval": len(eval_data),
        "num_classes": num_classes,
        "settings": settings,
        "config": asdict(cfg),
        "num_processes": accelerator.num_processes,
        "seconds": round(time.perf_counter() - started, 1),
        "sslhub_version": sslhub.__version__,
        "model_card_updated": False,
    }
    if accelerator.is_main_process:
        local_sslhub = encoder.kind == "sslhub" and Path(cfg.model).is_dir() and not cfg.random_init
        if cfg.update_card and local_sslhub:
            dataset = dataset_card_name(eval_source)
            entries = card_eval_results(
                accuracy, cfg.protocol, dataset, dataset, eval_split, cfg.k, cfg.temperature
            )
            results["model_card_updated"] = update_model_card(cfg.model, entries)
            if not results["model_card_updated"]:
                say("sslhub.hub is not available: the model card was not updated")
        path = write_results(output_dir, results)
        say(f"wrote {path}")
        if cfg.plots:
            save_plots(cfg, output_dir, features, train_data, eval_data, names)
    accelerator.wait_for_everyone()
    return results


def save_plots(cfg: EvalArguments, output_dir: Path, features: dict, train_data, eval_data, names) -> None:
    from sslhub.evaluation.plots import plot_embedding_map, plot_retrieval_grid, plot_training_curves

    generator = torch.Generator().manual_seed(cfg.seed)
    (train_x, train_y, train_index), (eval_x, eval_y, eval_index) = features["train"], features["eval"]
    # t-SNE is quadratic: 2,000 test points show the structure in seconds.
    subset = torch.randperm(len(eval_x), generator=generator)[:2000]
    plot_embedding_map(eval_x[subset], eval_y[subset], names, output_dir / "embedding_map.png", seed=cfg.seed)

    queries = torch.randperm(len(eval_x), generator=generator)[:8]
    neighbours = nearest_neighbours(train_x, eval_x[queries], k=8)

    def image(dataset, index):
        return thumbnail(decode_image(dataset[int(index)]["image"]))

    def caption(label):
        return names[int(label)] if names else str(int(label))

    plot_retrieval_grid(
        [image(eval_data, eval_index[q]) for q in queries],
        [[image(train_data, train_index[n]) for n in row] for row in neighbours],
        output_dir / "retrieval_grid.png",
        query_labels=[caption(eval_y[q]) for q in queries],
        neighbour_labels=[[caption(train_y[n]) for n in row] for row in neighbours],
    )

    log_dir = Path(cfg.log_dir) if cfg.log_dir else None
    if log_dir is None:  # a pre-training run saves the model in output_dir/final, its logs in output_dir/logs
        candidates = [output_dir / "logs", Path(cfg.model).parent / "logs", Path(cfg.model) / "logs"]
        log_dir = next((c for c in candidates if any(c.rglob("events.out.tfevents.*"))), None)
    if log_dir is not None:
        plot_training_curves(log_dir, output_dir / "training_curves.png")
    else:
        print("no TensorBoard logs found for the training curves; pass --log_dir")


def thumbnail(image, size: int = 96):
    image = image.copy()
    image.thumbnail((size, size))
    return image


if __name__ == "__main__":
    main(parse_args(EvalArguments))

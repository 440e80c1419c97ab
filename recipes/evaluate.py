"""Evaluate a model's features on a labelled dataset: weighted kNN, linear probes, or full fine-tuning.

    python recipes/evaluate.py --model outputs/demo/final --dataset sample --protocol knn --plots
    python recipes/evaluate.py --model outputs/demo/final --dataset sample --protocol linear \
        --cache_dir ~/.cache/sslhub/features
    python recipes/evaluate.py --model timm:resnet18 --image_size 32 --dataset uoft-cs/cifar10 \
        --protocol knn                                   # a supervised timm baseline
    python recipes/evaluate.py --model outputs/demo/final --protocol finetune --label_fraction 0.01 \
        --seed 1                                         # 1% of the labels, class-balanced
    python recipes/evaluate.py --model outputs/demo/final --protocol finetune --random_init true \
        --label_map cifar10-animals-vehicles --save_model true   # supervised on coarse labels, kept
    accelerate launch recipes/evaluate.py --model org/moco-v2-r50 --dataset ILSVRC/imagenet-1k \
        --eval_split validation --protocol finetune --layer_decay 0.75 --knn_temperature 0.07

`--model` is an sslhub folder or Hub id, `timm:<name>`, or any transformers image model. The training
split (`--dataset`, `--split`) is the kNN bank, the probe's or the fine-tuning's training set; accuracy is
top-1 on the evaluation split. Protocols:
- `knn`: weighted kNN (InstDisc: k=200, T=0.1) on frozen features;
- `linear`: the field's linear protocol: a class-balanced 10% of the training set held out, learning rate and
  weight decay swept on it, the test accuracy of the best setting retrained on the whole training set;
- `linear-fast`: one linear probe with the given settings (seconds on cached features);
- `finetune`: the whole encoder and a new linear head, trained through the same loop as the pre-training
  recipes (checkpoints, `--resume latest`, logs), AdamW with timm's parameter groups (no decay on biases,
  norms, position embeddings) and optional layer-wise learning-rate decay (`--layer_decay`).
Which labels: `--label_fraction` keeps a class-balanced fraction of the training labels (the labelled
subset is drawn with `--seed`, so every model gets the same images for a seed), `--label_map` trains and
scores on coarser classes (a named grouping such as `cifar10-animals-vehicles`, or a mapping), and
`--eval_classes` keeps only some classes in both splits (`cifar10-animals`, or names or ids). kNN and
linear probes select rows of the cached features of the whole splits; fine-tuning trains on the selected
images. With `--save_model` the fine-tuned classifier is saved with its card in `output_dir/final` (a
`--teacher_output logits` teacher for distillation, or a model to evaluate again).

The run writes `output_dir/results.json` (with the confusion matrix), PNG pictures with `--plots`
(confusion matrix, embedding map, retrieval grid, training curves), and adds the result to the
`model-index` of the model card when the model is a local sslhub folder. Settings: the defaults below, then
a `--config` YAML file, then `--name value` overrides (`--help` lists them).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import datasets
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import sslhub
from sslhub.data import (
    ImageDataset,
    class_names,
    collate,
    dataset_card_name,
    load_image_dataset,
)
from sslhub.evaluation import (
    LabelSelection,
    cached_features,
    card_eval_results,
    classifier_logits,
    classifier_predictions,
    confusion_matrix,
    extract_features,
    knn_predict,
    linear_probe,
    linear_probe_sweep,
    load_classifier,
    load_encoder,
    metric_name,
    select_labels,
    update_model_card,
    write_results,
)
from sslhub.models.configuration_common import check_choice
from sslhub.training import (
    Checkpointer,
    LRSchedule,
    RunLength,
    RunLogger,
    TrainingArguments,
    command_line,
    create_accelerator,
    create_finetune_optimizer,
    end_training,
    micro_batches,
    parse_args,
    pretraining_loader,
    save_final_model,
    set_lr,
    setting,
    training_summary,
)

PROTOCOLS = ("knn", "linear", "linear-fast", "finetune")


@dataclass
class EvalArguments(TrainingArguments):
    """Evaluation settings: the model, the labelled data, the protocol (the rest is shared with training)."""

    renamed_settings = {"train_dataset": "dataset", "k": "knn_k", "temperature": "knn_temperature"}
    data_sources = (*TrainingArguments.data_sources, "eval_dataset")

    model: str = setting(
        "outputs/demo/final", "sslhub folder or Hub id, timm:<name>, or a transformers image model"
    )
    protocol: str = setting("knn", "knn, linear (validation sweep), linear-fast (one probe) or finetune")
    pretrained: bool = setting(True, "timm models: load timm's pretrained weights")
    random_init: bool = setting(False, "the same architecture with fresh weights: the random-init baseline")
    image_size: int | None = setting(None, "evaluate at this resolution instead of the model's own")
    crop_pct: float | None = setting(
        None, "resize to image_size / crop_pct, then centre-crop; unset: the model's"
    )
    eval_dataset: str | None = setting(None, "labelled evaluation data (default: dataset)")
    eval_split: str | None = setting(
        None, "'test' for the same dataset; else the first of test/validation/train"
    )
    max_train_samples: int | None = setting(None, "a random subset (seeded) of the training data")
    max_eval_samples: int | None = setting(None, "a random subset (seeded) of the evaluation data")
    # which labels
    label_fraction: float = setting(
        1.0, "a class-balanced fraction of the training labels, drawn with --seed (0.01: 1%%)"
    )
    label_map: dict | str | None = setting(
        None,
        "train and score on coarser classes: a named grouping (cifar10-animals-vehicles) or a mapping "
        "{class: new class} / {new class: [classes]}",
    )
    eval_classes: list[str] | str | None = setting(
        None, "keep only these classes in both splits: a named set (cifar10-animals), names or ids"
    )
    # linear protocol
    val_fraction: float = setting(0.1, "linear: the class-balanced part of the training set held out")
    linear_learning_rates: list[float] = setting([0.01, 0.03, 0.1, 0.3, 1.0], "linear: learning rates swept")
    linear_weight_decays: list[float] = setting([0.0, 1e-5, 1e-4, 1e-3], "linear: weight decays swept")
    # fine-tuning
    layer_decay: float | None = setting(None, "finetune: layer-wise lr decay (e.g. 0.75); unset: none")
    min_crop_scale: float = setting(0.08, "finetune: RandomResizedCrop scale lower bound (0.2-0.5 at 32x32)")
    batch_size: int = setting(256, "images per process and micro-batch")
    output_dir: str = setting("outputs/eval", "results.json, pictures and fine-tuning checkpoints go here")
    save_steps: int = setting(10**9, "finetune: checkpoint every N optimizer steps (and at the end)")
    save_model: bool = setting(
        False, "finetune: save the fine-tuned classifier with its model card to output_dir/final"
    )
    # outputs
    cache_dir: str | None = setting(
        None, "cache extracted features here (safetensors, keyed on model + data)"
    )
    plots: bool = setting(False, "confusion matrix, embedding map, retrieval grid and training curves as PNG")
    log_dir: str | None = setting(
        None, "TensorBoard logs for the curves; default: the logs next to the model"
    )
    update_card: bool = setting(True, "add the result to the model card of a local sslhub model folder")

    def training_preset(self) -> dict:
        if self.protocol == "finetune":  # DeiT / MAE-style fine-tuning, short
            return dict(
                optimizer="adamw",
                learning_rate=5e-4,
                weight_decay=0.05,
                lr_schedule="cosine",
                warmup_epochs=1.0,
                epochs=30,
            )
        # linear probes on standardized frozen features (`epochs` passes over the cached features)
        return dict(
            optimizer="sgd",
            learning_rate=0.1,
            weight_decay=0.0,
            lr_schedule="cosine",
            warmup_epochs=0.0,
            epochs=100,
        )

    def __post_init__(self) -> None:
        check_choice("protocol", self.protocol, PROTOCOLS)
        super().__post_init__()
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if not 0 < self.label_fraction <= 1:
            raise ValueError(f"label_fraction must be in (0, 1], got {self.label_fraction}")
        if self.save_model and self.protocol != "finetune":
            raise ValueError("save_model keeps a fine-tuned classifier: it needs --protocol finetune")


def load_split(args: EvalArguments, source: str, split: str, max_samples: int | None):
    dataset = load_image_dataset(
        source, split, image_column=args.image_column, label_column=args.label_column
    )
    if "label" not in dataset.column_names:
        raise ValueError(f"{source!r} ({split}) has no label column; pass --label_column")
    if max_samples is not None and max_samples < len(dataset):
        dataset = dataset.shuffle(seed=args.seed).select(
            range(max_samples)
        )  # datasets are often sorted by class
    return dataset


def load_eval_split(args: EvalArguments):
    if args.eval_dataset is None or args.eval_split is not None:
        split = args.eval_split or "test"
        return load_split(args, args.eval_dataset or args.dataset, split, args.max_eval_samples), split
    for split in ("test", "validation", "train"):  # a separate file or folder often holds one "train" split
        try:
            return load_split(args, args.eval_dataset, split, args.max_eval_samples), split
        except ValueError as error:
            if "split" not in str(error).lower():
                raise
    raise ValueError(f"no test, validation or train split in {args.eval_dataset!r}; pass --eval_split")


def selected_images(dataset, rows: torch.Tensor, selection: LabelSelection):
    """The selected rows of a dataset with their new labels (for fine-tuning, which reads images)."""
    if len(rows) < len(dataset):
        dataset = dataset.select(rows.tolist())
    if torch.equal(selection.table, torch.arange(len(selection.table))):
        return dataset
    table = selection.table.tolist()
    features = dataset.features.copy()
    features["label"] = (
        datasets.ClassLabel(names=selection.names) if selection.names else datasets.Value("int64")
    )
    return dataset.map(
        lambda batch: {"label": [table[label] for label in batch["label"]]},
        batched=True,
        features=features,
        keep_in_memory=True,
    )


def features_of(args, accelerator, encoder, splits: dict) -> dict:
    """`{name: (features, labels, indices)}` of every split, from the feature cache when it has them."""
    model = accelerator.prepare_model(encoder.model, evaluation_mode=True)
    features = {}
    for name, (source, split, dataset, limit) in splits.items():
        # The cache key holds everything the features depend on.
        settings = dict(
            model=encoder.fingerprint,
            dataset=source,
            split=split,
            max_samples=limit,
            seed=args.seed if limit or args.random_init else None,
            image_column=args.image_column,
            label_column=args.label_column,
            transform=repr(encoder.transform),
            mixed_precision=accelerator.mixed_precision,
        )

        def compute(dataset=dataset, name=name):
            images = DataLoader(
                ImageDataset(dataset, encoder.transform),
                batch_size=args.batch_size,
                collate_fn=collate,
                num_workers=args.num_workers,
            )
            with accelerator.autocast():
                return extract_features(
                    model,
                    accelerator.prepare(images),
                    accelerator,
                    description=f"{name} features",
                    return_indices=True,
                )

        features[name], hit = cached_features(args.cache_dir, settings, compute, accelerator)
        accelerator.print(
            f"{name} features: {tuple(features[name][0].shape)}" + (" (from the cache)" if hit else "")
        )
    return features


def finetune(args, accelerator, encoder, train_data, eval_data, names: list[str] | None, num_classes: int):
    """Fine-tune the whole model with a new linear head through the training loop.

    Returns:
        `(predictions, labels, settings, model, metrics)`: the predicted and true classes of `eval_data`,
        the training settings, the unwrapped fine-tuned classifier and the run's measurements.
    """
    # Data: RandomResizedCrop + flip views, seeded per (seed, epoch, image) like pre-training's.
    image = (encoder.image_size, encoder.mean, encoder.std, args.min_crop_scale)
    loader = pretraining_loader(args, accelerator, "crop_flip", *image, dataset=train_data)
    length = RunLength.of(args, loader)

    # Model and optimizer: timm's parameter groups, optional layer-wise decay; lr a pure function of the step.
    classifier = load_classifier(
        args.model,
        num_classes,
        pretrained=args.pretrained,
        random_init=args.random_init,
        label_names=names,
    )
    classifier.to(accelerator.device)
    optimizer = create_finetune_optimizer(classifier, args)
    model, optimizer = accelerator.prepare(classifier, optimizer)
    schedule = LRSchedule.of(args, length, accelerator.num_processes)  # lr: a function of the step

    # Checkpoints and exact resume, logs: the pieces of every recipe.
    checkpointer = Checkpointer(accelerator, args.output_dir, args.save_total_limit)
    step = checkpointer.resume(args.resume, schedule)
    logger = RunLogger(accelerator, args, length, checkpointer, name="finetune")

    model.train()
    # The wait for each micro-batch (its crops and flips included) is the step's "data" time.
    for micro in logger.timed.iterate(micro_batches(loader, accelerator, length, step)):
        if micro.first:  # this optimizer step's learning rate (times each layer group's scale)
            lr = schedule(step)
            set_lr(optimizer, lr)
        with accelerator.accumulate(model):
            with logger.timed("forward_backward"):
                logits = classifier_logits(model(micro.batch["pixel_values"]))
                loss = F.cross_entropy(logits.float(), micro.batch["label"])
                accelerator.backward(loss)
            with logger.timed("optimizer"):
                if accelerator.sync_gradients and args.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        logger.update(loss, micro.batch)
        if not micro.last:
            continue

        step += 1
        with logger.timed("logging"):
            logger.step(step, lr=lr)
            logger.checkpoint(step)  # at save_steps and the end
    summary = logger.summary(step)

    evaluation = DataLoader(
        ImageDataset(eval_data, encoder.transform),
        batch_size=args.batch_size,
        collate_fn=collate,
        num_workers=args.num_workers,
    )
    with accelerator.autocast():
        predictions, labels = classifier_predictions(model, accelerator.prepare(evaluation), accelerator)
    settings = dict(
        epochs=args.epochs,
        steps=step,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        layer_decay=args.layer_decay,
        warmup_epochs=args.warmup_epochs,
        batch_size=args.batch_size,
        min_crop_scale=args.min_crop_scale,
        optimizer="adamw (timm parameter groups)",
        augmentation="RandomResizedCrop + flip",
        train_seconds=summary["train_seconds"],
        images_per_second=summary["images_per_second"],
        step_time_ms=summary["step_time_ms"],
    )
    return predictions, labels, settings, accelerator.unwrap_model(model), summary


def main(args: EvalArguments) -> dict:
    started = time.perf_counter()
    output_dir = Path(args.output_dir)
    # Accelerator: devices, processes, precision (auto: bf16 only where native), trackers, seeds.
    accelerator = create_accelerator(args)
    say = accelerator.print

    # Data: the first process prepares the datasets cache, the others reuse it.
    with accelerator.main_process_first():
        train_data = load_split(args, args.dataset, args.split, args.max_train_samples)
        eval_data, eval_split = load_eval_split(args)
    names = class_names(train_data)
    num_classes = len(names) if names else int(max(max(train_data["label"]), max(eval_data["label"]))) + 1
    eval_source = args.eval_dataset or args.dataset
    # Labels: a labelled fraction, coarser classes or some classes; a seed gives every model the same images.
    selection = select_labels(
        torch.tensor(list(train_data["label"])),
        torch.tensor(list(eval_data["label"])),
        names,
        num_classes,
        label_fraction=args.label_fraction,
        label_map=args.label_map,
        eval_classes=args.eval_classes,
        seed=args.seed,
    )
    say(
        f"train: {args.dataset} [{args.split}] {len(selection.train_rows)} of {len(train_data)} images; "
        f"eval: {eval_source} [{eval_split}] {len(selection.eval_rows)} of {len(eval_data)} images; "
        f"{selection.num_classes} classes" + (f" ({selection.description})" if selection.description else "")
    )

    # Model in eval mode with its own preprocessing; no augmentation for kNN / linear probes.
    encoder = load_encoder(
        args.model,
        pretrained=args.pretrained,
        random_init=args.random_init,
        image_size=args.image_size,
        crop_pct=args.crop_pct,
    )
    say(
        f"model: {args.model} ({encoder.kind}{', random init' if args.random_init else ''}), "
        f"{encoder.image_size}px, crop_pct {encoder.crop_pct}"
    )

    # Features of the whole splits (cached), then the selected rows with their labels.
    features = {}
    if args.protocol in ("knn", "linear", "linear-fast") or args.plots:
        features = features_of(
            args,
            accelerator,
            encoder,
            {
                "train": (args.dataset, args.split, train_data, args.max_train_samples),
                "eval": (eval_source, eval_split, eval_data, args.max_eval_samples),
            },
        )
        features = {split: selection.apply(*features[split], split) for split in features}
    num_classes = selection.num_classes
    settings: dict = {}
    classifier = None
    if args.protocol == "knn":
        (train_x, train_y, _), (eval_x, eval_y, _) = features["train"], features["eval"]
        scores = knn_predict(train_x, train_y, eval_x, num_classes, args.knn_k, args.knn_temperature)
        predictions, labels = scores.argmax(1), eval_y
        settings = {"k": args.knn_k, "temperature": args.knn_temperature}
    elif args.protocol in ("linear", "linear-fast"):
        # Every process trains the same seeded probes on the same gathered features: no communication.
        (train_x, train_y, _), (eval_x, eval_y, _) = features["train"], features["eval"]
        probe = dict(
            epochs=args.epochs,
            batch_size=args.batch_size,
            optimizer=args.optimizer,
            device=accelerator.device,
        )
        settings = {**probe, "device": str(accelerator.device), "standardize": True, "augmentation": False}
        if args.protocol == "linear":
            sweep = linear_probe_sweep(
                train_x,
                train_y,
                eval_x,
                eval_y,
                num_classes,
                args.linear_learning_rates,
                args.linear_weight_decays,
                args.val_fraction,
                args.seed,
                **probe,
            )
            settings.update(
                learning_rate=sweep.learning_rate,
                weight_decay=sweep.weight_decay,
                val_fraction=args.val_fraction,
                validation_accuracy=sweep.validation_accuracy,
                train_accuracy=sweep.train_accuracy,
                sweep=sweep.sweep,
            )
            predictions = sweep.predictions
            say(
                f"best on validation: lr {sweep.learning_rate:g}, wd {sweep.weight_decay:g} ({sweep.validation_accuracy:.4f})"
            )
        else:
            result = linear_probe(
                train_x,
                train_y,
                eval_x,
                eval_y,
                num_classes,
                learning_rate=args.learning_rate,
                weight_decay=args.weight_decay,
                seed=args.seed,
                **probe,
            )
            predictions = result.predictions
            settings.update(
                learning_rate=args.learning_rate,
                weight_decay=args.weight_decay,
                train_accuracy=result.train_accuracy,
            )
        labels = eval_y
    else:
        train_images = selected_images(train_data, selection.train_rows, selection)
        eval_images = selected_images(eval_data, selection.eval_rows, selection)
        predictions, labels, settings, classifier, run_metrics = finetune(
            args, accelerator, encoder, train_images, eval_images, selection.names, num_classes
        )
    predictions, labels = predictions.cpu(), labels.cpu()
    accuracy = (predictions == labels).float().mean().item()
    confusion = confusion_matrix(predictions, labels, num_classes)

    # A result on seeded subsets is named as such, so that it neither passes for nor replaces a full-split one.
    subsets = [
        f"{len(rows)} {role}"
        for role, rows, limit in (
            ("training", selection.train_rows, args.max_train_samples),
            ("evaluation", selection.eval_rows, args.max_eval_samples),
        )
        if limit
    ]
    subset = f"subset{'s' if len(subsets) > 1 else ''}: {', '.join(subsets)} images" if subsets else ""
    qualifier = ", ".join(part for part in (selection.description, subset) if part)
    name = metric_name(args.protocol, args.knn_k, args.knn_temperature, qualifier)
    say(f"{name}: {accuracy:.4f}")

    # Results: JSON always, the model card when the model is a local sslhub folder with trained weights.
    results = {
        "protocol": args.protocol,
        "metric_name": name,
        "accuracy": round(float(accuracy), 6),
        "model": args.model,
        "model_kind": encoder.kind,
        "random_init": args.random_init,
        "model_fingerprint": encoder.fingerprint,
        "image_size": encoder.image_size,
        "crop_pct": encoder.crop_pct,
        "train_dataset": args.dataset,
        "train_split": args.split,
        "eval_dataset": eval_source,
        "eval_split": eval_split,
        "num_train": len(selection.train_rows),
        "num_eval": len(selection.eval_rows),
        "num_classes": num_classes,
        "label_fraction": args.label_fraction,
        "label_map": args.label_map,
        "eval_classes": args.eval_classes,
        "class_names": selection.names,
        "confusion_matrix": confusion.tolist(),
        "settings": settings,
        "config": asdict(args),
        "num_processes": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision,
        "seconds": round(time.perf_counter() - started, 1),
        "sslhub_version": sslhub.__version__,
        "model_card_updated": False,
    }
    if accelerator.is_main_process:
        dataset = dataset_card_name(eval_source)
        entries = card_eval_results(
            accuracy,
            args.protocol,
            dataset,
            dataset,
            eval_split,
            args.knn_k,
            args.knn_temperature,
            qualifier,
        )
        results["model_index"] = entries  # what `sslhub card FOLDER --results results.json` merges
        local_sslhub = encoder.kind == "sslhub" and Path(args.model).is_dir() and not args.random_init
        if args.update_card and local_sslhub:
            results["model_card_updated"] = update_model_card(args.model, entries)
        if args.save_model:
            results["saved_model"] = str(save_classifier(args, classifier, selection, entries, run_metrics))
        path = write_results(output_dir, results)
        say(f"wrote {path}")
        if args.plots:
            from sslhub.evaluation.plots import model_log_dirs, plot_evaluation

            plot_evaluation(
                output_dir,
                features,
                train_data,
                eval_data,
                selection.names,
                confusion,
                title=name,
                seed=args.seed,
                log_dirs=[args.log_dir]
                if args.log_dir
                else [output_dir / "logs", *model_log_dirs(args.model)],
            )
    accelerator.wait_for_everyone()
    end_training(accelerator)
    return results


def save_classifier(args: EvalArguments, classifier, selection: LabelSelection, entries, metrics) -> Path:
    """The fine-tuned classifier in `output_dir/final` with its image processor and a model card that
    holds its result and how it was trained (`metrics`: the fine-tuning run's measurements)."""
    if not hasattr(classifier, "save_pretrained"):
        raise SystemExit(f"error: save_model needs an sslhub or transformers model; {args.model} is not one")
    source = "random init" if args.random_init else f"`{args.model}`"
    labels = selection.description or "all labels"
    final = save_final_model(
        classifier,
        args.output_dir,
        card=dict(
            model_name=Path(args.output_dir).resolve().name,
            family="supervised" if args.random_init else "fine-tuned",
            paper=None,
            base_model=None if args.random_init else args.model,
            datasets=[dataset_card_name(args.dataset)],
            summary=(
                f"An image classifier over {selection.num_classes} classes "
                f"({', '.join(selection.names or [])}), fine-tuned from {source} with labels ({labels}) "
                "by `recipes/evaluate.py --protocol finetune`."
            ),
            reproduce_command=command_line(),
            training_summary=training_summary(
                args,
                metrics,
                {
                    "Labels": f"{labels}, {len(selection.train_rows)} training images",
                    "Fine-tuning": f"crops of scale [{args.min_crop_scale:g}, 1] and flips"
                    + (f", layer-wise lr decay {args.layer_decay:g}" if args.layer_decay else ""),
                },
            ),
            eval_results=entries,
            limitations=(
                "Trained on a small labelled set at low resolution: a research baseline, not a production "
                "classifier. Biases of the training data and labels carry over."
            ),
        ),
    )
    return final


if __name__ == "__main__":
    main(parse_args(EvalArguments))

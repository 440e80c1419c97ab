"""The linear probe: a linear classifier trained on cached frozen features."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class LinearProbeResult:
    """Outcome of `linear_probe`: top-1 accuracy in [0, 1], the trained layer and its input standardization,
    and the (M,) predicted classes of the test features."""

    accuracy: float
    classifier: nn.Linear
    mean: torch.Tensor | None
    std: torch.Tensor | None
    train_accuracy: float
    predictions: torch.Tensor | None = None


def linear_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int | None = None,
    epochs: int = 100,
    batch_size: int = 256,
    learning_rate: float = 0.1,
    weight_decay: float = 0.0,
    optimizer: str = "sgd",
    standardize: bool = True,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> LinearProbeResult:
    """Linear probe: a linear layer (no BatchNorm) trained with cross-entropy on frozen features.

    This is the common fast variant on features extracted once with the evaluation transform (no
    augmentation), so that hundreds of epochs cost seconds; the papers' protocol (MoCo, solo-learn)
    re-augments images every epoch and scores a little higher. Features are optionally standardized
    with the training set's per-dimension mean and std; the learning rate follows a cosine schedule
    over all steps.

    Args:
        train_features / train_labels: (N, D) features and (N,) labels of the training set.
        test_features / test_labels: (M, D) and (M,) of the evaluation set.
        num_classes: C; inferred from the labels when `None`.
        epochs: passes over the training features.
        batch_size: features per step.
        learning_rate: peak learning rate (0.1 suits SGD on standardized features, 1e-3 AdamW).
        weight_decay: L2 penalty (SGD) or decoupled weight decay (AdamW).
        optimizer: `"sgd"` (momentum 0.9, Nesterov) or `"adamw"`.
        standardize: standardize features with the training statistics first.
        seed: seed of the layer's initialization and of the batch order.
        device: where to train; defaults to the features' device.

    Returns:
        A `LinearProbeResult` with the test top-1 accuracy.
    """
    if optimizer not in ("sgd", "adamw"):
        raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {optimizer!r}")
    device = torch.device(device) if device is not None else train_features.device
    generator = torch.Generator().manual_seed(seed)
    train_x, test_x = train_features.float().to(device), test_features.float().to(device)
    train_y, test_y = train_labels.long().to(device), test_labels.long().to(device)
    num_classes = num_classes or int(max(train_y.max(), test_y.max())) + 1
    mean = std = None
    if standardize:
        mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
        train_x, test_x = (train_x - mean) / std, (test_x - mean) / std

    classifier = nn.Linear(train_x.shape[1], num_classes).to(device)
    with torch.no_grad():
        bound = 1 / math.sqrt(train_x.shape[1])
        classifier.weight.copy_(torch.rand(classifier.weight.shape, generator=generator) * 2 * bound - bound)
        classifier.bias.zero_()
    if optimizer == "sgd":
        opt = torch.optim.SGD(
            classifier.parameters(), learning_rate, momentum=0.9, nesterov=True, weight_decay=weight_decay
        )
    else:
        opt = torch.optim.AdamW(classifier.parameters(), learning_rate, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(train_x) / batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: 0.5 * (1 + math.cos(math.pi * step / (epochs * steps_per_epoch)))
    )
    with torch.enable_grad():
        for _ in range(epochs):
            order = torch.randperm(len(train_x), generator=generator).to(device)
            for start in range(0, len(train_x), batch_size):
                batch = order[start : start + batch_size]
                loss = F.cross_entropy(classifier(train_x[batch]), train_y[batch])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                schedule.step()

    with torch.no_grad():
        predictions = classifier(test_x).argmax(1)
        accuracy = (predictions == test_y).float().mean().item()
        train_accuracy = (classifier(train_x).argmax(1) == train_y).float().mean().item()
    return LinearProbeResult(accuracy, classifier.cpu(), mean, std, train_accuracy, predictions.cpu())


def stratified_split(
    labels: torch.Tensor, fraction: float, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices `(kept, held_out)` holding out `fraction` of every class (at least one image of each class
    with two or more), drawn with `seed`."""
    if not 0 < fraction < 1:
        raise ValueError(f"the validation fraction must be in (0, 1), got {fraction}")
    generator = torch.Generator().manual_seed(seed)
    kept, held_out = [], []
    for label in labels.unique():
        members = (labels == label).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        count = max(1, round(fraction * len(members))) if len(members) > 1 else 0
        held_out.append(members[:count])
        kept.append(members[count:])
    return torch.cat(kept).sort().values, torch.cat(held_out).sort().values


@dataclass
class LinearSweepResult:
    """Outcome of `linear_probe_sweep`: test top-1 at the setting best on validation, the whole sweep, and
    the (M,) test predictions of the final probe."""

    accuracy: float
    learning_rate: float
    weight_decay: float
    validation_accuracy: float
    train_accuracy: float
    sweep: list[dict[str, float]]
    predictions: torch.Tensor | None = None


def linear_probe_sweep(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int | None = None,
    learning_rates: list[float] = (0.01, 0.03, 0.1, 0.3, 1.0),
    weight_decays: list[float] = (0.0, 1e-5, 1e-4, 1e-3),
    val_fraction: float = 0.1,
    seed: int = 0,
    **probe_settings,
) -> LinearSweepResult:
    """The linear evaluation protocol of the field (MoCo / SimCLR evaluation code, solo-learn): hold out a
    class-balanced `val_fraction` of the training set, train a probe for every (learning rate, weight decay)
    on the rest and score it on the held-out part, then train the best setting on the whole training set
    and report its test top-1. The test set never chooses anything.

    Args:
        train_features / train_labels, test_features / test_labels: frozen features and labels.
        num_classes: C; inferred from the labels when `None`.
        learning_rates / weight_decays: the grid.
        val_fraction: the held-out part of the training set.
        seed: seed of the split and of every probe.
        probe_settings: the other arguments of `linear_probe` (epochs, batch_size, optimizer, device...).
    """
    num_classes = num_classes or int(max(train_labels.max(), test_labels.max())) + 1
    kept, held_out = stratified_split(train_labels.cpu(), val_fraction, seed)
    sweep = []
    for learning_rate in learning_rates:
        for weight_decay in weight_decays:
            probe = linear_probe(
                train_features[kept],
                train_labels[kept],
                train_features[held_out],
                train_labels[held_out],
                num_classes,
                learning_rate=learning_rate,
                weight_decay=weight_decay,
                seed=seed,
                **probe_settings,
            )
            sweep.append(
                dict(
                    learning_rate=learning_rate, weight_decay=weight_decay, validation_accuracy=probe.accuracy
                )
            )
    best = max(sweep, key=lambda row: row["validation_accuracy"])
    final = linear_probe(
        train_features,
        train_labels,
        test_features,
        test_labels,
        num_classes,
        learning_rate=best["learning_rate"],
        weight_decay=best["weight_decay"],
        seed=seed,
        **probe_settings,
    )
    return LinearSweepResult(
        accuracy=final.accuracy,
        learning_rate=best["learning_rate"],
        weight_decay=best["weight_decay"],
        validation_accuracy=best["validation_accuracy"],
        train_accuracy=final.train_accuracy,
        sweep=sweep,
        predictions=final.predictions,
    )

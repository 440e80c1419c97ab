"""Full fine-tuning: any model with a new linear head, and the accuracy of a classifier."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForImageClassification

from .features import extract_features
from .reference import TIMM_PREFIX, embed, load_encoder


class LinearClassifier(nn.Module):
    """A headless encoder (e.g. a timm backbone) with a new linear layer: logits = W f(x) + b."""

    def __init__(self, encoder: nn.Module, num_features: int, num_labels: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.classifier = nn.Linear(num_features, num_labels)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.classifier(embed(self.encoder, pixel_values))


def load_classifier(
    spec: str,
    num_labels: int,
    *,
    pretrained: bool = True,
    random_init: bool = False,
    label_names: list[str] | None = None,
) -> nn.Module:
    """The model of full fine-tuning: the encoder of `spec` with a new linear head of `num_labels` classes.

    sslhub and transformers models load through `AutoModelForImageClassification` (every sslhub family has a
    classification head; a transformers model gets its head replaced); `timm:<name>` (and any model without
    a registered head) becomes a `LinearClassifier` on its pooled embedding. Read logits from the output with
    `classifier_logits`. `label_names` name the classes in the config (`id2label`) of a transformers
    classifier.
    """
    if not spec.startswith(TIMM_PREFIX):
        labels = {"num_labels": num_labels}
        if label_names is not None:
            labels["id2label"] = dict(enumerate(label_names))
            labels["label2id"] = {name: i for i, name in enumerate(label_names)}
        try:
            if random_init:
                config = AutoConfig.from_pretrained(spec, **labels)
                return AutoModelForImageClassification.from_config(config)
            return AutoModelForImageClassification.from_pretrained(
                spec, **labels, ignore_mismatched_sizes=True
            )
        except ValueError as error:
            if "Unrecognized configuration class" not in str(error):
                raise
    encoder = load_encoder(spec, pretrained=pretrained, random_init=random_init)
    return LinearClassifier(encoder.model, encoder.embedding_dim(), num_labels)


def classifier_logits(output: Any) -> torch.Tensor:
    """The (N, C) logits of a `load_classifier` model's output (a tensor or a `ModelOutput`)."""
    return output if isinstance(output, torch.Tensor) else output.logits


class _Logits(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return classifier_logits(self.model(pixel_values))


def classifier_predictions(
    model: nn.Module, batches: Iterable[dict[str, torch.Tensor]], accelerator=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(predicted classes (N,), labels (N,))` of a classifier over labelled batches, each sample once.

    Runs in eval mode and gathers like `extract_features` (its training mode is restored afterwards).
    """
    logits, labels = extract_features(_Logits(model), batches, accelerator, description="evaluation")
    if labels is None:
        raise ValueError("the evaluation batches have no labels")
    return logits.argmax(1), labels


def classifier_accuracy(
    model: nn.Module, batches: Iterable[dict[str, torch.Tensor]], accelerator=None
) -> float:
    """Top-1 accuracy (in [0, 1]) of a classifier over labelled batches (see `classifier_predictions`)."""
    predictions, labels = classifier_predictions(model, batches, accelerator)
    return (predictions == labels).float().mean().item()

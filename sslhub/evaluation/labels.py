"""Which labels an evaluation uses: a class-balanced labelled fraction (label efficiency), a coarser grouping of
the classes (training on superclasses), a subset of the classes (fine classes within one group), and the
confusion matrix of the predictions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .linear import stratified_split

CIFAR10_ANIMALS = ("bird", "cat", "deer", "dog", "frog", "horse")
CIFAR10_VEHICLES = ("airplane", "automobile", "ship", "truck")
CLASS_SETS = {"cifar10-animals": CIFAR10_ANIMALS, "cifar10-vehicles": CIFAR10_VEHICLES}
"""Named sets of classes for `eval_classes`."""
LABEL_GROUPINGS = {"cifar10-animals-vehicles": {"animal": CIFAR10_ANIMALS, "vehicle": CIFAR10_VEHICLES}}
"""Named groupings for `label_map`: each coarse class and the classes it is made of."""


def _label_id(label: Any, names: Sequence[str] | None) -> int:
    """A class given by id (int or digits) or by name, as its id."""
    if isinstance(label, int) and not isinstance(label, bool):
        return label
    text = str(label).strip()
    if text.lstrip("-").isdigit():
        return int(text)
    if names is not None and text in names:
        return list(names).index(text)
    raise ValueError(f"unknown class {label!r}; the classes are {list(names) if names else 'integer ids'}")


def resolve_classes(spec: str | Sequence[Any], names: Sequence[str] | None) -> list[int]:
    """Class ids from a named set (`CLASS_SETS`), a comma-separated string or a list of ids or names."""
    if isinstance(spec, str):
        spec = CLASS_SETS.get(spec.strip(), spec.split(","))
    ids = [_label_id(label, names) for label in spec]
    if not ids or len(set(ids)) != len(ids):
        raise ValueError(f"eval_classes needs distinct classes, got {list(spec)}")
    return ids


def resolve_label_map(
    spec: str | dict, names: Sequence[str] | None, num_classes: int
) -> tuple[list[int], list[str]]:
    """The new label of every original class and the new class names.

    Args:
        spec: a name of `LABEL_GROUPINGS`, or a mapping either from each original class (id or name) to
            its new class (id or name), or from each new class name to the list of its original classes.
        names: the original class names (None: classes are ids only).
        num_classes: the number of original classes; each must be mapped.

    Returns:
        `(table, new_names)`: `table[original] = new`, new ids numbered in order of first appearance
        (integer targets keep their value).
    """
    if isinstance(spec, str):
        if spec not in LABEL_GROUPINGS:
            raise ValueError(f"unknown label grouping {spec!r}; named groupings: {list(LABEL_GROUPINGS)}")
        spec = LABEL_GROUPINGS[spec]
    if all(isinstance(v, (list, tuple)) for v in spec.values()):  # {new: [originals]}
        spec = {original: new for new, originals in spec.items() for original in originals}
    mapping = {_label_id(original, names): new for original, new in spec.items()}
    missing = sorted(set(range(num_classes)) - set(mapping))
    if missing:
        shown = [names[i] if names else i for i in missing]
        raise ValueError(f"label_map leaves classes {shown} unmapped; map every class")
    targets = [mapping[i] for i in range(num_classes)]
    if all(isinstance(t, int) and not isinstance(t, bool) for t in targets):
        table = targets
        new_names = [
            "+".join(names[i] if names else str(i) for i in range(num_classes) if targets[i] == new)
            for new in range(max(targets) + 1)
        ]
    else:
        new_names = list(dict.fromkeys(str(t) for t in targets))
        table = [new_names.index(str(t)) for t in targets]
    return table, new_names


@dataclass
class LabelSelection:
    """The labelled rows and the labels an evaluation uses.

    Attributes:
        train_rows / eval_rows: sorted dataset row indices kept in each split.
        table: (C_original,) the label each original class becomes, -1 for a dropped class.
        names: the class names after selection (None when the dataset has none).
        num_classes: the number of classes after selection.
        description: how the metric's name says what was selected (empty: everything, as given).
    """

    train_rows: torch.Tensor
    eval_rows: torch.Tensor
    table: torch.Tensor
    names: list[str] | None
    num_classes: int
    description: str = ""

    def apply(
        self, features: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor, split: str
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The rows of `(features, labels, dataset indices)` of `split` ("train" or "eval") that are kept,
        with their new labels."""
        rows = self.train_rows if split == "train" else self.eval_rows
        keep = torch.isin(indices, rows)
        return features[keep], self.table[labels[keep].long()], indices[keep]

    def relabel(self, labels: torch.Tensor) -> torch.Tensor:
        """New labels of original labels."""
        return self.table[labels.long()]


def select_labels(
    train_labels: torch.Tensor,
    eval_labels: torch.Tensor,
    names: Sequence[str] | None,
    num_classes: int,
    label_fraction: float = 1.0,
    label_map: str | dict | None = None,
    eval_classes: str | Sequence[Any] | None = None,
    seed: int = 0,
) -> LabelSelection:
    """Choose the rows and labels of an evaluation.

    In this order: `eval_classes` keeps the images of those classes in both splits (renumbered in the
    given order); `label_map` groups classes into coarser ones (in both splits); `label_fraction` keeps a
    class-balanced fraction of the training images (of every resulting class, at least one image each),
    drawn with `seed`: the same seed gives the same labelled subset to every model.

    Args:
        train_labels / eval_labels: (N,) and (M,) original labels of the two splits.
        names: original class names, or None.
        num_classes: the number of original classes.
        label_fraction: in (0, 1].
        label_map: see `resolve_label_map`.
        eval_classes: see `resolve_classes`.
        seed: seed of the labelled subset.
    """
    if not 0 < label_fraction <= 1:
        raise ValueError(f"label_fraction must be in (0, 1], got {label_fraction}")
    table = torch.arange(num_classes)
    new_names = list(names) if names is not None else None
    parts = []
    if eval_classes is not None:
        kept = resolve_classes(eval_classes, names)
        table = torch.full((num_classes,), -1, dtype=torch.long)
        table[kept] = torch.arange(len(kept))
        new_names = [names[i] for i in kept] if names is not None else None
        parts.append("classes " + "/".join(new_names or [str(i) for i in kept]))
    if label_map is not None:
        if eval_classes is not None:
            raise ValueError("label_map and eval_classes cannot be combined")
        mapped, new_names = resolve_label_map(label_map, names, num_classes)
        table = torch.tensor(mapped)
        parts.append(f"labels grouped as {label_map}" if isinstance(label_map, str) else "grouped labels")
    kept_train = (table[train_labels.long()] >= 0).nonzero().flatten()
    eval_rows = (table[eval_labels.long()] >= 0).nonzero().flatten()
    if label_fraction < 1:
        new_labels = table[train_labels[kept_train].long()]
        _, chosen = stratified_split(new_labels, label_fraction, seed)
        kept_train = kept_train[chosen]
        parts.append(f"{100 * label_fraction:g}% labels")
    return LabelSelection(
        train_rows=kept_train.sort().values,
        eval_rows=eval_rows,
        table=table,
        names=new_names,
        num_classes=int(table.max()) + 1,
        description=", ".join(parts),
    )


def confusion_matrix(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, C) counts: row = true class, column = predicted class."""
    index = labels.long().cpu() * num_classes + predictions.long().cpu()
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)

"""torch datasets over `datasets` tables: two augmented views per image (map-style and streamed), equal-sized
uint8 images for batched augmentation, one evaluation view per image, and the `collate` that drops and
names unreadable files."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import datasets
import torch
from PIL import Image
from torch.utils.data import Dataset, IterableDataset
from torchvision.transforms import v2

from .decoding import try_decode
from .views import OneViewTransform, TwoViewTransform, sample_seed, view_item


class TwoViewDataset(Dataset):
    """Map-style dataset of two augmented views per image, for MoCo-style pre-training.

    Items are `{"query_pixel_values", "key_pixel_values", "index", "unreadable"}` (plus `label` when the
    dataset has labels). An unreadable image is skipped with a warning that names it and replaced by the
    next readable one, so batches keep their size (every process must gather equal-sized key batches);
    `unreadable` names the files passed over. Call `set_epoch` before each epoch: augmentation seeds
    depend on (seed, epoch, index). With a `OneViewTransform` the item holds one view, `pixel_values`.
    """

    def __init__(
        self, dataset: datasets.Dataset, transform: TwoViewTransform | OneViewTransform, seed: int = 0
    ) -> None:
        self.dataset = dataset
        self.transform = transform
        self.seed = seed
        self.epoch = 0
        self.has_labels = "label" in dataset.column_names

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, row, unreadable = read_readable(self.dataset, index)
        views = self.transform(image, sample_seed(self.seed, self.epoch, index))
        item = {**view_item(views), "index": index, "unreadable": unreadable}
        if self.has_labels:
            item["label"] = row["label"]
        return item


def read_readable(
    dataset: datasets.Dataset, index: int, max_skips: int = 1000
) -> tuple[Image.Image, dict, list[str]]:
    """The image at `index`, or if it is unreadable (warned about) the next readable one.

    Returns:
        `(rgb_image, row, names_of_the_unreadable_files_passed_over)`.
    """
    unreadable = []
    for skipped in range(min(len(dataset), max_skips)):
        position = (int(index) + skipped) % len(dataset)
        row = dataset[position]
        image, name = try_decode(row["image"], position)
        if image is not None:
            return image, row, unreadable
        unreadable.append(name)
    raise RuntimeError(
        f"{max_skips} consecutive unreadable images from index {index}: is this an image dataset?"
    )


class UInt8ImageDataset(Dataset):
    """Equal-sized uint8 images `{"pixel_values" (3, S, S) uint8, "index", "unreadable"}` for augmentation
    on the training device (`batched.BatchedTwoViewAugmentation`).

    Each image is resized (shorter side to `size`) and centre-cropped to `size x size`, a no-op for
    datasets whose images already have that size (CIFAR at 32). Unreadable files are replaced by the
    next readable one, as in `TwoViewDataset`.
    """

    def __init__(self, dataset: datasets.Dataset, size: int) -> None:
        self.dataset = dataset
        self.transform = v2.Compose([v2.Resize(size, antialias=True), v2.CenterCrop(size), v2.PILToTensor()])
        self.has_labels = "label" in dataset.column_names

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, row, unreadable = read_readable(self.dataset, index)
        item = {"pixel_values": self.transform(image), "index": index, "unreadable": unreadable}
        if self.has_labels:
            item["label"] = row["label"]
        return item


class ImageDataset(Dataset):
    """Map-style dataset of one deterministic (evaluation) view per image: `{"pixel_values", "label", "index"}`,
    plus the image's file `path` (or None) with `with_paths`.

    An unreadable image gives `{"unreadable": [name]}`, which `collate` drops from the batch (and counts).
    """

    def __init__(self, dataset: datasets.Dataset, transform: Callable, with_paths: bool = False) -> None:
        self.dataset = dataset
        self.transform = transform
        self.has_labels = "label" in dataset.column_names
        self.with_paths = with_paths

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.dataset[int(index)]
        image, name = try_decode(row["image"], index)
        if image is None:
            return {"unreadable": [name]}
        item = {"pixel_values": self.transform(image), "index": index}
        if self.has_labels:
            item["label"] = row["label"]
        if self.with_paths:
            value = row["image"]
            item["path"] = value.get("path") if isinstance(value, dict) else None
        return item


class StreamingTwoViewDataset(IterableDataset):
    """Two views per image from a streaming (`IterableDataset`) source, for data that does not fit on disk.

    Shard it across processes with `datasets.distributed.split_dataset_by_node` *instead of*
    `accelerator.prepare` on its DataLoader (doing both loses data). Augmentation seeds use the
    position of the sample in this process's stream. With a `OneViewTransform` items hold `pixel_values`.
    """

    def __init__(
        self, dataset: datasets.IterableDataset, transform: TwoViewTransform | OneViewTransform, seed: int = 0
    ) -> None:
        self.dataset = dataset
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.dataset.set_epoch(epoch)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        unreadable = []
        for index, row in enumerate(self.dataset):
            image, name = try_decode(row["image"], index)
            if image is None:
                unreadable.append(name)  # reported with the next readable sample
                continue
            views = self.transform(image, sample_seed(self.seed, self.epoch, index))
            item = {**view_item(views), "index": index, "unreadable": unreadable}
            unreadable = []
            if "label" in row:
                item["label"] = row["label"]
            yield item


def collate(items: list[dict[str, Any] | None]) -> dict[str, Any]:
    """Stack dataset items into a batch, dropping those without an image (unreadable in `ImageDataset`).

    The batch's `unreadable` lists the names of the unreadable files met while building it (a file met
    twice is listed twice) and `num_skipped` counts them.
    """
    unreadable = [name for item in items if item is not None for name in item.pop("unreadable", ())]
    kept = [item for item in items if item and any(key.endswith("pixel_values") for key in item)]
    batch: dict[str, Any] = {}
    if kept:
        for key in kept[0]:
            values = [item[key] for item in kept]
            if isinstance(values[0], torch.Tensor):
                batch[key] = torch.stack(values)
            elif isinstance(values[0], (int, float)):
                batch[key] = torch.tensor(values)
            else:  # names and paths stay a list
                batch[key] = values
    batch["unreadable"] = unreadable
    batch["num_skipped"] = torch.tensor(len(unreadable) + sum(item is None for item in items))
    return batch

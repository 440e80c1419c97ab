"""torch datasets over `datasets` tables: two augmented views per image (map-style and streamed), equal-sized
uint8 images for batched augmentation, one evaluation view per image, and the `collate` that drops and
names unreadable files; the same uint8 images decoded once into memory."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import datasets
import torch
from PIL import Image
from torch.utils.data import Dataset, IterableDataset
from torchvision.transforms import v2
from torchvision.transforms.v2.functional import pil_to_tensor

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
        self.size = size
        self.resize = v2.Compose([v2.Resize(size, antialias=True), v2.CenterCrop(size)])
        self.has_labels = "label" in dataset.column_names

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, row, unreadable = read_readable(self.dataset, index)
        if image.size != (self.size, self.size):  # (CIFAR at 32 skips the resize's cost: half the item's)
            image = self.resize(image)
        item = {"pixel_values": pil_to_tensor(image), "index": index, "unreadable": unreadable}
        if self.has_labels:
            item["label"] = row["label"]
        return item


class InMemoryUInt8Images(Dataset):
    """The items of a `UInt8ImageDataset`, decoded once and kept in memory as one uint8 tensor.

    Small equal-sized images (CIFAR: 3 KB each) decode in about as much time as the training step spends
    on them; decoded once, every later epoch reads them for free and leaves the cores to the step. Build
    it with `decode`; the unreadable files met then are named again in the items that replaced them.

    Args:
        pixel_values: (N, 3, S, S) uint8, in dataset order.
        labels: (N,) labels, or None.
        unreadable: index -> names of the unreadable files its image replaced.
        dataset: the rows they were decoded from, as `UInt8ImageDataset.dataset` (for what needs the
            images again, e.g. the teacher's embeddings of the un-augmented images in `recipes/distill.py`).
    """

    def __init__(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        unreadable: dict[int, list[str]] | None = None,
        dataset: datasets.Dataset | None = None,
    ) -> None:
        self.pixel_values, self.labels, self.unreadable = pixel_values, labels, unreadable or {}
        self.dataset = dataset

    @classmethod
    def decode(
        cls, images: UInt8ImageDataset, num_workers: int = 0, batch_size: int = 256, progress: bool = True
    ) -> InMemoryUInt8Images:
        """Decode every item of `images` (in `num_workers` processes) into memory, with a progress bar."""
        from torch.utils.data import DataLoader
        from tqdm.auto import tqdm

        n, size = len(images), images.size
        pixel_values = torch.empty((n, 3, size, size), dtype=torch.uint8)
        labels = torch.empty(n, dtype=torch.long) if images.has_labels else None
        unreadable: dict[int, list[str]] = {}
        # Its own generator: a loader draws its workers' seeds from one, and this pass must leave the global
        # random stream (the model's initialization after it) as it found it.
        loader = DataLoader(
            images,
            batch_size=batch_size,
            num_workers=num_workers,
            collate_fn=_stack_decoded,
            generator=torch.Generator(),
        )
        with tqdm(total=n, desc="decoding images into memory", unit="img", disable=not progress) as bar:
            for batch in loader:
                index = batch["index"]
                pixel_values[index] = batch["pixel_values"]
                if labels is not None:
                    labels[index] = batch["label"]
                for i, names in zip(index.tolist(), batch["unreadable"], strict=True):
                    if names:
                        unreadable[i] = names
                bar.update(len(index))
        return cls(pixel_values, labels, unreadable, dataset=images.dataset)

    def __len__(self) -> int:
        return len(self.pixel_values)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        item = {
            "pixel_values": self.pixel_values[index],
            "index": index,
            "unreadable": self.unreadable.get(index, []),
        }
        if self.labels is not None:
            item["label"] = int(self.labels[index])
        return item


def _stack_decoded(items: list[dict[str, Any]]) -> dict[str, Any]:
    """A batch of `UInt8ImageDataset` items, each item's unreadable names kept apart."""
    batch = {
        "pixel_values": torch.stack([item["pixel_values"] for item in items]),
        "index": torch.tensor([item["index"] for item in items]),
        "unreadable": [item["unreadable"] for item in items],
    }
    if "label" in items[0]:
        batch["label"] = torch.tensor([item["label"] for item in items])
    return batch


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

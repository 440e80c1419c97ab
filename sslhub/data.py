"""Image datasets and the views of self-supervised training.

- `load_image_dataset`: a Hub id, a local image folder, parquet files, a saved dataset or the embedded
  `sample`, optionally streamed, with its image and label columns found (or named) and renamed to
  `image` / `label`.
- `two_view_transform` / `crop_flip_transform` / `eval_transform`: the MoCo v1/v2/v3 augmentation presets,
  the single geometry-only view of colorization and the evaluation preprocessing, on torchvision
  transforms v2.
- `TwoViewDataset` / `ImageDataset` + `collate`: decode robustly (bad files are
  skipped with a warning that names them and counted), convert every mode to RGB, and draw augmentation
  randomness from seeds derived from (run seed, epoch, sample index), so that a resumed run sees exactly
  the views an uninterrupted run would have seen.
"""

from __future__ import annotations

import glob
import io
import logging
import os
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import torch
from PIL import Image, ImageFile, UnidentifiedImageError
from torch.utils.data import Dataset, IterableDataset
from torchvision.transforms import v2

from . import augment_presets as presets

logger = logging.getLogger(__name__)

SAMPLE_DIR = Path(__file__).parent / "sample"
IMAGE_COLUMN_NAMES = ("image", "img", "images", "picture", "pixel_values", "jpg", "png")
LABEL_COLUMN_NAMES = ("label", "labels", "fine_label", "class", "target", "cls")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
DATA_FILE_EXTENSIONS = (".parquet", *IMAGE_EXTENSIONS)


# ----------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------


def route_files_to_splits(files: list[str], base: str) -> dict[str, list[str]]:
    """Route local data files to splits by the naming rules of the Hugging Face Hub, as `datasets` applies
    them to a folder: `train` / `validation` (`valid`, `val`, `dev`) / `test` (`eval`, `testing`) in file
    or folder names, shard suffixes (`train-00000-of-00004.parquet`), `{split}/` folders; files that name
    no split are all `train`.

    Args:
        files: the files (e.g. what a glob matched).
        base: the folder their relative paths are matched from.
    """
    from datasets.data_files import _get_data_files_patterns, resolve_pattern  # the rules datasets uses

    wanted = {os.path.abspath(f) for f in files}

    def matching(pattern: str) -> list[str]:
        try:
            return [f for f in resolve_pattern(pattern, base) if os.path.abspath(f) in wanted]
        except FileNotFoundError:
            return []

    try:
        patterns = _get_data_files_patterns(matching)
    except FileNotFoundError:
        return {"train": sorted(files)}
    return {
        str(split): sorted({f for p in split_patterns for f in matching(p)})
        for split, split_patterns in patterns.items()
    }


def _glob_base(pattern: str) -> str:
    """The folder above the first wildcard of a glob."""
    parts = Path(pattern).parts
    fixed = next((i for i, part in enumerate(parts) if any(ch in part for ch in "*?[")), len(parts))
    return str(Path(*parts[:fixed])) if fixed else "."


def _builder_for(source: str) -> tuple[str, dict[str, Any]] | None:
    """Map a local source to how `datasets` loads it; `None` for Hub ids.

    Returns `(kind, arguments)`: `("parquet" | "imagefolder", {"data_files": {split: files}})` for the
    sample, a file (its train split) and globs (files routed by `route_files_to_splits`), `("disk", {"dataset_path"})` for a `save_to_disk` folder, and
    `("folder", {"path"})` for any other folder, which `datasets` itself reads (format and splits).
    """
    if source == "sample":
        return "parquet", {"data_files": {s: str(SAMPLE_DIR / f"{s}.parquet") for s in ("train", "test")}}
    path = Path(source)
    if any(ch in source for ch in "*?[") or (path.is_file() and path.suffix.lower() in DATA_FILE_EXTENSIONS):
        files = sorted(f for f in glob.glob(source, recursive=True) if Path(f).is_file())
        if not files:
            raise FileNotFoundError(f"no data file matches {source!r}")
        kinds = {"parquet" if Path(f).suffix.lower() == ".parquet" else "imagefolder" for f in files}
        if len(kinds) > 1 or any(Path(f).suffix.lower() not in DATA_FILE_EXTENSIONS for f in files):
            raise ValueError(f"{source!r} must match parquet files or image files only, got {files[:5]}")
        if path.is_file():  # one named file is the data: its train split, as in `datasets`
            return kinds.pop(), {"data_files": {"train": files}}
        return kinds.pop(), {"data_files": route_files_to_splits(files, _glob_base(source))}
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
            return "disk", {"dataset_path": str(path)}
        return "folder", {"path": str(path)}
    if path.exists():
        raise ValueError(
            f"{source!r} is a file but not a parquet or image file; expected a folder, parquet file(s), "
            "a glob or a Hub id"
        )
    return None


def available_splits(source: str) -> list[str] | None:
    """The split names of a local source, as `load_image_dataset` would find them (None for Hub ids)."""
    builder = _builder_for(source)
    if builder is None:
        return None
    kind, kwargs = builder
    if kind == "disk":
        loaded = datasets.load_from_disk(kwargs["dataset_path"])
        return list(loaded) if isinstance(loaded, datasets.DatasetDict) else None
    if kind == "folder":
        return [str(split) for split in datasets.load_dataset_builder(kwargs["path"]).config.data_files]
    return list(kwargs["data_files"])


def _hub_dataset_path(source: str) -> str:
    """A Hub dataset id, resolved from the local cache when the Hub is offline."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "false", "False", ""):
        from huggingface_hub import snapshot_download

        return snapshot_download(source, repo_type="dataset", local_files_only=True)
    return source


def _find_column(
    features: datasets.Features, wanted: str | None, kind: str, names: tuple[str, ...], feature_type: type
) -> str | None:
    columns = list(features)
    if wanted is not None:
        if wanted not in columns:
            raise ValueError(f"{kind}_column={wanted!r} is not a column of the dataset; columns: {columns}")
        return wanted
    typed = [c for c in columns if isinstance(features[c], feature_type)]
    if typed:
        return typed[0]
    named = [c for c in columns if c.lower() in names]
    return named[0] if named else None


def load_image_dataset(
    source: str,
    split: str = "train",
    *,
    image_column: str | None = None,
    label_column: str | None = None,
    streaming: bool = False,
    decode: bool = False,
) -> datasets.Dataset | datasets.IterableDataset:
    """Load an image dataset with `datasets`, with columns renamed to `image` (and `label` if present).

    Args:
        source: a Hub id (`"uoft-cs/cifar10"`, `"frgfm/imagenette"`), a local image folder (class
            subfolders become labels), a folder of parquet files, a folder saved with `save_to_disk`, a
            parquet or image file or glob (`"data/*.parquet"`), or `"sample"` for the small CIFAR-10 sample
            shipped with sslhub. Files of folders and globs go to splits by the Hub's naming rules
            (`route_files_to_splits`): only the requested split is read.
        split: split name, with `datasets` slicing (`"train[:90%]"`) for non-streaming datasets.
        image_column: the image column; found from its `Image` type or a usual name when `None`.
        label_column: the label column; found from its `ClassLabel` type or a usual name when `None`.
        streaming: stream the data instead of downloading/preparing it all (for datasets that do not
            fit on disk); returns an `IterableDataset`.
        decode: keep `datasets`' own image decoding. The default hands raw bytes to `TwoViewDataset` /
            `ImageDataset`, which skip undecodable files instead of crashing.

    Returns:
        A `Dataset` or `IterableDataset` with an `image` column and, when labels exist, a `label` column.
    """
    builder = _builder_for(source)
    splits = available_splits(source) if builder is not None else None
    if splits is not None and split.split("[")[0] not in splits:
        raise ValueError(f"split={split!r} not found in {source!r}; available: {sorted(splits)}")
    if builder is None:
        dataset = datasets.load_dataset(_hub_dataset_path(source), split=split, streaming=streaming)
    elif builder[0] == "disk":
        loaded = datasets.load_from_disk(builder[1]["dataset_path"])
        dataset = loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
    elif builder[0] == "folder":  # datasets reads the folder itself: its format and its split files
        dataset = datasets.load_dataset(builder[1]["path"], split=split, streaming=streaming)
    else:
        name, kwargs = builder
        dataset = datasets.load_dataset(name, split=split, streaming=streaming, **kwargs)

    features = dataset.features
    if features is None:  # some streaming datasets only know their features after the first example
        dataset = dataset._resolve_features()
        features = dataset.features
    image = _find_column(features, image_column, "image", IMAGE_COLUMN_NAMES, datasets.Image)
    if image is None:
        raise ValueError(
            f"no image column found in {source!r} (columns: {list(features)}); pass image_column="
        )
    label = _find_column(features, label_column, "label", LABEL_COLUMN_NAMES, datasets.ClassLabel)
    renames = {
        old: new for old, new in ((image, "image"), (label, "label")) if old is not None and old != new
    }
    dropped = [c for c in features if c in ("image", "label") and c not in (image, label)]
    if dropped:
        dataset = dataset.remove_columns(dropped)
    if renames:
        dataset = dataset.rename_columns(renames)
    if not decode and isinstance(dataset.features["image"], datasets.Image):
        dataset = dataset.cast_column("image", datasets.Image(decode=False))
    return dataset


def dataset_card_name(source: str) -> str:
    """How a dataset source is named in a model card: its Hub id, `cifar10-sslhub-sample` for the shipped
    sample, else the name of the local folder or file (local paths mean nothing to other people)."""
    if source == "sample":
        return "cifar10-sslhub-sample"
    if _builder_for(source) is None:
        return source
    return Path(source.split("*")[0].rstrip("/")).name or source


def class_names(dataset: datasets.Dataset | datasets.IterableDataset) -> list[str] | None:
    """The label names of a dataset loaded by `load_image_dataset`, if its labels are a `ClassLabel`."""
    feature = (dataset.features or {}).get("label")
    return list(feature.names) if isinstance(feature, datasets.ClassLabel) else None


# ----------------------------------------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------------------------------------


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB: grey, palette, CMYK, 16-bit; transparency is composited on white."""
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        image = image.point(lambda v: v / 256).convert("L")
    return image.convert("RGB")


def _describe(value: Any, index: int) -> str:
    """How a sample is named in warnings: its file and position, or its position alone."""
    if isinstance(value, dict) and value.get("path"):
        return f"{value['path']} (sample {index})"
    if isinstance(value, (str, os.PathLike)):
        return f"{value} (sample {index})"
    return f"sample {index}"


_warned: set[str] = set()  # unreadable files this process already warned about


def decode_image(value: Any) -> Image.Image:
    """Decode a dataset value (PIL image, `{"bytes", "path"}` dict, bytes or path) into an RGB image.

    Raises:
        OSError / UnidentifiedImageError / ValueError for truncated or non-image data.
    """
    if isinstance(value, Image.Image):
        image = value
    elif isinstance(value, dict):
        data = value.get("bytes")
        image = Image.open(io.BytesIO(data)) if data is not None else Image.open(value["path"])
    elif isinstance(value, (bytes, bytearray)):
        image = Image.open(io.BytesIO(value))
    elif isinstance(value, (str, os.PathLike)):
        image = Image.open(value)
    else:
        raise ValueError(f"cannot decode an image from a {type(value).__name__}")
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, not a grey half-image
    try:
        image.load()
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous
    return to_rgb(image)


def try_decode(value: Any, index: int) -> tuple[Image.Image | None, str | None]:
    """`(rgb_image, None)`, or `(None, name)` for an unreadable file (empty, truncated, not an image),
    named in a warning the first time this process meets it."""
    try:
        return decode_image(value), None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as error:
        name = _describe(value, index)
        if name not in _warned:
            _warned.add(name)
            logger.warning("skipping unreadable image %s: %s", name, error or type(error).__name__)
        return None, name


# ----------------------------------------------------------------------------------------------------------
# Views
# ----------------------------------------------------------------------------------------------------------


def _torchvision(operation: presets.Operation, image_size: int) -> v2.Transform:
    """The torchvision transform of one operation of the preset table, on PIL images."""
    if isinstance(operation, presets.ResizedCrop):
        return v2.RandomResizedCrop(image_size, scale=operation.scale, ratio=operation.ratio, antialias=True)
    if isinstance(operation, presets.ColorJitter):
        jitter = v2.ColorJitter(operation.brightness, operation.contrast, operation.saturation, operation.hue)
        return jitter if operation.p == 1 else v2.RandomApply([jitter], p=operation.p)
    if isinstance(operation, presets.Grayscale):
        return v2.RandomGrayscale(p=operation.p)
    if isinstance(operation, presets.GaussianBlur):
        blur = v2.GaussianBlur(operation.kernel_size(image_size), sigma=operation.sigma)
        return blur if operation.p == 1 else v2.RandomApply([blur], p=operation.p)
    if isinstance(operation, presets.Solarize):
        return v2.RandomSolarize(threshold=operation.threshold, p=operation.p)
    if isinstance(operation, presets.HorizontalFlip):
        return v2.RandomHorizontalFlip(p=operation.p)
    raise TypeError(f"no torchvision transform for {operation!r}")


def _to_normalized_tensor(mean, std) -> list[v2.Transform]:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]


def _view(view: presets.View, image_size: int, mean, std) -> v2.Compose:
    """The operations of a resolved view (`augment_presets.resolve_view`) on a PIL image, then normalize."""
    transforms = [_torchvision(operation, image_size) for operation in view]
    return v2.Compose([*transforms, *_to_normalized_tensor(mean, std)])


@dataclass
class TwoViewTransform:
    """Two augmented views of one image, the query view and the key view.

    Randomness comes from the `seed` passed at call time, so the views are a pure function of
    (image, seed); the global RNG is left untouched.
    """

    query_view: Callable
    key_view: Callable

    def __call__(self, image: Image.Image, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.query_view(image), self.key_view(image)


def two_view_transform(
    preset: str = "v2",
    image_size: int = 224,
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    min_scale: float | None = None,
) -> TwoViewTransform:
    """The query and key views of a MoCo preset (`augment_presets.PRESETS`: v1, v2, v3) on PIL images.

    Blur is left out below 64x64 pixels; `min_scale` overrides the crop's lower scale bound
    (`augment_presets.resolve_view`). `augment.BatchedTwoViewAugmentation` applies the same operations
    to batches of tensors.
    """
    query, key = presets.preset_views(preset, image_size, min_scale)
    query_view = _view(query, image_size, mean, std)
    return TwoViewTransform(query_view, query_view if key == query else _view(key, image_size, mean, std))


@dataclass
class OneViewTransform:
    """One augmented view of an image, seeded like `TwoViewTransform` (a pure function of (image, seed))."""

    view: Callable

    def __call__(self, image: Image.Image, seed: int) -> torch.Tensor:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.view(image)


def crop_flip_transform(
    image_size: int = 224,
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    min_scale: float | None = None,
) -> OneViewTransform:
    """One view with geometric augmentation only (`augment_presets.CROP_FLIP`): RandomResizedCrop(scale
    `min_scale`-1, default 0.2), flip.

    For pretext tasks whose target is the image's colour (colorization): colour jitter or grayscale
    would corrupt the target.
    """
    return OneViewTransform(
        _view(presets.resolve_view(presets.CROP_FLIP, image_size, min_scale), image_size, mean, std)
    )


def eval_transform(
    image_size: int = 224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), crop_pct: float = 0.875
) -> v2.Compose:
    """Evaluation preprocessing: resize the shorter side to `image_size / crop_pct`, centre-crop, normalize.

    The same steps as the image processor saved with every sslhub model (`image_processor_for`).
    """
    resize = int(image_size / crop_pct)
    return v2.Compose(
        [
            v2.Resize(resize, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
            v2.CenterCrop(image_size),
            *_to_normalized_tensor(mean, std),
        ]
    )


def _view_item(views: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Name a transform's output: one view is `pixel_values`, two are the query and key views."""
    if isinstance(views, torch.Tensor):
        return {"pixel_values": views}
    query, key = views
    return {"query_pixel_values": query, "key_pixel_values": key}


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one sample's augmentation, derived from the run seed, the epoch and its index."""
    return zlib.crc32(f"{seed}/{epoch}/{index}".encode()) * 2654435761 % (2**63 - 1)


# ----------------------------------------------------------------------------------------------------------
# torch datasets
# ----------------------------------------------------------------------------------------------------------


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
        item = {**_view_item(views), "index": index, "unreadable": unreadable}
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
    on the training device (`augment.BatchedTwoViewAugmentation`).

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
    """Map-style dataset of one deterministic (evaluation) view per image: `{"pixel_values", "label", "index"}`.

    An unreadable image gives `{"unreadable": [name]}`, which `collate` drops from the batch (and counts).
    """

    def __init__(self, dataset: datasets.Dataset, transform: Callable) -> None:
        self.dataset = dataset
        self.transform = transform
        self.has_labels = "label" in dataset.column_names

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
            item = {**_view_item(views), "index": index, "unreadable": unreadable}
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
            batch[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else torch.tensor(values)
    batch["unreadable"] = unreadable
    batch["num_skipped"] = torch.tensor(len(unreadable) + sum(item is None for item in items))
    return batch

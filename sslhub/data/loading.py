"""Loading image datasets with `datasets`: Hub ids, local folders, parquet files and globs, `save_to_disk`
folders and the sample shipped with sslhub; files go to splits by the Hub's naming rules, and the image and
label columns are found (or named) and renamed to `image` / `label`."""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any

import datasets

SAMPLE_DIR = Path(__file__).resolve().parents[1] / "sample"
IMAGE_COLUMN_NAMES = ("image", "img", "images", "picture", "pixel_values", "jpg", "png")
LABEL_COLUMN_NAMES = ("label", "labels", "fine_label", "class", "target", "cls")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
DATA_FILE_EXTENSIONS = (".parquet", *IMAGE_EXTENSIONS)


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


def is_hub_id(name: str) -> bool:
    """Whether `name` has the form of a Hub repo id (`name` or `namespace/name`)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def check_path_or_hub_id(name: str) -> None:
    """Refuse a name that is neither an existing file or folder nor a Hub id (a local path with a typo),
    before the Hub client answers with a message about repo id syntax."""
    if not Path(name).exists() and not is_hub_id(name):
        raise FileNotFoundError(
            f"{name!r}: no such file or folder (nor a Hub id: 'name' or 'namespace/name')"
        )


def check_data_source(source: str, setting: str = "dataset") -> None:
    """Refuse, with a ValueError naming `setting`, a data source that cannot be found: a local path or glob
    that matches nothing, a file of another kind, a name that is no Hub id. Reads no data."""
    try:
        _builder_for(source)
    except (OSError, ValueError) as error:
        raise ValueError(f"{setting}: {error}") from None


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
    check_path_or_hub_id(source)
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

"""Dataset loading from every source, robust decoding, and the seeded views (the presets themselves:
`test_augment.py`)."""

import io
import logging
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from sslhub.data import (
    ImageDataset,
    TwoViewDataset,
    class_names,
    collate,
    decode_image,
    eval_transform,
    load_image_dataset,
    two_view_transform,
)

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _png(color, size=(16, 12), mode="RGB") -> Image.Image:
    return Image.new(mode, size, color)


def _jpeg_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.fixture
def image_folder(tmp_path):
    root = tmp_path / "folder"
    for label, color in (("cat", (200, 10, 10)), ("dog", (10, 200, 10))):
        (root / label).mkdir(parents=True)
        for i in range(3):
            _png(color).save(root / label / f"{i}.png")
    return root


def test_sample_dataset_ships_with_labels():
    train, test = load_image_dataset("sample", "train"), load_image_dataset("sample", "test")
    assert len(train) == 5000 and len(test) == 1000
    assert class_names(train)[:3] == ["airplane", "automobile", "bird"]
    assert np.bincount(train["label"]).tolist() == [500] * 10  # stratified
    assert decode_image(train[0]["image"]).size == (32, 32)


def test_image_folder_infers_labels(image_folder):
    dataset = load_image_dataset(str(image_folder))
    assert len(dataset) == 6 and class_names(dataset) == ["cat", "dog"]


def test_parquet_file_and_glob_with_custom_column_names(tmp_path):
    rows = {
        "img": [{"bytes": _jpeg_bytes(_png((i * 40, 0, 0))), "path": None} for i in range(4)],
        "fine_label": [0, 1, 0, 1],
    }
    features = datasets.Features({"img": datasets.Image(), "fine_label": datasets.Value("int64")})
    for part in range(2):
        datasets.Dataset.from_dict(rows, features=features).to_parquet(str(tmp_path / f"part-{part}.parquet"))
    single = load_image_dataset(str(tmp_path / "part-0.parquet"))
    assert single.column_names == ["image", "label"] and len(single) == 4
    both = load_image_dataset(str(tmp_path / "part-*.parquet"))
    assert len(both) == 8
    named = load_image_dataset(
        str(tmp_path / "part-0.parquet"), image_column="img", label_column="fine_label"
    )
    assert named["label"] == [0, 1, 0, 1]


def test_saved_dataset_folder_and_split_slicing(tmp_path):
    features = datasets.Features(
        {"picture": datasets.Image(), "target": datasets.ClassLabel(names=["a", "b"])}
    )
    data = {"picture": [_png((i, i, i)) for i in range(10)], "target": [i % 2 for i in range(10)]}
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(data, features=features)}).save_to_disk(
        tmp_path / "d"
    )
    dataset = load_image_dataset(str(tmp_path / "d"))
    assert dataset.column_names == ["image", "label"] and class_names(dataset) == ["a", "b"]
    sliced = load_image_dataset("sample", "test[:10%]")
    assert len(sliced) == 100


def test_clear_errors_for_missing_columns_splits_and_files(tmp_path):
    with pytest.raises(ValueError, match="image_column='photo' is not a column"):
        load_image_dataset("sample", image_column="photo")
    with pytest.raises(ValueError, match="split='validation' not found"):
        load_image_dataset("sample", "validation")
    with pytest.raises(FileNotFoundError, match="no data file matches"):
        load_image_dataset(str(tmp_path / "nothing-*.parquet"))
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="not a parquet or image file"):
        load_image_dataset(str(tmp_path / "notes.txt"))


def _write_split(path: Path, label: int, rows: int) -> None:
    """A parquet file of `rows` sample images that all have `label`: where they came from stays visible."""
    sample = load_image_dataset("sample", "test", decode=True)
    subset = sample.filter(lambda row: row["label"] == label).select(range(rows))
    path.parent.mkdir(parents=True, exist_ok=True)
    subset.to_parquet(str(path))


HUB_LAYOUTS = {
    "split names in files": {
        "train-00000-of-00001.parquet": 0,
        "valid-00000-of-00001.parquet": 1,
        "dev-00000-of-00001.parquet": 2,
        "test-00000-of-00001.parquet": 3,
    },
    "shards and data/ folder": {
        "data/train-00000-of-00002.parquet": 0,
        "data/train-00001-of-00002.parquet": 0,
        "data/validation-00000-of-00001.parquet": 1,
        "data/test-00000-of-00001.parquet": 3,
    },
    "config/split folders": {
        "default/train/part-0.parquet": 0,
        "default/val/part-0.parquet": 1,
        "default/test/part-0.parquet": 3,
    },
}


@pytest.mark.parametrize("layout", HUB_LAYOUTS, ids=list(HUB_LAYOUTS))
@pytest.mark.parametrize("how", ["folder", "glob"])
def test_files_go_to_splits_by_the_hubs_naming_rules(tmp_path, layout, how):
    for name, label in HUB_LAYOUTS[layout].items():
        _write_split(tmp_path / name, label, rows=8)
    source = str(tmp_path) if how == "folder" else str(tmp_path / "**" / "*.parquet")
    train = load_image_dataset(source, "train")
    validation = load_image_dataset(source, "validation")
    train_files = [n for n, label in HUB_LAYOUTS[layout].items() if label == 0]
    assert set(train["label"]) == {0} and len(train) == 8 * len(train_files)  # validation never trains
    assert set(validation["label"]) <= {1, 2} and len(validation) == 8 * (
        len(HUB_LAYOUTS[layout]) - len(train_files) - 1
    )
    assert set(load_image_dataset(source, "test")["label"]) == {3}
    with pytest.raises(
        ValueError, match=r"split='training' not found .* available: \['test', 'train', 'validation'\]"
    ):
        load_image_dataset(source, "training")


def test_image_folders_with_split_folders_keep_class_labels(tmp_path):
    for split, count in (("train", 3), ("val", 2)):
        for label, colour in (("cat", (200, 0, 0)), ("dog", (0, 200, 0))):
            folder = tmp_path / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (8, 8), colour).save(folder / f"{i}.png")
    train, validation = load_image_dataset(str(tmp_path)), load_image_dataset(str(tmp_path), "validation")
    assert len(train) == 6 and len(validation) == 4
    assert class_names(train) == ["cat", "dog"] and sorted(validation["label"]) == [0, 0, 1, 1]


def test_streaming_dataset_yields_renamed_columns():
    stream = load_image_dataset("sample", "test", streaming=True)
    first = next(iter(stream))
    assert set(first) == {"image", "label"}


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "LA"])
def test_every_mode_becomes_rgb(mode):
    image = Image.new("RGB", (8, 8), (30, 120, 200)).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format="TIFF" if mode == "CMYK" else "PNG")
    decoded = decode_image({"bytes": buffer.getvalue(), "path": None})
    assert decoded.mode == "RGB" and decoded.size == (8, 8)


@pytest.mark.parametrize("file_format", ["PNG", "TIFF"])
def test_16_bit_grey_keeps_its_high_byte(file_format):
    # A 16-bit scan or medical image (mode I;16, as Pillow reads it from a 16-bit PNG or TIFF): 40000 of 65535
    # is grey 156 of 255, not clipped to white.
    image = Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16))
    buffer = io.BytesIO()
    image.save(buffer, format=file_format)
    decoded = decode_image({"bytes": buffer.getvalue(), "path": None})
    assert decoded.mode == "RGB" and decoded.getpixel((0, 0)) == (156, 156, 156)


@pytest.mark.parametrize("value, grey", [(40000, 156), (200, 200)])
def test_32_bit_grey_is_read_as_16_or_8_bit_by_its_range(value, grey):
    # Mode I holds 16-bit values (older Pillow reading a 16-bit PNG) or 8-bit ones (some TIFF writers):
    # the latter must not come out nearly black (200 / 256).
    image = Image.fromarray(np.full((8, 8), value, dtype=np.int32)).convert("I")
    assert image.mode == "I" and decode_image(image).getpixel((0, 0)) == (grey, grey, grey)


def test_transparent_pixels_become_white():
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert decode_image(image).getpixel((0, 0)) == (255, 255, 255)


def _dataset_with_bad_files():
    good = _jpeg_bytes(_png((50, 100, 150), size=(40, 40)))
    images = [
        {"bytes": good, "path": "good0.jpg"},
        {"bytes": good[: len(good) // 2], "path": "truncated.jpg"},
        {"bytes": b"this is not an image", "path": "notes.txt"},
        {"bytes": good, "path": "good1.jpg"},
    ]
    features = datasets.Features({"image": datasets.Image(decode=False), "label": datasets.Value("int64")})
    return datasets.Dataset.from_dict({"image": images, "label": [0, 1, 2, 3]}, features=features)


def test_bad_files_are_skipped_named_and_counted_in_pretraining(caplog):
    views = TwoViewDataset(_dataset_with_bad_files(), two_view_transform("v2", 32, MEAN, STD), seed=0)
    with caplog.at_level(logging.WARNING, logger="sslhub.data"):
        batch = collate([views[i] for i in range(4)])
    assert batch["query_pixel_values"].shape == (4, 3, 32, 32)  # batches keep their size
    assert batch["num_skipped"].item() == 3  # index 1 passes over 2 bad files, index 2 over 1
    assert "truncated.jpg" in caplog.text and "notes.txt" in caplog.text


def test_bad_files_are_dropped_in_evaluation(caplog):
    images = ImageDataset(_dataset_with_bad_files(), eval_transform(32, MEAN, STD, crop_pct=1.0))
    with caplog.at_level(logging.WARNING, logger="sslhub.data"):
        batch = collate([images[i] for i in range(4)])
    assert batch["pixel_values"].shape == (2, 3, 32, 32)
    assert batch["label"].tolist() == [0, 3] and batch["num_skipped"].item() == 2


def test_images_smaller_than_the_crop():
    tiny = _png((1, 2, 3), size=(5, 3))
    query, key = two_view_transform("v2", 32, MEAN, STD)(tiny, seed=1)
    assert query.shape == key.shape == (3, 32, 32)
    assert eval_transform(32, MEAN, STD)(tiny).shape == (3, 32, 32)


def test_views_are_a_function_of_seed_epoch_and_index():
    dataset = load_image_dataset("sample", "test[:8]")
    views = TwoViewDataset(dataset, two_view_transform("v2", 32, MEAN, STD), seed=3)
    first = views[5]
    torch.manual_seed(123)  # the global RNG does not matter
    again = views[5]
    assert torch.equal(first["query_pixel_values"], again["query_pixel_values"])
    assert not torch.equal(first["query_pixel_values"], first["key_pixel_values"])
    views.set_epoch(1)
    assert not torch.equal(first["query_pixel_values"], views[5]["query_pixel_values"])


def test_hub_dataset_id_resolves_from_the_offline_cache(tmp_path):
    import subprocess
    import sys

    from .helpers import fill_hub_cache

    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    sample = load_image_dataset("sample", "test[:20]", decode=True)
    sample.rename_column("image", "img").to_parquet(str(repo / "data" / "train-00000-of-00001.parquet"))
    fill_hub_cache(tmp_path / "cache", "acme/tiny-cifar", repo, repo_type="dataset")
    code = (
        "from sslhub.data import load_image_dataset, class_names\n"
        "d = load_image_dataset('acme/tiny-cifar', 'train')\n"
        "print(len(d), d.column_names, class_names(d)[0])\n"
    )
    env = {
        **__import__("os").environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(tmp_path / "cache"),
        "HF_DATASETS_CACHE": str(tmp_path / "datasets"),
    }
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split("\n")[0] == "20 ['image', 'label'] airplane"


def _odd_sized_dataset_with_bad_files():
    """Images of several sizes and modes (one already 16x16), a truncated file and a text file."""
    sizes = [(16, 16), (40, 24), (9, 30), (16, 16), (64, 64)]
    images = [
        {"bytes": _jpeg_bytes(_png((40 * i, 90, 200 - 30 * i), size=size)), "path": f"good{i}.jpg"}
        for i, size in enumerate(sizes)
    ]
    images.insert(2, {"bytes": images[0]["bytes"][:40], "path": "truncated.jpg"})
    images.insert(4, {"bytes": b"not an image", "path": "notes.txt"})
    features = datasets.Features({"image": datasets.Image(decode=False), "label": datasets.Value("int64")})
    return datasets.Dataset.from_dict({"image": images, "label": list(range(len(images)))}, features=features)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_images_decoded_into_memory_are_the_images_read_each_epoch(num_workers):
    from sslhub.data import InMemoryUInt8Images, UInt8ImageDataset

    read = UInt8ImageDataset(_odd_sized_dataset_with_bad_files(), 16)
    rng_before = torch.get_rng_state()
    in_memory = InMemoryUInt8Images.decode(read, num_workers=num_workers, batch_size=3, progress=False)
    # The pass leaves the global random stream alone: the model initialized after it is the same.
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert len(in_memory) == len(read) == 7
    for index in range(len(read)):
        expected, cached = read[index], in_memory[index]
        assert cached["pixel_values"].dtype == torch.uint8 and cached["pixel_values"].shape == (3, 16, 16)
        assert torch.equal(cached["pixel_values"], expected["pixel_values"])
        # An unreadable file is replaced by the next readable image, and still named in every epoch.
        assert (cached["label"], cached["unreadable"]) == (expected["label"], expected["unreadable"])
    assert in_memory[2]["unreadable"] == ["truncated.jpg (sample 2)"] and in_memory[2]["label"] == 3
    batch = collate([in_memory[i] for i in (4, 2, 0)])
    assert batch["pixel_values"].shape == (3, 3, 16, 16) and batch["num_skipped"].item() == 2


def test_images_go_into_memory_only_where_they_fit(monkeypatch):
    from types import SimpleNamespace

    from sslhub.data import UInt8ImageDataset
    from sslhub.training import loader

    images = UInt8ImageDataset(_odd_sized_dataset_with_bad_files(), 16)  # 7 x 3 x 16 x 16 = 5,376 bytes
    accelerator = SimpleNamespace(num_processes=1)
    unset, on, off = (SimpleNamespace(cache_images=value) for value in (None, True, False))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(loader, "available_memory_bytes", lambda: 4 * 5376)
    assert loader.cache_images(unset, images, accelerator)  # a quarter of the available memory: fits
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two processes on this machine: a copy each
    assert not loader.cache_images(unset, images, accelerator)
    assert loader.cache_images(on, images, accelerator)  # the user's word wins either way
    monkeypatch.setattr(loader, "available_memory_bytes", lambda: None)  # unknown: do not risk it
    assert not loader.cache_images(unset, images, accelerator)
    monkeypatch.setattr(loader, "available_memory_bytes", lambda: 10**12)
    assert not loader.cache_images(off, images, accelerator)
    monkeypatch.setattr(loader, "available_memory_bytes", lambda: 5376)  # asked for, but cannot fit: say so
    with pytest.raises(SystemExit, match="need 0.0 GiB, more than the 0.0 GiB available"):
        loader.cache_images(on, images, accelerator)


def test_available_memory_is_read_from_the_machine():
    from sslhub.training.loader import available_memory_bytes

    available = available_memory_bytes()
    if Path("/proc/meminfo").exists():  # Linux: MemAvailable, in bytes
        assert 2**24 < available < 2**50
    else:
        assert available is None or available > 2**24

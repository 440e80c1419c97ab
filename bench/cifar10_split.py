"""The held-out split every CIFAR-10 benchmark here uses (the shared data has only the training split).

A fixed seeded permutation of the 50,000 training images: its first `heldout` images are the held-out
(evaluation) set, the rest the training set. Files keep the Hugging Face features (Image, ClassLabel),
so `load_image_dataset(folder, "train" | "test")` reads them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

# The shared CIFAR-10 training split beside the checkout; `SSLHUB_CIFAR10` names another copy (the GPU kit's).
CIFAR10 = Path(
    os.environ.get("SSLHUB_CIFAR10")
    or Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10" / "train.parquet"
)


def split_cifar10(
    folder: str | os.PathLike,
    heldout: int = 10_000,
    train_images: int | None = None,
    eval_images: int | None = None,
    seed: int = 0,
    source: str | os.PathLike = CIFAR10,
) -> Path:
    """Write `folder/train.parquet` and `folder/test.parquet` (once; reused when they exist).

    Args:
        heldout: size of the held-out part of the permutation.
        train_images: keep only the first N training images (None: all 50,000 - heldout).
        eval_images: keep only the first N held-out images (None: all of them).
    """
    folder = Path(folder)
    if (folder / "train.parquet").exists() and (folder / "test.parquet").exists():
        return folder
    table = pq.read_table(source)
    order = np.random.default_rng(seed).permutation(table.num_rows)
    test, train = order[:heldout][:eval_images], order[heldout:][:train_images]
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (("test", test), ("train", train)):
        pq.write_table(table.take(rows), folder / f"{name}.parquet.tmp")
        os.replace(folder / f"{name}.parquet.tmp", folder / f"{name}.parquet")
    print(f"CIFAR-10 split: {len(train)} training / {len(test)} held-out images in {folder}")
    return folder

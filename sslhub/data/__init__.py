"""The data side of sslhub: loading image datasets, decoding images, and the views of training.

- `loading`: `load_image_dataset` (Hub ids, folders, parquet files and globs, `save_to_disk`, the sample),
  split routing by the Hub's naming rules, column discovery.
- `decoding`: every image mode to RGB; unreadable files named, never fatal.
- `presets`: the augmentation presets of the papers, one table for both implementations below.
- `views`: the per-image torchvision views (two MoCo views, colorization's crop + flip, evaluation).
- `batched`: the same presets applied to whole uint8 batches on the training device.
- `image_datasets`: the torch datasets and `collate` the loaders use.
"""

from .batched import BatchedTwoViewAugmentation
from .decoding import decode_image, to_rgb, try_decode
from .image_datasets import (
    ImageDataset,
    InMemoryUInt8Images,
    StreamingTwoViewDataset,
    TwoViewDataset,
    UInt8ImageDataset,
    collate,
    read_readable,
)
from .loading import (
    DATA_FILE_EXTENSIONS,
    IMAGE_EXTENSIONS,
    SAMPLE_DIR,
    available_splits,
    class_names,
    dataset_card_name,
    load_image_dataset,
    route_files_to_splits,
)
from .presets import PRESETS, describe_preset
from .views import (
    OneViewTransform,
    TwoViewTransform,
    crop_flip_transform,
    eval_transform,
    finetune_transform,
    sample_seed,
    two_view_transform,
)

__all__ = [
    "describe_preset",
    "DATA_FILE_EXTENSIONS",
    "IMAGE_EXTENSIONS",
    "PRESETS",
    "SAMPLE_DIR",
    "BatchedTwoViewAugmentation",
    "ImageDataset",
    "InMemoryUInt8Images",
    "OneViewTransform",
    "StreamingTwoViewDataset",
    "TwoViewDataset",
    "TwoViewTransform",
    "UInt8ImageDataset",
    "available_splits",
    "class_names",
    "collate",
    "crop_flip_transform",
    "dataset_card_name",
    "decode_image",
    "eval_transform",
    "finetune_transform",
    "load_image_dataset",
    "read_readable",
    "route_files_to_splits",
    "sample_seed",
    "to_rgb",
    "try_decode",
    "two_view_transform",
]

"""The kNN monitor: how well the encoder being trained separates a labelled held-out split."""

from __future__ import annotations

import sys

from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader

from ..data import ImageDataset, collate, eval_transform, load_image_dataset
from ..evaluation import extract_features, knn_accuracy


class KNNMonitor:
    """Weighted kNN accuracy of the current encoder on a labelled held-out split (InstDisc protocol).

    The bank is (up to `knn_bank_size` images of) the labelled training split, the queries the held-out
    split, both preprocessed as the model's image processor does (`image_size`, `crop_pct`, mean, std of
    its config). Runs on every process (features are gathered); returns top-1 in [0, 1].

    Args:
        args: the recipe settings (`dataset`, `split`, `knn_*`, `num_workers`, `seed`).
        accelerator: the run's Accelerator.
        config: the model config whose preprocessing the monitor uses.
    """

    def __init__(self, args, accelerator: Accelerator, config) -> None:
        transform = eval_transform(config.image_size, config.image_mean, config.image_std, config.crop_pct)
        columns = dict(image_column=args.image_column, label_column=args.label_column)
        with accelerator.main_process_first():
            bank = load_image_dataset(args.dataset, args.split, **columns)
            queries = load_image_dataset(
                args.knn_eval_dataset or args.dataset, args.knn_eval_split, **columns
            )
        if "label" not in bank.column_names or "label" not in queries.column_names:
            raise ValueError("the kNN monitor needs labels in both the training and the evaluation split")
        if len(bank) > args.knn_bank_size:
            bank = bank.shuffle(seed=args.seed).select(range(args.knn_bank_size))
        for name, split in (("bank (training split)", bank), ("evaluation split", queries)):
            classes = len(set(split["label"]))
            if classes < 2:  # e.g. the first rows of a class-sorted split: every prediction is right
                accelerator.print(
                    f"warning: the kNN monitor's {name} holds {classes} class(es) in {len(split)} images: its "
                    "accuracy means nothing; take a slice with several classes (the shipped sample is sorted "
                    "by class) or turn the monitor off (--knn_steps 0)",
                    file=sys.stderr,
                )
        self.loaders = [
            accelerator.prepare(
                DataLoader(
                    ImageDataset(split, transform),
                    batch_size=256,
                    collate_fn=collate,
                    num_workers=args.num_workers,
                )
            )
            for split in (bank, queries)
        ]
        self.accelerator = accelerator
        self.k, self.temperature = args.knn_k, args.knn_temperature

    def __call__(self, encoder: nn.Module) -> float:
        """Top-1 accuracy of `encoder` (in eval mode for the measurement; its mode is restored)."""
        bank_features, bank_labels = extract_features(
            encoder, self.loaders[0], self.accelerator, description="kNN bank"
        )
        query_features, query_labels = extract_features(
            encoder, self.loaders[1], self.accelerator, description="kNN queries"
        )
        return knn_accuracy(
            bank_features, bank_labels, query_features, query_labels, self.k, self.temperature
        )

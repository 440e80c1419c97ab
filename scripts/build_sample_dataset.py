"""Build the small CIFAR-10 sample shipped in `sslhub/sample/` (run once; the result is committed).

Stratified: the first `--train-per-class` images of each class (in a seeded shuffle of the CIFAR-10
training split) form `train.parquet`, the next `--test-per-class` form `test.parquet`.

    python scripts/build_sample_dataset.py --source ../shared/datasets/cifar10/train.parquet
"""

from __future__ import annotations

import argparse
from pathlib import Path

import datasets
import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", default="../shared/datasets/cifar10/train.parquet")
    parser.add_argument("--output", default=str(Path(__file__).parents[1] / "sslhub" / "sample"))
    parser.add_argument("--train-per-class", type=int, default=500)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    full = datasets.load_dataset("parquet", data_files=args.source, split="train")
    labels = np.asarray(full["label"])
    order = np.random.default_rng(args.seed).permutation(len(full))
    train, test = [], []
    for cls in range(int(labels.max()) + 1):
        members = order[labels[order] == cls]
        train.extend(members[: args.train_per_class].tolist())
        test.extend(members[args.train_per_class : args.train_per_class + args.test_per_class].tolist())
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    for name, indices in (("train", sorted(train)), ("test", sorted(test))):
        subset = full.select(indices)
        subset.to_parquet(str(output / f"{name}.parquet"))
        print(f"{name}: {len(subset)} images -> {output / f'{name}.parquet'}")


if __name__ == "__main__":
    main()

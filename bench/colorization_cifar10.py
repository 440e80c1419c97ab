"""Colorization pre-training on CIFAR-10, then its frozen encoder against the same network at random init.

    python bench/colorization_cifar10.py --quick          # toy sizes, about a minute on 2 CPU cores
    python bench/colorization_cifar10.py                  # about 10 minutes on 2 quiet CPU cores
    python bench/colorization_cifar10.py --steps 400 --bank_images 10000 --eval_images 10000   # longer
    python bench/colorization_cifar10.py --steps 2000 --batch_size 256   # on a GPU

1. Splits `../shared/datasets/cifar10/train.parquet` (50k labelled images) with a fixed seeded
   permutation into 40k training and 10k held-out images, saved once as `train.parquet` / `test.parquet`
   under `--workdir` (gitignored).
2. Pre-trains with `recipes/pretrain_colorization.py --config recipes/configs/colorization_resnet18_cifar10.yaml`
   on the 40k images for `--steps` steps (budget overrides on the command line; the ab prior from
   `--prior_images` of them).
3. Embeds `--bank_images` training images and `--eval_images` held-out images with the saved encoder
   (`ColorizationModel`) and with the same architecture at random init (seed 0), both in eval mode with
   the saved image processor's preprocessing, and scores weighted kNN (k=200, T=0.1) and a linear probe
   (`sslhub.evaluation.linear_probe`) on the held-out images.

Writes `--out` (Markdown) and `--json`; with `--quick` both go to `--workdir`, so toy numbers never
replace the measurement.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch
from cifar10_split import split_cifar10
from common import cpu_flags, cpu_model, repository_relative
from torch.utils.data import DataLoader

from sslhub.data import ImageDataset, collate, load_image_dataset
from sslhub.evaluation import (
    card_eval_results,
    extract_features,
    knn_accuracy,
    linear_probe,
    load_encoder,
)
from sslhub.hub import update_card_eval_results

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "pretrain_colorization.py"
CONFIG = ROOT / "recipes" / "configs" / "colorization_resnet18_cifar10.yaml"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="toy sizes (proves the pipeline, not a result)")
    parser.add_argument("--steps", type=int, default=100, help="pre-training optimizer steps")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=1e-3, help="per 256 images (AdamW)")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--prior_images", type=int, default=5000, help="images of the empirical ab prior")
    parser.add_argument("--bank_images", type=int, default=5000, help="training images: kNN bank, probe")
    parser.add_argument("--eval_images", type=int, default=2000, help="held-out images scored")
    parser.add_argument("--linear_epochs", type=int, default=100)
    parser.add_argument(
        "--mixed_precision", default="auto", help="auto (bf16 where the device has it natively), no, bf16"
    )
    parser.add_argument("--num_workers", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench" / ".cache" / "colorization")
    parser.add_argument("--out", type=Path, default=None, help="default bench/COLORIZATION_RESULTS.md")
    parser.add_argument("--json", type=Path, default=None, help="default bench/colorization_cifar10.json")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.batch_size, args.backbone = 10, 16, "resnet10t"
        args.prior_images, args.bank_images, args.eval_images, args.linear_epochs = 200, 500, 200, 10
    default_dir = args.workdir if args.quick else ROOT / "bench"
    args.out = args.out or default_dir / "COLORIZATION_RESULTS.md"
    args.json = args.json or default_dir / "colorization_cifar10.json"
    return args


def pretrain(args, data: Path, output_dir: Path) -> float:
    """Run the recipe (its own process, as a user would); returns the wall-clock seconds."""
    command = [
        sys.executable,
        str(RECIPE),
        *("--config", str(CONFIG), "--dataset", str(data), "--split", "train", "--knn_steps", "0"),
        *("--backbone", args.backbone, "--max_steps", str(args.steps), "--batch_size", str(args.batch_size)),
        *("--learning_rate", str(args.learning_rate), "--prior_images", str(args.prior_images)),
        *("--mixed_precision", args.mixed_precision, "--num_workers", str(args.num_workers)),
        *("--sample_steps", str(max(args.steps // 5, 1)), "--save_steps", str(args.steps)),
        *("--save_total_limit", "1", "--log_steps", str(max(args.steps // 20, 1))),
        *("--output_dir", str(output_dir), "--overwrite_output_dir", "true"),
    ]
    print("pre-training:", " ".join(command), flush=True)
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True)
    return time.perf_counter() - start


def features(encoder, dataset, num_workers: int, description: str):
    loader = DataLoader(
        ImageDataset(dataset, encoder.transform), batch_size=256, collate_fn=collate, num_workers=num_workers
    )
    return extract_features(encoder.model, loader, description=description)


def evaluate(args, model_dir: Path, data: Path, random_init: bool) -> dict[str, float]:
    """kNN and linear-probe top-1 on the held-out images, of the trained or a randomly initialized encoder."""
    torch.manual_seed(0)  # the random-init baseline is one fixed draw
    encoder = load_encoder(str(model_dir), random_init=random_init)
    name = "random init" if random_init else "colorization"
    bank = load_image_dataset(str(data), "train").select(range(args.bank_images))
    held_out = load_image_dataset(str(data), "test").select(range(args.eval_images))
    start = time.perf_counter()
    bank_x, bank_y = features(encoder, bank, args.num_workers, f"{name}: bank")
    test_x, test_y = features(encoder, held_out, args.num_workers, f"{name}: held-out")
    knn = knn_accuracy(bank_x, bank_y, test_x, test_y, k=200, temperature=0.1)
    probe = linear_probe(bank_x, bank_y, test_x, test_y, num_classes=10, epochs=args.linear_epochs)
    result = {
        "knn_top1": round(knn, 4),
        "linear_top1": round(probe.accuracy, 4),
        "feature_dim": int(bank_x.shape[1]),
        "eval_seconds": round(time.perf_counter() - start, 1),
    }
    print(f"{name}: kNN top-1 {knn:.4f}, linear top-1 {probe.accuracy:.4f}", flush=True)
    return result


def write_markdown(path: Path, results: dict) -> None:
    s, trained, baseline = results["settings"], results["colorization"], results["random_init"]
    lines = [
        "# Colorization pre-training on CIFAR-10: frozen features vs random init",
        "",
        f"Produced by `{results['command']}` on {results['machine']['date']}"
        f" ({results['machine']['cpu']}, {results['machine']['threads']} threads, {results['machine']['device']};"
        f" CPU flags: {' '.join(results['machine'].get('cpu_flags', {}).get('flags', [])) or 'not recorded'}).",
        "",
        f"- Method: colorization (Zhang, Isola, Efros 2016), `{s['backbone']}` with the CIFAR stem on the L "
        f"channel, {s['steps']} steps at batch {s['batch_size']} ({s['images_seen']} images, "
        f"{s['epochs']:.2f} epochs of the {s['train_images']} training images), AdamW lr {s['learning_rate']} "
        f"per 256, ab prior from {s['prior_images']} images; recipe config `{s['config']}`; precision "
        f"`{s['mixed_precision']}`: {s.get('precision_used') or 'not recorded'}.",
        f"- Pre-training wall time: {results['train_seconds']:.0f} s ({results['images_per_second']:.0f} images/s,"
        " including start-up and the prior).",
        f"- Evaluation: frozen pooled features, eval mode, no augmentation; bank / probe training set "
        f"{s['bank_images']} of the training images, scored on {s['eval_images']} held-out images "
        f"(a fixed seeded 40k/10k split of the CIFAR-10 training set). kNN: weighted, k=200, T=0.1. Linear "
        f"probe: standardized features, SGD, {s['linear_epochs']} epochs.",
        "",
        "| encoder | kNN top-1 | linear top-1 |",
        "|---|---|---|",
        f"| random init (same architecture) | {baseline['knn_top1']:.4f} | {baseline['linear_top1']:.4f} |",
        f"| colorization, {s['steps']} steps | {trained['knn_top1']:.4f} | {trained['linear_top1']:.4f} |",
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def main() -> None:
    args = parse_args()
    data = split_cifar10(args.workdir.parent / "cifar10_split")
    run_dir = args.workdir / f"{args.backbone}_steps{args.steps}_b{args.batch_size}"
    train_seconds = pretrain(args, data, run_dir)
    model_dir = run_dir / "final"
    trained = evaluate(args, model_dir, data, random_init=False)
    baseline = evaluate(args, model_dir, data, random_init=True)
    train_images = pq.ParquetFile(data / "train.parquet").metadata.num_rows
    results = {
        "method": "colorization",
        "command": " ".join(["python", *sys.argv]),
        "settings": {
            "backbone": args.backbone,
            "config": str(CONFIG.relative_to(ROOT)),
            "steps": args.steps,
            "batch_size": args.batch_size,
            "images_seen": args.steps * args.batch_size,
            "epochs": args.steps * args.batch_size / train_images,
            "train_images": train_images,
            "learning_rate": args.learning_rate,
            "prior_images": args.prior_images,
            "bank_images": args.bank_images,
            "eval_images": args.eval_images,
            "linear_epochs": args.linear_epochs,
            "mixed_precision": args.mixed_precision,
            "precision_used": json.loads((run_dir / "metrics.json").read_text()).get("mixed_precision"),
        },
        "train_seconds": round(train_seconds, 1),
        "images_per_second": round(args.steps * args.batch_size / train_seconds, 1),
        "colorization": trained,
        "random_init": baseline,
        "model_dir": str(model_dir),
        "samples": sorted(str(p) for p in (run_dir / "samples").glob("*.png")),
        "machine": {
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            "cpu": cpu_model(),
            "cpu_flags": cpu_flags(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "load_average_at_end": os.getloadavg()[0],
        },
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(repository_relative(results), indent=2) + "\n")
    write_markdown(args.out, results)
    print(f"wrote {args.out} and {args.json}")
    card = write_card(args, model_dir, trained)
    print(f"the model's card, with its results: {card}")


def write_card(args, model_dir: Path, trained: dict) -> Path:
    """The scores go into the trained model's card (`model-index`); the full run's card is also copied to
    `model_cards/colorization-BACKBONE-cifar10.md` (the zoo's entry reads it)."""
    dataset = f"CIFAR-10 ({args.eval_images:,} held-out images of the train split)"
    split = f"train, held-out {args.eval_images // 1000}k"
    entries = [
        *card_eval_results(trained["knn_top1"], "knn", dataset, "uoft-cs/cifar10", split),
        *card_eval_results(trained["linear_top1"], "linear-fast", dataset, "uoft-cs/cifar10", split),
    ]
    name = f"colorization-{args.backbone}-cifar10"
    update_card_eval_results(model_dir, entries, model_name=name)
    if args.quick:
        return model_dir / "README.md"
    shipped = ROOT / "model_cards" / f"{name}.md"
    shutil.copyfile(model_dir / "README.md", shipped)
    return shipped


if __name__ == "__main__":
    main()

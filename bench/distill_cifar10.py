"""Does distillation beat training the small model alone? A CIFAR-10 measurement on CPU-sized budgets.

    python bench/distill_cifar10.py                                   # small defaults, a few minutes
    python bench/distill_cifar10.py --teacher_steps 300 --student_steps 150 --batch_size 64 --num_images 5000

1. Split CIFAR-10's training parquet by a fixed seeded permutation: the first `--heldout` images are the
   held-out split (kNN queries), the first `--num_images` the training images (and the kNN bank).
2. Train a MoCo v2 teacher (`--teacher_backbone`, larger than the student) with `recipes/pretrain_moco.py`.
3. Train the student (`--student_backbone`) for `--student_steps` steps with MoCo v2 from scratch, and for the
   same number of steps by distillation from the teacher with each `--losses` (`recipes/distill.py`).
4. Weighted kNN top-1 (k=200, T=0.1, pooled backbone features) of every model on the held-out images.
5. Write the table (method, loss, steps, kNN top-1, train time) to `--results_md` and the numbers to
   `--results_json`.

Every run is a subprocess, as a user would launch it; its log goes to `WORKDIR/logs/`. Train time is the
wall-clock time of that subprocess (start-up, the teacher's cached pass and the final save included).
`kl` is left out of the default losses: a MoCo teacher has no class logits.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from cifar10_split import split_cifar10
from common import repository_relative
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sslhub.data import ImageDataset, collate, load_image_dataset  # noqa: E402
from sslhub.evaluation import extract_features, knn_accuracy, load_encoder  # noqa: E402

CIFAR_MEAN, CIFAR_STD = "[0.4914, 0.4822, 0.4465]", "[0.2470, 0.2435, 0.2616]"
QUEUE_LOSSES = ("seed", "compress_1q", "compress_2q")
# CompRess (and its regression / clustering baselines) distil the backbone feature; SEED the projection.
TEACHER_OUTPUT = {"seed": "projection", "compress_1q": "pooled", "compress_2q": "pooled", "mse": "pooled"}
TEACHER_OUTPUT.update(cluster="pooled", kl="logits")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data", default=str(ROOT.parent / "shared" / "datasets" / "cifar10" / "train.parquet")
    )
    parser.add_argument("--workdir", default="outputs/bench_distill_cifar10")
    parser.add_argument("--num_images", type=int, default=2000, help="training images (also the kNN bank)")
    parser.add_argument("--heldout", type=int, default=10000, help="size of the held-out split")
    parser.add_argument("--eval_images", type=int, default=2000, help="held-out images used as kNN queries")
    parser.add_argument("--teacher_backbone", default="resnet18")
    parser.add_argument("--student_backbone", default="resnet10t")
    parser.add_argument(
        "--small_input_stem", action="store_true", help="CIFAR ResNet stem (much slower on CPU)"
    )
    parser.add_argument("--teacher_steps", type=int, default=60)
    parser.add_argument("--student_steps", type=int, default=30)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=0.06, help="per 256 images")
    parser.add_argument(
        "--queue_size", type=int, default=4096, help="MoCo queue and distillation queues/banks"
    )
    parser.add_argument("--num_clusters", type=int, default=100, help="k of the cluster loss's k-means")
    parser.add_argument("--losses", default="seed,compress_1q,compress_2q,cluster,mse")
    parser.add_argument("--num_workers", type=int, default=0)
    parser.add_argument("--per_image_augmentation", action="store_true", help="PIL views in the loader")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reuse", action="store_true", help="keep runs whose final folder already exists")
    parser.add_argument("--results_md", default=str(ROOT / "bench" / "DISTILL_RESULTS.md"))
    parser.add_argument("--results_json", default=str(ROOT / "bench" / "distill_cifar10.json"))
    return parser.parse_args()


def train(name: str, recipe: str, flags: list[str], args: argparse.Namespace, workdir: Path) -> float:
    """Run a recipe into `workdir/name`; returns its wall-clock seconds (cached next to the run)."""
    output_dir, log = workdir / name, workdir / "logs" / f"{name}.log"
    timing = output_dir / "bench_seconds.json"
    if args.reuse and (output_dir / "final").is_dir() and timing.exists():
        print(f"  {name}: reusing {output_dir / 'final'}", flush=True)
        return json.loads(timing.read_text())["seconds"]
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(ROOT / "recipes" / recipe), *flags, "--output_dir", str(output_dir)]
    command += ["--overwrite_output_dir", "true"]  # a rerun replaces the earlier one
    print(f"  {name}: training (log: {log})", flush=True)
    start = time.perf_counter()
    with open(log, "w") as out:
        result = subprocess.run(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{name} failed (exit {result.returncode}); see {log}:\n{log.read_text()[-3000:]}")
    timing.write_text(json.dumps({"seconds": seconds}))
    return seconds


@torch.no_grad()
def knn_top1(model_dir: Path, data_dir: Path) -> float:
    """Weighted kNN top-1 (k=200, T=0.1) of the pooled features: bank = training images, queries = held out."""
    encoder = load_encoder(str(model_dir))
    features = []
    for split in ("train", "test"):
        images = ImageDataset(load_image_dataset(str(data_dir), split), encoder.transform)
        loader = DataLoader(images, batch_size=256, collate_fn=collate)
        features.append(extract_features(encoder.model, loader, progress=False))
    (bank, bank_labels), (queries, query_labels) = features
    return knn_accuracy(bank, bank_labels, queries, query_labels, k=200, temperature=0.1)


def write_results(args: argparse.Namespace, rows: list[dict], command: str) -> None:
    settings = {k: v for k, v in vars(args).items() if k not in ("results_md", "results_json", "reuse")}
    payload = repository_relative({"settings": settings, "results": rows})
    Path(args.results_json).write_text(json.dumps(payload, indent=2) + "\n")
    lines = [
        "# Distillation vs. MoCo from scratch on CIFAR-10 (kNN)",
        "",
        f"Produced by `{command}` (bench/distill_cifar10.py). Training images: {args.num_images} of CIFAR-10's "
        f"train split; kNN queries: {args.eval_images} held-out images (first {args.heldout} of a seeded "
        f"permutation). Teacher: MoCo v2 `{args.teacher_backbone}`, {args.teacher_steps} steps. Students: "
        f"`{args.student_backbone}`, {args.student_steps} steps, batch {args.batch_size}, 32x32"
        f"{' (CIFAR stem)' if args.small_input_stem else ''}, queue {args.queue_size}. Weighted kNN, k=200, "
        "T=0.1, on the pooled backbone feature. Train time: wall-clock seconds of the run (start-up and the "
        "teacher's cached pass included).",
        "",
        "| method | backbone | loss | steps | kNN top-1 | train time (s) |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['method']} | {row['backbone']} | {row['loss']} | {row['steps']} | "
            f"{row['knn_top1']:.4f} | {row['train_seconds']:.0f} |"
        )
    Path(args.results_md).write_text("\n".join(lines) + "\n")


def main() -> None:
    args = parse_args()
    workdir = Path(args.workdir).resolve()
    data_dir = workdir / "data"
    losses = [loss for loss in args.losses.split(",") if loss]
    common = [
        "--dataset", str(data_dir), "--split", "train", "--image_size", "32",
        "--image_mean", CIFAR_MEAN, "--image_std", CIFAR_STD, "--small_input_stem", str(args.small_input_stem).lower(),
        "--batch_size", str(args.batch_size), "--learning_rate", str(args.learning_rate),
        "--weight_decay", "5e-4", "--num_workers", str(args.num_workers), "--seed", str(args.seed),
        "--knn_steps", "0", "--log_steps", "10", "--save_total_limit", "1",
        "--batched_augmentation", str(not args.per_image_augmentation).lower(),
    ]  # fmt: skip
    moco = [
        "--version",
        "v2",
        "--queue_size",
        str(args.queue_size),
        "--momentum",
        "0.99",
        "--temperature",
        "0.1",
    ]
    total = 2 + len(losses)

    print(f"[0/{total}] splitting {args.data} into {data_dir}", flush=True)
    split_cifar10(
        data_dir,
        heldout=args.heldout,
        train_images=args.num_images,
        eval_images=args.eval_images,
        seed=args.seed,
        source=args.data,
    )

    runs = []  # (name, method, backbone, loss, steps, seconds)
    print(f"[1/{total}] teacher: MoCo v2 {args.teacher_backbone}, {args.teacher_steps} steps", flush=True)
    steps = ["--max_steps", str(args.teacher_steps), "--save_steps", str(args.teacher_steps)]
    flags = [*common, *moco, "--backbone", args.teacher_backbone, *steps]
    seconds = train("teacher_moco", "pretrain_moco.py", flags, args, workdir)
    runs.append(
        ("teacher_moco", "MoCo v2 (teacher)", args.teacher_backbone, "infonce", args.teacher_steps, seconds)
    )

    student_steps = ["--max_steps", str(args.student_steps), "--save_steps", str(args.student_steps)]
    print(f"[2/{total}] student from scratch: MoCo v2 {args.student_backbone}", flush=True)
    flags = [*common, *moco, "--backbone", args.student_backbone, *student_steps]
    seconds = train("student_moco", "pretrain_moco.py", flags, args, workdir)
    runs.append(
        (
            "student_moco",
            "MoCo v2 (from scratch)",
            args.student_backbone,
            "infonce",
            args.student_steps,
            seconds,
        )
    )

    teacher = str(workdir / "teacher_moco" / "final")
    for number, loss in enumerate(losses, start=3):
        print(f"[{number}/{total}] student by distillation: {loss}", flush=True)
        flags = [
            *common,
            *student_steps,
            "--teacher",
            teacher,
            "--student",
            args.student_backbone,
            "--loss",
            loss,
        ]
        flags += ["--teacher_output", TEACHER_OUTPUT.get(loss, "auto")]
        if loss in QUEUE_LOSSES:
            flags += ["--queue_size", str(args.queue_size)]
        if loss == "cluster":
            flags += ["--num_clusters", str(args.num_clusters)]
        seconds = train(f"student_{loss}", "distill.py", flags, args, workdir)
        runs.append(
            (f"student_{loss}", "distillation", args.student_backbone, loss, args.student_steps, seconds)
        )

    print("kNN evaluation on the held-out images", flush=True)
    rows = []
    for name, method, backbone, loss, steps, seconds in runs:
        top1 = knn_top1(workdir / name / "final", data_dir)
        print(f"  {name:<22} kNN top-1 {top1:.4f}  train {seconds:.0f} s", flush=True)
        row = dict(method=method, backbone=backbone, loss=loss, steps=steps, knn_top1=round(top1, 4))
        rows.append({**row, "train_seconds": round(seconds, 1)})
    write_results(args, rows, " ".join(["python", "bench/distill_cifar10.py", *sys.argv[1:]]))
    print(f"wrote {args.results_md} and {args.results_json}", flush=True)


if __name__ == "__main__":
    main()

"""Issue 4's measurement: kNN and linear-probe accuracy of a MoCo v2 encoder trained with the recipe on
CIFAR-10 versus the same network at random init, with the time each protocol takes.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/evaluate_cifar10.py --steps 1000

Pre-trains with `recipes/pretrain_moco.py` (demo settings: resnet10t at 32x32, batch 256, bf16, batched
augmentation) on the 40,000 training images of the split in `bench/cifar10_split.py`, then runs
`recipes/evaluate.py` (kNN: bank = the 40,000 training images, queries = the 10,000 held-out ones; linear
probe on cached features) for the trained and the random-init encoder. Writes `bench/EVALUATION_RESULTS.md`
and `bench/evaluate_cifar10.json`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from cifar10_split import split_cifar10

ROOT = Path(__file__).resolve().parents[1]


def run(command: list[str], log: Path) -> float:
    """Run a command (output to `log`); return its wall-clock seconds."""
    start = time.perf_counter()
    with log.open("w") as handle:
        result = subprocess.run(
            command,
            cwd=ROOT,
            stdout=handle,
            stderr=subprocess.STDOUT,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
    if result.returncode:
        raise SystemExit(f"{' '.join(command)} failed; see {log}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=1000, help="pre-training steps at batch 256")
    parser.add_argument("--backbone", default="resnet10t")
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench" / ".cache" / "evaluate")
    parser.add_argument("--reuse", action="store_true", help="keep a finished pre-training run")
    args = parser.parse_args()

    data = split_cifar10(ROOT / "bench" / ".cache" / "cifar10_split")
    args.workdir.mkdir(parents=True, exist_ok=True)
    model_dir = args.workdir / "moco"
    python = sys.executable
    rows: dict[str, dict] = {}
    if not (args.reuse and (model_dir / "final" / "model.safetensors").exists()):
        seconds = run(
            [
                python,
                "recipes/pretrain_moco.py",
                "--config",
                "recipes/configs/demo.yaml",
                "--dataset",
                str(data),
                "--backbone",
                args.backbone,
                "--max_steps",
                str(args.steps),
                "--knn_steps",
                "0",
                "--output_dir",
                str(model_dir),
                "--overwrite_output_dir",
                "true",
                "--save_steps",
                "100000",
            ],
            args.workdir / "pretrain.log",
        )
        rows["pretrain"] = {"seconds": round(seconds, 1)}
    metrics = json.loads((model_dir / "metrics.json").read_text())
    for init in ("random init", "MoCo v2"):
        for protocol in ("knn", "linear"):
            out = args.workdir / f"{protocol}-{init.replace(' ', '_')}"
            command = [
                python,
                "recipes/evaluate.py",
                "--model",
                str(model_dir / "final"),
                "--train_dataset",
                str(data),
                "--split",
                "train",
                "--eval_split",
                "test",
                "--protocol",
                protocol,
                "--output_dir",
                str(out),
                "--overwrite_output_dir",
                "true",
                "--update_card",
                str(init != "random init").lower(),
            ]
            if init == "random init":
                command += ["--random_init", "true"]
            seconds = run(command, args.workdir / f"{protocol}-{init.replace(' ', '_')}.log")
            result = json.loads((out / "results.json").read_text())
            rows[f"{init} / {protocol}"] = {"accuracy": result["accuracy"], "seconds": round(seconds, 1)}
            print(f"{init:12s} {protocol:6s} top-1 {result['accuracy']:.4f}  ({seconds:.0f} s)", flush=True)

    report = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "backbone": args.backbone,
        "steps": args.steps,
        "pretrain_metrics": metrics,
        "results": rows,
    }
    (ROOT / "bench" / "evaluate_cifar10.json").write_text(json.dumps(report, indent=2))
    lines = [
        "# Evaluation protocols on CIFAR-10: MoCo v2 vs random init",
        "",
        f"Produced by `python bench/evaluate_cifar10.py --steps {args.steps}` on {report['date']} "
        f"({report['machine']}). MoCo v2 `{args.backbone}` at 32x32, pre-trained with `recipes/pretrain_moco.py` "
        f"(demo settings: batch 256, bf16, batched augmentation) for {args.steps} steps "
        f"({metrics.get('epochs')} epochs of the 40,000 training images, {metrics.get('train_seconds')} s, "
        f"{metrics.get('images_per_second')} images/s, peak RSS {metrics.get('peak_memory_mb')} MB). "
        "Held-out: 10,000 images of a fixed seeded permutation of the CIFAR-10 training split "
        "(`bench/cifar10_split.py`). kNN: weighted, k=200, T=0.1, bank = the 40,000 training images. "
        "Linear probe: cached features without augmentation, 100 epochs, SGD + cosine. Times are wall-clock "
        "for the whole `recipes/evaluate.py` run (feature extraction included).",
        "",
        "| encoder | protocol | top-1 | time (s) |",
        "|---|---|---|---|",
    ]
    for key, row in rows.items():
        if key == "pretrain":
            continue
        init, protocol = key.split(" / ")
        lines.append(f"| {init} | {protocol} | {100 * row['accuracy']:.2f}% | {row['seconds']} |")
    (ROOT / "bench" / "EVALUATION_RESULTS.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""Regenerate the cards in `model_cards/` from the runs measured here (run after the benchmarks and the demo).

    python scripts/write_model_cards.py

Each card is `sslhub.hub.write_model_card` on the run's final folder, with the evaluation numbers read from
the benchmark outputs (`bench/*.json`, `outputs/demo/metrics.json`), copied to `model_cards/<name>.md`.
Runs that are missing are skipped with a message.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from sslhub.hub.cards import write_model_card

ROOT = Path(__file__).resolve().parents[1]
CARDS = ROOT / "model_cards"
CIFAR = {"task_type": "image-classification", "dataset_type": "uoft-cs/cifar10", "metric_type": "accuracy"}


def _result(dataset: str, split: str, name: str, value: float) -> dict:
    return {
        **CIFAR,
        "dataset_name": dataset,
        "dataset_split": split,
        "metric_name": name,
        "metric_value": value,
    }


def _write(folder: Path, name: str, results: list[dict], **card) -> None:
    if not (folder / "model.safetensors").exists():
        print(f"skipped {name}: no run in {folder}")
        return
    path = write_model_card(folder, model_name=name, eval_results=results, **card)
    shutil.copyfile(path, CARDS / f"{name}.md")
    print(f"wrote {CARDS / f'{name}.md'}")


def main() -> None:
    knn, linear = "kNN top-1 (k=200, T=0.1)", "linear probe top-1"
    heldout = ("CIFAR-10 (10,000 held-out images of the train split)", "train, held-out 10k")
    heldout_2k = ("CIFAR-10 (2,000 held-out images of the train split)", "train, held-out 2k")

    demo = ROOT / "outputs" / "demo"
    if (demo / "metrics.json").exists():
        metrics = json.loads((demo / "metrics.json").read_text())
        _write(
            demo / "final",
            "moco-v2-resnet10t-cifar10-sample-demo",
            [
                _result(
                    "CIFAR-10 sample (sslhub/sample)", "sample test (1,000 images)", knn, metrics["knn_top1"]
                )
            ],
            family="MoCo v2",
            paper="moco-v2",
            datasets=["uoft-cs/cifar10"],
            reproduce_command="make demo",
            training_summary=metrics,
        )

    evaluation = ROOT / "bench" / "evaluate_cifar10.json"
    if evaluation.exists():
        report = json.loads(evaluation.read_text())
        rows = report["results"]
        _write(
            ROOT / "bench" / ".cache" / "evaluate" / "moco" / "final",
            "moco-v2-resnet10t-cifar10",
            [
                _result(*heldout, knn, rows["MoCo v2 / knn"]["accuracy"]),
                _result(*heldout, linear, rows["MoCo v2 / linear"]["accuracy"]),
            ],
            family="MoCo v2",
            paper="moco-v2",
            datasets=["uoft-cs/cifar10"],
            reproduce_command=f"python bench/evaluate_cifar10.py --steps {report['steps']}",
            training_summary=report["pretrain_metrics"],
        )

    distill = ROOT / "bench" / "distill_cifar10.json"
    if distill.exists():
        report = json.loads(distill.read_text())
        settings = report["settings"]
        workdir = Path(settings["workdir"])
        for row in report["results"]:
            if row["method"] != "distillation":
                continue
            name = f"student-{row['backbone']}-{row['loss'].replace('_', '-')}-cifar10"
            teacher = (
                f"MoCo v2 `{settings['teacher_backbone']}` trained here ({settings['teacher_steps']} steps)"
            )
            _write(
                workdir / f"student_{row['loss']}" / "final",
                name,
                [_result(*heldout_2k, knn, row["knn_top1"])],
                family="student",
                paper=row["loss"].split("_")[0] if row["loss"] != "mse" else None,
                datasets=["uoft-cs/cifar10"],
                reproduce_command="python bench/distill_cifar10.py",
                summary=(
                    f"A `{row['backbone']}` student distilled without labels from the frozen teacher "
                    f"{teacher} with the `{row['loss']}` loss, on CIFAR-10 at 32x32."
                ),
                training_summary={**row, "teacher": teacher},
            )

    colorization = ROOT / "bench" / "colorization_cifar10.json"
    if colorization.exists():
        report = json.loads(colorization.read_text())
        trained, settings = report["colorization"], report["settings"]
        _write(
            Path(report["model_dir"]),
            f"colorization-{settings['backbone']}-cifar10",
            [
                _result(*heldout_2k, knn, trained["knn_top1"]),
                _result(*heldout_2k, linear, trained["linear_top1"]),
            ],
            family="colorization",
            paper="colorization",
            datasets=["uoft-cs/cifar10"],
            reproduce_command=report["command"],
            training_summary={**settings, "train_seconds": report["train_seconds"]},
        )


if __name__ == "__main__":
    main()

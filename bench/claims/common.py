"""What the four claim experiments share: settings and budgets, the data split, the recipes run as logged
subprocesses (a finished run is reused when its command is unchanged), the machine, aggregation over seeds,
model cards and the pictures.

Every number comes from `recipes/pretrain_moco.py`, `recipes/distill.py` and `recipes/evaluate.py`, run as
a user would run them; the scripts only choose the settings, collect `results.json` / `metrics.json` and
draw. Runs live in `WORKDIR/runs/NAME` (the models' final folders included), their logs in
`WORKDIR/logs/NAME.log`, the feature cache in `WORKDIR/features`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.cifar10_split import split_cifar10  # noqa: E402
from bench.common import machine_info, repository_relative  # noqa: E402

CIFAR_MEAN, CIFAR_STD = "[0.4914, 0.4822, 0.4465]", "[0.2470, 0.2435, 0.2616]"
HELD_OUT = "CIFAR-10 (10,000 held-out images of the train split)"  # how model cards name the test set
SPLIT_FOLDER = "cifar10-split"  # the claims' data folder: its `test` split is the held-out one

# MoCo v2 pre-training, as in the demo (recipes/configs/demo.yaml: batch 256, lr 0.06 per 256, wd 5e-4,
# queue 4096, T 0.2, m 0.99, batched augmentation at 32x32). The full budget's MoCo v2 resnet10t is the one
# SSL model of label efficiency and new categories, and the teacher of compression.
MOCO = {
    "smoke": dict(backbone="test_resnet", steps=30, batch_size=64),
    "full": dict(backbone="resnet10t", steps=1000, batch_size=256),
}
# A short run for comparisons at equal images seen: every backbone of capacity (self-supervised and
# supervised), and the supervised models of new categories against a MoCo v2 of the same length.
EQUAL_IMAGES = {"smoke": dict(steps=4, batch_size=32), "full": dict(steps=120, batch_size=256)}
# Fine-tuning and supervised training from random init: the same loop, optimizer and budget (evaluate.py
# --protocol finetune: AdamW, cosine, 10% warm-up, RandomResizedCrop(scale 0.3-1) + flip at 32x32).
FINETUNE = {
    "smoke": dict(steps=12, batch_size=32, learning_rate=1e-3),
    "full": dict(steps=400, batch_size=64, learning_rate=1e-3),
}


@dataclass
class Claim:
    """The settings every claim script shares."""

    name: str
    budget: str
    workdir: Path
    out: Path
    seeds: list[int]
    threads: int
    command: str
    started: float = field(default_factory=time.perf_counter)

    @property
    def smoke(self) -> bool:
        return self.budget == "smoke"

    @property
    def pictures(self) -> Path:
        """Where the PNGs and results.json go (`bench/claims/NAME/` for the full budget)."""
        return self.out / self.name

    @property
    def report(self) -> Path:
        return self.out / f"{self.name}.md"


def parse_claim(name: str, doc: str, argv: Sequence[str] | None = None) -> Claim:
    """The command line every claim script takes: --budget, --workdir, --seeds, --threads, --out."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", choices=("smoke", "full"), default="full")
    parser.add_argument(
        "--workdir", type=Path, help="runs, logs, models (default outputs/claims or outputs/claims-smoke)"
    )
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds where the claim repeats runs")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per run (1: on a shared 2-core CPU, 2 threads ran up to 5x slower)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="report, results.json and pictures (default bench/claims; smoke: the workdir)",
    )
    args = parser.parse_args(argv)
    workdir = (
        args.workdir or ROOT / "outputs" / ("claims-smoke" if args.budget == "smoke" else "claims")
    ).resolve()
    out = (args.out or (workdir if args.budget == "smoke" else ROOT / "bench" / "claims")).resolve()
    script = Path(__file__).with_name(f"{name}.py")
    shown = script.relative_to(ROOT)
    given = [a for a in (argv if argv is not None else sys.argv[1:])]
    return Claim(
        name=name,
        budget=args.budget,
        workdir=workdir,
        out=out,
        seeds=[int(s) for s in args.seeds.split(",") if s.strip()],
        threads=args.threads,
        command=" ".join(["python", str(shown), *given]),
    )


def start(name: str, doc: str, argv: Sequence[str] | None = None) -> tuple[Claim, Runs, str, int]:
    """The beginning of every claim script: its settings, its runs, the data and its training images."""
    claim = parse_claim(name, doc, argv)
    data = training_data(claim)
    num_train = num_training_images(data)
    print(f"[{name}] {claim.budget}: {num_train:,} training images, work folder {claim.workdir}", flush=True)
    return claim, Runs(claim), data, num_train


def training_data(claim: Claim) -> str:
    """The labelled data: the shipped 5,000/1,000-image sample (smoke) or CIFAR-10's training split cut into
    40,000 training and 10,000 held-out images by `bench/cifar10_split.py` (full)."""
    if claim.smoke:
        return "sample"
    return str(split_cifar10(claim.workdir / "data" / SPLIT_FOLDER))


def parameters(backbone: str) -> int:
    """Parameters of a timm backbone as sslhub builds it (without a classifier)."""
    from sslhub.models.backbones import create_backbone

    return sum(p.numel() for p in create_backbone(backbone).parameters())


def num_training_images(data: str) -> int:
    from sslhub.data import load_image_dataset

    return len(load_image_dataset(data, "train"))


# ----------------------------------------------------------------------------------------------------------
# Runs
# ----------------------------------------------------------------------------------------------------------


class Runs:
    """Recipes run as subprocesses, one folder and one log each; a run whose folder holds a record of the
    same command is reused, so a stopped experiment continues where it stopped."""

    def __init__(self, claim: Claim) -> None:
        self.claim = claim
        self.records: list[dict[str, Any]] = []

    def recipe(self, name: str, script: str, *flags: Any) -> Path:
        """Run `recipes/SCRIPT` with `flags` into `WORKDIR/runs/NAME`; returns that folder."""
        output_dir = self.claim.workdir / "runs" / name
        log = self.claim.workdir / "logs" / f"{name}.log"
        command = [str(ROOT / "recipes" / script), *map(str, flags), "--output_dir", str(output_dir)]
        record_file = output_dir / "claim_run.json"
        if record_file.exists():
            record = json.loads(record_file.read_text())
            if record["command"] == command:
                self.records.append({**record, "reused": True})
                return output_dir
        if output_dir.exists():  # an unfinished or different run: start again
            shutil.rmtree(output_dir)
        log.parent.mkdir(parents=True, exist_ok=True)
        print(f"  {name}: running {script} (log: {log})", flush=True)
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "OMP_NUM_THREADS": str(self.claim.threads),
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        }
        load_before, start = os.getloadavg()[0], time.perf_counter()
        with log.open("w") as handle:
            result = subprocess.run(
                [sys.executable, *command], cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, env=env
            )
        seconds = time.perf_counter() - start
        if result.returncode:
            raise SystemExit(
                f"{name} failed (exit {result.returncode}); see {log}:\n{log.read_text()[-3000:]}"
            )
        record = {
            "name": name,
            "command": command,
            "seconds": round(seconds, 1),
            "load_average_before": round(load_before, 2),
            "load_average_after": round(os.getloadavg()[0], 2),
            "threads": self.claim.threads,
            "finished": datetime.datetime.now().isoformat(timespec="seconds"),
        }
        output_dir.mkdir(parents=True, exist_ok=True)
        record_file.write_text(json.dumps(record, indent=2))
        self.records.append({**record, "reused": False})
        return output_dir

    def evaluate(self, name: str, model: str | Path, data: str, protocol: str, *flags: Any) -> dict:
        """`recipes/evaluate.py` on the data's train/test splits; returns its results.json."""
        folder = self.recipe(
            name,
            "evaluate.py",
            "--model", model, "--dataset", data, "--split", "train", "--eval_split", "test",
            "--protocol", protocol, "--cache_dir", self.claim.workdir / "features",
            "--num_workers", 1, "--update_card", "false", "--report_to", "tensorboard",
            *flags,
        )  # fmt: skip
        return json.loads((folder / "results.json").read_text())

    def seconds(self) -> float:
        return sum(r["seconds"] for r in self.records)


def pretrain_moco(
    runs: Runs, data: str, backbone: str, steps: int, batch_size: int, seed: int = 0
) -> tuple[Path, dict]:
    """MoCo v2 with the demo's settings on `data`; returns (final folder, metrics.json)."""
    name = f"moco-{backbone}-{steps}x{batch_size}-s{seed}"
    folder = runs.recipe(
        name,
        "pretrain_moco.py",
        "--config", ROOT / "recipes" / "configs" / "demo.yaml",
        "--dataset", data, "--split", "train", "--model.backbone", backbone,
        "--max_steps", steps, "--batch_size", batch_size, "--seed", seed,
        "--knn_steps", 0, "--save_steps", steps, "--save_total_limit", 1, "--num_workers", 1,
        "--report_to", "tensorboard",
    )  # fmt: skip
    return folder / "final", json.loads((folder / "metrics.json").read_text())


def shared_moco(runs: Runs, data: str) -> tuple[Path, dict]:
    """The one MoCo v2 model of the budget (see `MOCO`)."""
    return pretrain_moco(runs, data, **MOCO[runs.claim.budget])


def finetune_flags(
    budget: str, num_labelled: int, steps: int | None = None, batch_size: int | None = None
) -> list[Any]:
    """Settings of fine-tuning and supervised training: the budget's steps, 10% of them warm-up."""
    settings = FINETUNE[budget]
    steps, batch_size = steps or settings["steps"], batch_size or settings["batch_size"]
    steps_per_epoch = max(1, num_labelled // batch_size)
    return [
        "--max_steps", steps, "--batch_size", batch_size, "--learning_rate", settings["learning_rate"],
        "--weight_decay", 0.05, "--warmup_epochs", round(0.1 * steps / steps_per_epoch, 4),
        "--min_crop_scale", 0.3,
    ]  # fmt: skip


def finetune(
    runs: Runs,
    model: Path | str,
    data: str,
    num_train: int,
    fraction: float = 1.0,
    seed: int = 0,
    random_init: bool = False,
    tag: str = "",
    flags: Sequence[Any] = (),
    steps: int | None = None,
    batch_size: int | None = None,
) -> dict:
    """Fine-tune `model` (or train its architecture from random init: the supervised baseline) on a
    class-balanced `fraction` of the labels; returns evaluate.py's results. Runs on all labels keep their
    model (`--save_model`): new categories evaluates the supervised one, compression distils the other."""
    kind = "supervised" if random_init else "finetune"
    name = f"{kind}-{Path(model).parent.name}-f{fraction:g}-s{seed}{tag}"
    return runs.evaluate(
        name,
        model,
        data,
        "finetune",
        *finetune_flags(runs.claim.budget, round(fraction * num_train), steps, batch_size),
        "--label_fraction", fraction, "--seed", seed, "--random_init", str(random_init).lower(),
        "--save_model", str(fraction == 1.0).lower(),
        *flags,
    )  # fmt: skip


def linear_flags(num_labelled: int, batch_size: int = 256, smoke: bool = False) -> list[Any]:
    """The linear protocol (validation sweep of 5 learning rates x 4 weight decays) with about 3,000 probe
    steps: 100 epochs of a small labelled set, fewer of a large one (at least 30). Smoke: a 2 x 1 sweep of
    20 epochs."""
    if smoke:
        return ["--epochs", 20, "--batch_size", batch_size, "--linear_learning_rates", "[0.1, 1.0]",
                "--linear_weight_decays", "[0.0]"]  # fmt: skip
    steps_per_epoch = max(1, math.ceil(num_labelled / batch_size))
    return ["--epochs", max(30, min(100, math.ceil(3000 / steps_per_epoch))), "--batch_size", batch_size]


# ----------------------------------------------------------------------------------------------------------
# Numbers
# ----------------------------------------------------------------------------------------------------------


def summarize(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample standard deviation (0 for one value), min, max and n of accuracies."""
    values = [float(v) for v in values]
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
        "n": len(values),
        "values": values,
    }


def pct(summary: dict[str, Any] | float) -> str:
    """`41.2%` for one value, `41.2 ± 0.8% (n=3)` for a summary of several."""
    if not isinstance(summary, dict):
        return f"{100 * summary:.1f}%"
    if summary["n"] == 1:
        return f"{100 * summary['mean']:.1f}%"
    return f"{100 * summary['mean']:.1f} ± {100 * summary['std']:.1f}% (n={summary['n']})"


# The smallest gain (a fraction: 0.01 is one point of top-1) one seed can show: seeds of the same run
# differ by up to about a point here (standard deviations of 0.2-0.7 points fine-tuning, 0.1-2.7 linear).
ONE_SEED_MARGIN = 0.01


def held(gain: float, spread: float = 0.0, seeds: int = 1) -> str:
    """Whether a claimed gain held: "yes" (positive and, with several seeds, over twice the spread; with one
    seed, over `ONE_SEED_MARGIN`), "no" (zero or negative), or "not established" (positive but
    within that noise)."""
    if gain <= 0:
        return "no"
    if seeds > 1 and gain <= 2 * spread:
        return "not established"
    if seeds == 1 and gain < ONE_SEED_MARGIN:
        return "not established (one seed, under a point)"
    return "yes" if seeds > 1 else "yes (one seed)"


def headline(claim: str, result: str, verdict: str, report: str) -> dict[str, str]:
    """One row of the README's results table."""
    return {"claim": claim, "result": result, "held": verdict, "report": report}


def machine(claim: Claim, runs: Runs) -> dict[str, Any]:
    """The machine and how busy it was: CPU, flags, threads per run, load averages around the runs."""
    info = machine_info(torch.device("cpu"))
    flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").exists() else []
    info["cpu_flags"] = sorted(
        {f for f in flags if f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")}
    )
    info["threads_per_run"] = claim.threads
    ran = [r for r in runs.records if not r["reused"]]
    loads = [r["load_average_before"] for r in ran] + [r["load_average_after"] for r in ran]
    info["load_average_during_runs"] = {"min": min(loads), "max": max(loads)} if loads else None
    return info


def machine_line(info: dict[str, Any]) -> str:
    """One Markdown paragraph: the machine, and whether the cores were shared."""
    loads = info.get("load_average_during_runs")
    shared = ""
    if loads:
        busy = loads["max"] > info["cpu_count"] - 0.5
        shared = (
            f" 1-minute load average around the runs {loads['min']:.1f}-{loads['max']:.1f} on "
            f"{info['cpu_count']} cores: "
            + ("**the cores were shared with other jobs**, so times are upper bounds." if busy else "quiet.")
        )
    return (
        f"Machine: {info['cpu']}, {info['cpu_count']} cores, CPU flags {', '.join(info['cpu_flags'])}; "
        f"torch {info['torch']}, timm {info['timm']}; {info['threads_per_run']} torch thread(s) per run."
        + shared
    )


def precision_of(*results: dict) -> str:
    """The precision(s) the runs used, from their metrics.json / results.json."""
    modes = sorted({r.get("mixed_precision", "?") for r in results})
    return "/".join(modes)


def write_outputs(claim: Claim, runs: Runs, results: dict[str, Any], report: list[str]) -> None:
    """results.json (the numbers, every run's command and time, the machine) and the Markdown report."""
    claim.pictures.mkdir(parents=True, exist_ok=True)
    info = machine(claim, runs)
    payload = {
        "claim": claim.name,
        "budget": claim.budget,
        "command": claim.command,
        "date": datetime.date.today().isoformat(),
        "machine": info,
        "wall_seconds": round(time.perf_counter() - claim.started, 1),
        "run_seconds": round(runs.seconds(), 1),
        **results,
        "runs": runs.records,
    }
    (claim.pictures / "results.json").write_text(
        json.dumps(repository_relative(payload), indent=2, default=str) + "\n"
    )
    claim.report.write_text("\n".join(report).replace("{MACHINE}", machine_line(info)) + "\n")
    print(f"wrote {claim.report} and {claim.pictures / 'results.json'}", flush=True)


def report_header(claim: Claim, title: str, runs: Runs) -> list[str]:
    total = runs.seconds()
    return [
        f"# {title}",
        "",
        f"Reproduce: `{claim.command}` (budget `{claim.budget}`; finished runs in the work folder are reused). "
        f"Produced on {datetime.date.today().isoformat()}; the runs took {total / 60:.0f} min of wall-clock "
        "time in all (each run's command, time and load are in `results.json`).",
        "",
        "{MACHINE}",
        "",
    ]


def ship_card(claim: Claim, folder: Path, name: str, entries: list[dict]) -> None:
    """Merge `entries` into the card of a model folder, named `name` (the name the zoo lists it by); for the
    full budget, copy it to model_cards/NAME.md.

    A recipe names the claims' data by its folder (`cifar10-split`, split `test`): those results are the
    held-out split's, and are renamed as `card_entry` names it, so that a card has one dataset for them.
    """
    from huggingface_hub import ModelCard

    from sslhub.hub import update_card_eval_results

    readme = Path(folder) / "README.md"
    if readme.is_file():
        card = ModelCard.load(readme)
        local = [
            r
            for r in card.data.eval_results or []
            if r.dataset_type == SPLIT_FOLDER and r.dataset_split == "test"
        ]
        if local:
            card.data.eval_results = [r for r in card.data.eval_results if r not in local]
            card.save(readme)
            entries = [card_entry(r.metric_name or r.metric_type, r.metric_value) for r in local] + entries
    update_card_eval_results(folder, entries, model_name=name)
    if not claim.smoke:
        shutil.copyfile(folder / "README.md", ROOT / "model_cards" / f"{name}.md")


def card_entry(metric_name: str, value: float) -> dict:
    return {
        "task_type": "image-classification",
        "dataset_name": HELD_OUT,
        "dataset_type": "uoft-cs/cifar10",
        "dataset_split": "train, held-out 10k",
        "metric_type": "accuracy",
        "metric_name": metric_name,
        "metric_value": round(float(value), 4),
    }


# ----------------------------------------------------------------------------------------------------------
# Pictures
# ----------------------------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(
    series: dict[str, list[tuple[float, dict[str, Any]]]],
    path: Path,
    xlabel: str,
    ylabel: str,
    title: str,
    logx: bool = True,
    styles: dict[str, str] | None = None,
    zero_line: bool = False,
) -> Path:
    """Lines of mean values with error bars (sample std over seeds) and every seed's value as a dot."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6.4, 4.4))
    for label, points in series.items():
        points = sorted(points, key=lambda p: p[0])
        x = [p[0] for p in points]
        mean = [100 * p[1]["mean"] for p in points]
        std = [100 * p[1]["std"] for p in points]
        line = axis.errorbar(x, mean, yerr=std, capsize=3, label=label, fmt=(styles or {}).get(label, "-o"))
        for xi, p in points:
            if p["n"] > 1:
                axis.scatter(
                    [xi] * p["n"], [100 * v for v in p["values"]], s=8, alpha=0.5, color=line[0].get_color()
                )
    if logx:
        axis.set_xscale("log")
    if zero_line:
        axis.axhline(0, color="grey", linewidth=0.8)
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_title(title, fontsize=10)
    axis.grid(alpha=0.3, which="both")
    axis.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def plot_bars(
    groups: dict[str, dict[str, dict[str, Any]]],
    path: Path,
    ylabel: str,
    title: str,
    reference: tuple[str, float] | None = None,
) -> Path:
    """Grouped bars: `groups[group][bar] = summary`, error bars = sample std where n > 1."""
    plt = _pyplot()
    group_names = list(groups)
    bar_names = list(dict.fromkeys(b for g in groups.values() for b in g))
    width = 0.8 / max(1, len(bar_names))
    figure, axis = plt.subplots(
        figsize=(max(6.4, 1.3 * len(group_names) * max(1, len(bar_names)) * 0.5), 4.4)
    )
    for i, bar in enumerate(bar_names):
        xs, heights, errors = [], [], []
        for j, group in enumerate(group_names):
            if bar in groups[group]:
                s = groups[group][bar]
                xs.append(j + (i - (len(bar_names) - 1) / 2) * width)
                heights.append(100 * s["mean"])
                errors.append(100 * s["std"])
        bars = axis.bar(xs, heights, width, yerr=errors, capsize=3, label=bar)
        axis.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
    if reference is not None:
        axis.axhline(100 * reference[1], color="black", linestyle="--", linewidth=1, label=reference[0])
    axis.set_xticks(range(len(group_names)), group_names, fontsize=8)
    axis.set_ylabel(ylabel)
    axis.set_title(title, fontsize=10)
    axis.grid(alpha=0.3, axis="y")
    if len(bar_names) > 1 or reference is not None:
        axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)
    return path


def plot_confusion(result: dict, path: Path, title: str) -> Path:
    """The confusion matrix of an evaluate.py result (`sslhub.evaluation.plots`)."""
    from sslhub.evaluation.plots import plot_confusion_matrix

    return plot_confusion_matrix(torch.tensor(result["confusion_matrix"]), result["class_names"], path, title)

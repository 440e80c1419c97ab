"""Time to accuracy: kNN top-1 against training wall-clock seconds, sslhub vs lightly, MoCo v2.

    python bench/time_to_accuracy.py --quick     # toy sizes, to check the script (1-2 minutes)
    python bench/time_to_accuracy.py             # the full run, 4 seeds each: 100 minutes of a 2-core machine
    python bench/time_to_accuracy.py --set shuffle_bn_splits=1 --out-dir bench/tta_shuffle_bn_off
                                                 # sslhub without its shuffle-BN (lightly's runs are reused)
    python bench/time_to_accuracy.py --avx2 --seeds 0 1 --out-dir bench/avx2
                                                 # torch's and oneDNN's kernels capped at AVX2 (an emulation)
    python bench/time_to_accuracy.py --libraries sslhub --set precision=bf16 --out-dir bench/X
                                                 # one library only: its curves and seed statistics

The protocol (`Protocol`): timm `test_resnet` at 32x32, 2-layer projector 512 -> 128, queue 1,024, T 0.2,
m 0.99, SGD (momentum 0.9, weight decay 5e-4) with lr 0.06 x batch / 256 on a cosine, batch 128, 40 epochs
of 10,000 CIFAR-10 training images; weighted kNN (k=200, T=0.1, bank: the training images) on 10,000
held-out images of the project's split (`cifar10_split.py`), every 4 epochs. Each library runs as its
users run it, in its own process: sslhub through `recipes/pretrain_moco.py` (batched augmentation,
channels_last, its fused SGD, the v2 preset's one-process shuffle-BN); lightly as its MoCo v2 example (PIL views in DataLoader workers,
`MoCoProjectionHead`, `NTXentLoss` memory bank, `update_momentum`, `batch_shuffle`). Both evaluate with the
same `KNNProbe`; the clock stops while it runs, so "training seconds" are the wall time of the training
loop (data loading, augmentation, steps, logging) from the end of the random-init evaluation.

Writes `TIME_TO_ACCURACY.md`, `time_to_accuracy.json` and `time_to_accuracy.png` into `bench/` (or
`--out-dir`). Each finished run is kept in `bench/.cache/time_to_accuracy/` and reused by the next call on
the same machine with the same settings for its library (`run_key`), so a stopped benchmark continues where
it stopped, and a setting only sslhub reads (`--set shuffle_bn_splits=1`) reruns only sslhub (delete the
folder to rerun).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from sslhub import MoCoConfig

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from cifar10_split import split_cifar10  # noqa: E402
from common import (  # noqa: E402
    CIFAR_MEAN,
    CIFAR_STD,
    KNNProbe,
    LightlyMoCo,
    LightlyViews,
    Setting,
    cpu_flags,
    cpu_model,
    describe_machine,
    lightly_transform,
    machine_info,
    make_optimizer,
    train_step,
)

LIBRARIES = ("sslhub", "lightly")
AVX2 = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}


@dataclass
class Protocol:
    """The settings the libraries train with (`ONLY_FOR`: the fields one library reads)."""

    train_images: int = 10_000
    heldout_images: int = 10_000
    epochs: int = 40
    eval_every: int = 4  # epochs between kNN evaluations (and the last epoch)
    batch_size: int = 128
    queue_size: int = 1024
    temperature: float = 0.2
    momentum: float = 0.99
    lr: float = 0.06  # per 256 images
    weight_decay: float = 5e-4
    backbone: str = "test_resnet"
    image_size: int = 32
    projector_hidden: int = 512
    # sslhub as shipped: the v2 preset's one-process shuffle-BN, its key encoder's BatchNorm statistics over 8
    # sub-batches of the shuffled batch (the MoCo authors' CIFAR-10 emulation); lightly's example shuffles the
    # key batch too, but in one process its BatchNorm still sees the whole batch. 1 turns sslhub's off.
    shuffle_bn_splits: int = dataclasses.field(default_factory=lambda: MoCoConfig.v2().shuffle_bn_splits)
    precision: str = "fp32"  # or "bf16" (autocast)
    sslhub_workers: int = 1  # they decode the images into memory once; views are made in the step
    lightly_workers: int = 2  # PIL views per image: one worker per core

    @property
    def peak_lr(self) -> float:
        return self.lr * self.batch_size / 256


# Protocol fields that only one library reads: changing them keeps the other library's runs.
ONLY_FOR = {"shuffle_bn_splits": "sslhub", "sslhub_workers": "sslhub", "lightly_workers": "lightly"}


def run_key(p: Protocol, library: str, avx2: bool, machine: str) -> str:
    """The key of `library`'s kept runs: a hash of the protocol fields it reads, the kernel caps and the
    machine (`machine_key`), so that runs of another CPU (a folder shared by cluster nodes) are not mixed in."""
    fields = {
        name: value for name, value in dataclasses.asdict(p).items() if ONLY_FOR.get(name, library) == library
    }
    return hashlib.sha1(json.dumps([fields, avx2, machine]).encode()).hexdigest()[:10]


def machine_key() -> str:
    """What makes runs of two machines incomparable: the CPU model, cores, kernel flags and torch version
    (two CPUs can share a model name, "AMD EPYC", and differ in AVX-512)."""
    return json.dumps([cpu_model(), os.cpu_count(), cpu_flags()["flags"], torch.__version__])


QUICK = dict(train_images=512, heldout_images=512, epochs=3, eval_every=1, batch_size=64, queue_size=256)


class TimedProbe:
    """A `KNNProbe` that records `(training seconds, accuracy)` at each call; training seconds are the wall
    time spent outside its calls since the first call (the random-init evaluation) ended."""

    def __init__(self, probe: KNNProbe) -> None:
        self.probe, self.curve, self.seconds, self._last_end = probe, [], 0.0, None

    def __call__(self, encoder) -> float:
        started = time.perf_counter()
        if self._last_end is not None:
            self.seconds += started - self._last_end
        accuracy = self.probe(encoder)
        self.curve.append({"train_seconds": round(self.seconds, 2), "knn_top1": accuracy})
        print(f"  {self.seconds:8.1f} s  kNN top-1 {accuracy:.4f}", flush=True)
        self._last_end = time.perf_counter()
        return accuracy

    def add_seconds(self, seconds: float) -> None:
        """Count `seconds` spent before the first evaluation as training time (every point after it)."""
        self.seconds += seconds
        for point in self.curve[1:]:
            point["train_seconds"] = round(point["train_seconds"] + seconds, 2)


# ----------------------------------------------------------------------------------------------------------
# One training run per child process
# ----------------------------------------------------------------------------------------------------------


def sslhub_run(p: Protocol, data: Path, seed: int, probe: TimedProbe) -> dict:
    """`recipes/pretrain_moco.py` as a user runs it, its kNN monitor replaced by the shared probe."""
    sys.path.insert(0, str(ROOT / "recipes"))
    import pretrain_moco

    from sslhub.data import InMemoryUInt8Images

    pretrain_moco.KNNMonitor = lambda args, accelerator, config: probe
    # The recipe decodes the images into memory before its random-init evaluation starts the clock: time it,
    # and count it as training time (lightly decodes inside its loop, every epoch).
    decode, decode_seconds = InMemoryUInt8Images.decode.__func__, []

    def timed_decode(cls, *args, **kwargs):
        started = time.perf_counter()
        images = decode(cls, *args, **kwargs)
        decode_seconds.append(time.perf_counter() - started)
        return images

    InMemoryUInt8Images.decode = classmethod(timed_decode)
    steps_per_epoch = p.train_images // p.batch_size
    model = dict(
        backbone=p.backbone,
        image_size=p.image_size,
        image_mean=list(CIFAR_MEAN),
        image_std=list(CIFAR_STD),
        queue_size=p.queue_size,
        temperature=p.temperature,
        momentum=p.momentum,
        projector_hidden_size=p.projector_hidden,
        shuffle_bn_splits=p.shuffle_bn_splits,
    )
    with tempfile.TemporaryDirectory() as output_dir:
        argv = [
            "--dataset", str(data), "--split", "train", "--version", "v2",
            "--batch_size", str(p.batch_size), "--epochs", str(p.epochs),
            "--learning_rate", str(p.lr), "--weight_decay", str(p.weight_decay),
            "--batched_augmentation", "true", "--num_workers", str(p.sslhub_workers),
            "--mixed_precision", "no" if p.precision == "fp32" else p.precision,
            "--knn_steps", str(p.eval_every * steps_per_epoch), "--save_steps", str(10**9),
            "--log_steps", "20", "--seed", str(seed), "--output_dir", output_dir,
            "--model", json.dumps(model),
        ]  # fmt: skip
        metrics = pretrain_moco.main(pretrain_moco.parse_args(pretrain_moco.MoCoArguments, argv))
    probe.add_seconds(sum(decode_seconds))
    return {
        "recipe_images_per_second": metrics["images_per_second"],
        "step_time_ms": metrics["step_time_ms"],
        "decode_into_memory_seconds": sum(decode_seconds),
    }


def lightly_run(p: Protocol, data: Path, seed: int, probe: TimedProbe) -> dict:
    """lightly's MoCo v2 example loop with the protocol's settings (and the same cosine learning rate)."""
    from torch.utils.data import DataLoader

    from sslhub.data import load_image_dataset
    from sslhub.training import cosine_lr, set_lr

    torch.manual_seed(seed)
    device = torch.device("cpu")
    s = Setting(
        "time-to-accuracy",
        backbone=p.backbone,
        small_input_stem=False,
        image_size=p.image_size,
        batch_size=p.batch_size,
        queue_size=p.queue_size,
        temperature=p.temperature,
        momentum=p.momentum,
        lr=p.peak_lr,
        weight_decay=p.weight_decay,
        precision=p.precision,
        projector_hidden=p.projector_hidden,
    )
    model = LightlyMoCo(s).to(device).train()
    optimizer = make_optimizer(model, s)
    views = LightlyViews(load_image_dataset(str(data), "train"), lightly_transform(p.image_size))
    loader = DataLoader(
        views,
        batch_size=p.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=p.lightly_workers,
        generator=torch.Generator().manual_seed(seed),
    )
    probe(model.backbone)
    total, step = p.epochs * len(loader), 0
    for epoch in range(p.epochs):
        for query, key in loader:
            set_lr(optimizer, cosine_lr(step, total, p.peak_lr))
            train_step("lightly", model, optimizer, query.to(device), key.to(device), s, device)
            step += 1
        if (epoch + 1) % p.eval_every == 0 or epoch + 1 == p.epochs:
            probe(model.backbone)
    return {}


def child(args) -> None:
    """Train one library with one seed in this process; write its curve and measurements as JSON."""
    from sslhub.data import load_image_dataset
    from sslhub.training import peak_memory_mb

    p = Protocol(**json.loads(args.protocol))
    data = Path(args.data)
    bank, heldout = (load_image_dataset(str(data), split) for split in ("train", "test"))
    probe = TimedProbe(KNNProbe(bank, heldout, torch.device("cpu"), p.image_size))
    started = time.perf_counter()
    extra = (sslhub_run if args.child == "sslhub" else lightly_run)(p, data, args.seed, probe)
    images = p.epochs * (p.train_images // p.batch_size) * p.batch_size
    result = {
        "library": args.child,
        "seed": args.seed,
        "curve": probe.curve,
        "train_seconds": probe.seconds,
        "images_per_second": images / max(probe.seconds, 1e-9),
        "process_seconds": time.perf_counter() - started,
        "peak_memory_mb": peak_memory_mb(torch.device("cpu")),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "threads": torch.get_num_threads(),
        **extra,
    }
    Path(args.result).write_text(json.dumps(result, indent=2))


# ----------------------------------------------------------------------------------------------------------
# Curves: where each library reaches the other's final accuracy, and its accuracy at the other's time
# ----------------------------------------------------------------------------------------------------------


def mean_curve(runs: list[dict]) -> list[tuple[float, float]]:
    """(seconds, accuracy) per evaluation, averaged over seeds (all runs evaluate at the same epochs)."""
    curves = [r["curve"] for r in runs]
    return [
        (
            sum(c[i]["train_seconds"] for c in curves) / len(curves),
            sum(c[i]["knn_top1"] for c in curves) / len(curves),
        )
        for i in range(min(len(c) for c in curves))
    ]


def time_to_reach(curve: list[tuple[float, float]], target: float) -> float | None:
    """First time the curve reaches `target`, linear between evaluations; None if it never does."""
    for (t0, a0), (t1, a1) in zip(curve, curve[1:], strict=False):
        if a1 >= target:
            return t1 if a1 == a0 else t0 + (t1 - t0) * max(target - a0, 0.0) / (a1 - a0)
    return curve[0][0] if curve and curve[0][1] >= target else None


def accuracy_at(curve: list[tuple[float, float]], seconds: float) -> float:
    """The curve's accuracy at `seconds`, linear between evaluations; its final accuracy after its end."""
    for (t0, a0), (t1, a1) in zip(curve, curve[1:], strict=False):
        if seconds <= t1:
            return a0 + (a1 - a0) * (seconds - t0) / max(t1 - t0, 1e-9)
    return curve[-1][1]


def permutation_p_value(a: list[float], b: list[float]) -> float:
    """Two-sided exact permutation test of a difference in means: the share of the ways to split the pooled
    values into groups of len(a) and len(b) whose mean difference is at least as large as the observed one."""
    pooled, observed = a + b, abs(statistics.fmean(a) - statistics.fmean(b))
    splits = list(itertools.combinations(range(len(pooled)), len(a)))
    extreme = 0
    for chosen in splits:
        first = [pooled[i] for i in chosen]
        second = [pooled[i] for i in range(len(pooled)) if i not in chosen]
        extreme += abs(statistics.fmean(first) - statistics.fmean(second)) >= observed - 1e-12
    return extreme / len(splits)


def equal_epochs(runs: list[dict]) -> dict:
    """sslhub's final kNN minus lightly's (the same epochs): difference of the seed means, the seeds' standard
    deviations, and the exact permutation p-value of the difference (None with one seed per library)."""
    finals = {lib: [r["curve"][-1]["knn_top1"] for r in runs if r["library"] == lib] for lib in LIBRARIES}
    a, b = finals["sslhub"], finals["lightly"]
    return {
        "difference": statistics.fmean(a) - statistics.fmean(b),
        "std": {lib: statistics.stdev(v) if len(v) > 1 else None for lib, v in finals.items()},
        "permutation_p": permutation_p_value(a, b) if len(a) > 1 and len(b) > 1 else None,
    }


def library_summary(runs: list[dict], library: str) -> dict:
    """One library's runs: mean final accuracy (and per seed, with their standard deviation), training
    seconds, img/s and memory."""
    rs = [r for r in runs if r["library"] == library]
    curve, finals = mean_curve(rs), [r["curve"][-1]["knn_top1"] for r in rs]
    return {
        "final_knn_top1": curve[-1][1],
        "final_knn_top1_per_seed": finals,
        "final_knn_top1_std": statistics.stdev(finals) if len(finals) > 1 else None,
        "random_init_knn_top1": curve[0][1],
        "train_seconds": curve[-1][0],
        "train_seconds_per_seed": [r["train_seconds"] for r in rs],
        "images_per_second": sum(r["images_per_second"] for r in rs) / len(rs),
        "peak_memory_mb": max(r["peak_memory_mb"] for r in rs),
    }


def summarize(runs: list[dict]) -> dict:
    """Per library: `library_summary`, and the cross comparisons with the other library."""
    curves = {lib: mean_curve([r for r in runs if r["library"] == lib]) for lib in LIBRARIES}
    summary = {}
    for lib in LIBRARIES:
        other = LIBRARIES[1 - LIBRARIES.index(lib)]
        other_final, other_seconds = curves[other][-1][1], curves[other][-1][0]
        summary[lib] = {
            **library_summary(runs, lib),
            "seconds_to_other_final": time_to_reach(curves[lib], other_final),
            "knn_top1_at_other_seconds": accuracy_at(curves[lib], other_seconds),
            "other_seconds_after_own_end": other_seconds > curves[lib][-1][0],
        }
    return summary


def plot(runs: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    colors = {"sslhub": "tab:blue", "lightly": "tab:orange"}
    for lib in LIBRARIES:
        lib_runs = [r for r in runs if r["library"] == lib]
        if not lib_runs:  # `--libraries` ran one
            continue
        for r in lib_runs:
            t = [point["train_seconds"] for point in r["curve"]]
            a = [100 * point["knn_top1"] for point in r["curve"]]
            axes.plot(t, a, color=colors[lib], alpha=0.35, linewidth=1)
        curve = mean_curve(lib_runs)
        axes.plot(
            [t for t, _ in curve],
            [100 * a for _, a in curve],
            color=colors[lib],
            linewidth=2.2,
            marker="o",
            markersize=3,
            label=f"{lib} (mean of {len(lib_runs)} seeds)",
        )
    axes.set_xlabel("training wall-clock seconds (kNN evaluations excluded)")
    axes.set_ylabel("kNN top-1 on held-out images (%)")
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def render(results: dict) -> str:
    p, m, s = results["protocol"], results["machine"], results["summary"]
    quick = results["mode"] == "quick"

    def seconds(value: float | None) -> str:
        return "never" if value is None else f"{value:.0f} s"

    runs_minutes = sum(r["process_seconds"] for r in results["runs"]) / 60  # reused runs included
    dates = [r.get("date", "?") for r in results["runs"]]
    lines = [
        f"# Time to accuracy: {' vs '.join(results.get('libraries', LIBRARIES))}, MoCo v2",
        "",
        "Generated by `bench/time_to_accuracy.py`; do not edit by hand. The curves: `time_to_accuracy.png`.",
        "",
        f"- Mode: **{results['mode']}**"
        + (" (toy sizes, to check the script; not a benchmark: run it without `--quick`)" if quick else ""),
        f"- Machine: {describe_machine(m)}",
        f"- Versions: torch {m['torch']}, timm {m['timm']}, lightly {m['lightly']}, Python {m['python']}; "
        f"date {m['date']}; the runs took {runs_minutes:.0f} min of this machine (their processes, kNN "
        f"evaluations included), ending from {min(dates)} to {max(dates)}",
        f"- Protocol: timm `{p['backbone']}` at {p['image_size']}x{p['image_size']}, projector "
        f"{p['projector_hidden']} -> 128, queue {p['queue_size']}, T {p['temperature']}, m {p['momentum']}, "
        f"SGD lr {p['lr']} x {p['batch_size']} / 256 (cosine), momentum 0.9, wd {p['weight_decay']}, batch "
        f"{p['batch_size']}, {p['epochs']} epochs of {p['train_images']} CIFAR-10 images, {p['precision']}; "
        f"kNN (k=200, T=0.1, bank: the training images) on {p['heldout_images']} held-out images every "
        f"{p['eval_every']} epochs; seeds {results['seeds']}.",
    ]
    described = {
        "sslhub": f"sslhub: `recipes/pretrain_moco.py --batched_augmentation true` (the images decoded once "
        f"into memory by {p['sslhub_workers']} worker, `cache_images` unset; that time counts as training), "
        f"channels_last, fused SGD, {_shuffle_bn(p['shuffle_bn_splits'])}.",
        "lightly": f"lightly {m['lightly']}: its MoCo v2 example (PIL `MoCoV2Transform` in {p['lightly_workers']} "
        "workers, NCHW, torch's default SGD, `batch_shuffle`, which in one process leaves the key encoder's "
        "BatchNorm the whole batch).",
    }
    lines.append(
        "- "
        + " ".join(described[lib] for lib in results.get("libraries", LIBRARIES))
        + " Queues start as random unit vectors. Training seconds exclude the kNN evaluations (one `KNNProbe`"
        " for every run)."
    )
    if len(s) == 1:  # `--libraries` ran one: its runs, no comparison
        (lib, one), n = next(iter(s.items())), len(results["runs"])
        std = "" if one["final_knn_top1_std"] is None else f" ± {100 * one['final_knn_top1_std']:.2f} (std)"
        lines += [
            "",
            f"Only {lib} ran (`--libraries {lib}`): no comparison with the other library.",
            "",
            f"| {lib} | mean of {n} seeds |",
            "|---|---|",
            f"| final kNN top-1 (per seed) | {_acc(one)}{std} |",
            f"| kNN top-1 at random init | {one['random_init_knn_top1']:.1%} |",
            f"| training seconds | {one['train_seconds']:.0f} |",
            f"| training images/s | {one['images_per_second']:.0f} |",
            f"| peak memory (RSS, MB) | {one['peak_memory_mb']:.0f} |",
        ]
        return "\n".join(lines + _step_lines(results)) + "\n"
    lines += [
        "",
        "| | sslhub | lightly |",
        "|---|---|---|",
        f"| final kNN top-1 (mean; per seed) | {_acc(s['sslhub'])} | {_acc(s['lightly'])} |",
        f"| kNN top-1 at random init | {s['sslhub']['random_init_knn_top1']:.1%} | "
        f"{s['lightly']['random_init_knn_top1']:.1%} |",
        f"| training seconds (mean) | {s['sslhub']['train_seconds']:.0f} | {s['lightly']['train_seconds']:.0f} |",
        f"| training images/s | {s['sslhub']['images_per_second']:.0f} | {s['lightly']['images_per_second']:.0f} |",
        f"| time to reach the other's final accuracy | {seconds(s['sslhub']['seconds_to_other_final'])} | "
        f"{seconds(s['lightly']['seconds_to_other_final'])} |",
        f"| kNN top-1 at the other's training seconds | {_at(s['sslhub'])} | {_at(s['lightly'])} |",
        f"| peak memory (RSS, MB) | {s['sslhub']['peak_memory_mb']:.0f} | {s['lightly']['peak_memory_mb']:.0f} |",
        "",
        "Times and accuracies between evaluations are interpolated linearly on the mean curve of the seeds.",
    ]
    e = results.get("equal_epochs")
    if e and e["permutation_p"] is not None:
        lines += [
            "",
            f"At equal epochs sslhub's final kNN is {100 * e['difference']:+.2f} points from lightly's (seed "
            f"standard deviations: sslhub {100 * e['std']['sslhub']:.2f}, lightly {100 * e['std']['lightly']:.2f}); "
            f"exact permutation test of the difference over the {len(results['seeds'])} + "
            f"{len(results['seeds'])} runs: p = {e['permutation_p']:.2f}.",
        ]
    return "\n".join(lines + _step_lines(results)) + "\n"


def _step_lines(results: dict) -> list[str]:
    step = results.get("sslhub_step_time_ms")
    if not step:
        return []
    parts = ", ".join(f"{k} {v:.1f}" for k, v in step.items() if k != "total")
    line = f"sslhub's step, ms per step (metrics.json `step_time_ms`, first seed): {parts}."
    if "evaluation" not in step:  # recorded before the kNN monitor was timed apart from logging
        line += (
            " Its logging part includes the kNN evaluations (a run recorded before they were timed apart)."
        )
    return ["", line]


def _shuffle_bn(splits: int) -> str:
    if splits == 1:
        return "no BatchNorm sub-batches in the key encoder (`shuffle_bn_splits=1`)"
    return (
        f"one-process shuffle-BN: the key encoder's BatchNorm over {splits} sub-batches of the shuffled batch"
    )


def _acc(summary: dict) -> str:
    seeds = ", ".join(f"{a:.1%}" for a in summary["final_knn_top1_per_seed"])
    return f"{summary['final_knn_top1']:.1%} ({seeds})"


def _at(summary: dict) -> str:
    note = " (after its own end)" if summary["other_seconds_after_own_end"] else ""
    return f"{summary['knn_top1_at_other_seconds']:.1%}{note}"


# ----------------------------------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="toy sizes (1-2 minutes)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--avx2", action="store_true", help="cap torch and oneDNN at AVX2 (an emulation)")
    parser.add_argument(
        "--libraries",
        nargs="+",
        choices=LIBRARIES,
        default=list(LIBRARIES),
        help="the libraries to run; with one, the report gives its curves and seed statistics only",
    )
    parser.add_argument("--out-dir", type=Path, default=HERE, help="where the results files go")
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="NAME=VALUE", help="change a Protocol field (e.g. epochs=20)"
    )
    parser.add_argument("--child", choices=LIBRARIES, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--protocol", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def protocol_of(args) -> Protocol:
    p = Protocol(**(QUICK if args.quick else {}))
    types = {f.name: f.type for f in dataclasses.fields(Protocol)}
    for item in args.set:
        name, _, value = item.partition("=")
        if name not in types:
            raise SystemExit(f"error: unknown protocol field {name!r}; known: {', '.join(types)}")
        setattr(p, name, {"int": int, "float": float}.get(types[name], str)(value))
    return p


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.child:
        child(args)
        return {}
    p = protocol_of(args)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        **(AVX2 if args.avx2 else {}),
    }
    os.environ.update(env)  # the machine description reads the kernel caps
    name = "quick" if args.quick else f"{p.train_images}-{p.heldout_images}"
    data = split_cifar10(
        HERE / ".cache" / f"cifar10_split_{name}",
        heldout=10_000,
        train_images=p.train_images,
        eval_images=p.heldout_images,
    )
    results = {
        "mode": "quick" if args.quick else "full",
        "machine": machine_info(torch.device("cpu")),
        "protocol": dataclasses.asdict(p),
        "seeds": args.seeds,
        "runs": [],
    }
    started = time.perf_counter()
    # Full runs are kept (per library, the protocol fields it reads, kernel caps, machine and seed) and reused:
    # a stopped benchmark continues, and a setting of one library does not rerun the other.
    quick_folder = Path(tempfile.mkdtemp(prefix="time_to_accuracy-quick-")) if args.quick else None
    libraries = results["libraries"] = [lib for lib in LIBRARIES if lib in args.libraries]
    for index, seed in enumerate(args.seeds):
        for library in libraries if index % 2 == 0 else libraries[::-1]:  # both see the same drift
            if quick_folder:  # toy runs are never reused
                folder = quick_folder
            else:
                key = run_key(p, library, args.avx2, machine_key())
                folder = HERE / ".cache" / "time_to_accuracy" / f"{name}-{key}"
                folder.mkdir(parents=True, exist_ok=True)
            result = folder / f"{library}-{seed}.json"
            if result.exists():
                print(f"[time to accuracy] {library}, seed {seed}: reused {result}", flush=True)
                results["runs"].append(json.loads(result.read_text()))
                continue
            print(f"[time to accuracy] {library}, seed {seed}", flush=True)
            command = [
                sys.executable, __file__, "--child", library, "--seed", str(seed),
                "--protocol", json.dumps(dataclasses.asdict(p)), "--data", str(data), "--result", str(result),
            ]  # fmt: skip
            process = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
            if process.returncode:
                result.unlink(missing_ok=True)
                raise SystemExit(f"{library} seed {seed} failed:\n{process.stderr[-5000:]}")
            results["runs"].append(json.loads(result.read_text()))
            run = results["runs"][-1]
            print(
                f"   {run['train_seconds']:.0f} s, {run['images_per_second']:.0f} img/s, "
                f"kNN {run['curve'][-1]['knn_top1']:.4f}",
                flush=True,
            )
    results["seconds"] = time.perf_counter() - started
    if len(libraries) == 2:
        results["summary"] = summarize(results["runs"])
        results["equal_epochs"] = equal_epochs(results["runs"])
    else:
        results["summary"] = {lib: library_summary(results["runs"], lib) for lib in libraries}
    first_sslhub = next((r for r in results["runs"] if r["library"] == "sslhub"), {})
    results["sslhub_step_time_ms"] = first_sslhub.get("step_time_ms")
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / "time_to_accuracy.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "TIME_TO_ACCURACY.md").write_text(render(results))
    title = f"MoCo v2, {p.backbone}, {p.epochs} epochs of {p.train_images} CIFAR-10 images, {p.precision}"
    plot(results["runs"], out / "time_to_accuracy.png", title + (" (quick mode)" if args.quick else ""))
    print(render(results))
    return results


if __name__ == "__main__":
    main()

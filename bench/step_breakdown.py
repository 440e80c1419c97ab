"""Where sslhub's MoCo v2 training step spends its time, and what each speed option buys (CPU or GPU).

    python bench/step_breakdown.py --quick       # toy sizes, to check the script (about a minute)
    python bench/step_breakdown.py               # the protocol's setting (a few minutes)

1. Step variants, in this process, interleaved: the training step (momentum update, forward, backward, SGD)
   with equal-settings shuffle-BN (`shuffle_bn_splits=1`), the preset's 8 BatchNorm sub-batches run as 8
   key-encoder forwards (sslhub before `split_batch_norm`) and in one forward (now), the last in NCHW
   instead of channels_last, and under `torch.compile` (compile time reported apart, steady state timed).
2. Views made ahead (`--prefetch`): the loop over uint8 batches with batched augmentation, the next views
   made in turn or ahead (a thread on CPU, a side stream on CUDA).
3. The recipe as users run it (`recipes/pretrain_moco.py`, CIFAR-10, batched augmentation): img/s and the
   per-part step times of its `metrics.json`: as shipped, with the images decoded every epoch
   (`--cache_images false`), with `--prefetch`, and in NCHW (`--channels_last false`).

Writes `bench/STEP_BREAKDOWN.md` and `bench/step_breakdown.json` (or `--out-dir`). Run it on a quiet machine
(load average well under 1). On a CPU shared with other processes, OpenMP's spin-waiting (libgomp's default)
makes each step several times slower, and whichever variant runs more threads looks faster (libgomp then
throttles its spinning): measured here under a load of 5, views made ahead looked 5-9x faster, and within
10% of views in turn with `OMP_WAIT_POLICY=PASSIVE`. The steps' CPU time on one thread, reported next to
the wall times, is the measure least moved by load.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from cifar10_split import split_cifar10  # noqa: E402
from common import (  # noqa: E402
    CIFAR_MEAN,
    CIFAR_STD,
    Setting,
    build_sslhub,
    describe_machine,
    machine_info,
    make_inputs,
    synchronize,
    train_step,
)

import sslhub.models.distributed as distributed  # noqa: E402


def protocol_setting(batch_size: int, queue_size: int, precision: str, device: torch.device) -> Setting:
    """The protocol's model: timm `test_resnet` at 32x32, projector 512 -> 128, fused SGD, channels_last."""
    return Setting(
        "test_resnet-32",
        "test_resnet",
        False,
        32,
        batch_size,
        queue_size=queue_size,
        lr=0.03,
        weight_decay=5e-4,
        precision=precision,
        channels_last=True,
        sgd="fused" if device.type in ("cpu", "cuda") else "default",
        projector_hidden=512,
    )


def setting(args) -> Setting:
    return protocol_setting(args.batch_size, args.queue_size, args.precision, args.device)


def measure(runs: dict, args, steps: int, cpu_time: bool = True) -> dict:
    """Interleaved repeats of `steps` calls of each run: wall milliseconds per call with the run's threads
    and, with `cpu_time`, the process CPU milliseconds per call on one thread (on a shared machine the
    wall time moves with the others' load, and so does the CPU time of several threads, which spin while
    waiting for each other; the CPU time of one thread is the steadiest measure of the work)."""

    def timed_repeats(clock) -> dict[str, list[float]]:
        times = {name: [] for name in runs}
        for repeat in range(args.repeats):
            for name in list(runs) if repeat % 2 == 0 else list(runs)[::-1]:
                synchronize(args.device)
                started = clock()
                for _ in range(steps):
                    runs[name]()
                synchronize(args.device)
                times[name].append(1e3 * (clock() - started) / steps)
        return times

    wall = timed_repeats(time.perf_counter)
    rows = {
        name: {
            "wall_ms_median": statistics.median(wall[name]),
            "wall_ms_min": min(wall[name]),
            "images_per_second": args.batch_size / statistics.median(wall[name]) * 1e3,
        }
        for name in runs
    }
    if cpu_time and args.device.type == "cpu":
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            cpu = timed_repeats(time.process_time)
        finally:
            torch.set_num_threads(threads)
        for name in runs:
            rows[name]["cpu_ms_1_thread"] = statistics.median(cpu[name])
    return rows


def step_variants(args) -> dict:
    """Equal-settings shuffle-BN, 8 sub-batches chunked / in one forward, in NCHW, and compiled."""
    s = setting(args)
    nchw = dataclasses.replace(s, channels_last=False)
    variants = {  # name: (setting, model, optimizer, BatchNorm sub-batches in one forward)
        "shuffle_bn_splits=1": (s, *build_sslhub(s, args.device, 1), True),
        "splits=8, 8 key forwards (before)": (s, *build_sslhub(s, args.device, 8), False),
        "splits=8, one forward (split_batch_norm)": (s, *build_sslhub(s, args.device, 8), True),
        "splits=8, one forward, NCHW (--channels_last false)": (
            nchw,
            *build_sslhub(nchw, args.device, 8),
            True,
        ),
    }
    if args.compile:
        compiled = build_sslhub(s, args.device, 8, compile=True)
        variants["splits=8, one forward, torch.compile"] = (s, *compiled, True)
    inputs = {False: make_inputs(nchw, args.device), True: make_inputs(s, args.device)}  # the same values
    splittable = distributed.can_split_batch_norm

    def run(setting_, model, optimizer, one_forward):
        query, key = inputs[setting_.channels_last]
        distributed.can_split_batch_norm = splittable if one_forward else (lambda module: False)
        try:
            train_step("sslhub", model, optimizer, query, key, setting_, args.device)
        finally:
            distributed.can_split_batch_norm = splittable

    runs = {name: (lambda v=v: run(*v)) for name, v in variants.items()}
    warmup = {}
    for name, call in runs.items():  # compiling happens here
        started = time.perf_counter()
        for _ in range(args.warmup):
            call()
        warmup[name] = time.perf_counter() - started
    rows = measure(runs, args, args.steps)
    for name in rows:
        rows[name]["warmup_seconds"] = warmup[name]
    print(f"[step] {json.dumps(rows, indent=1)}", flush=True)
    return rows


def views_ahead(args, s: Setting, splits: int = 8, compiled: bool = False) -> dict:
    """The loop over uint8 CPU batches (pinned for a GPU) of setting `s`: views made in turn vs ahead, the
    step as above (`args`: device, repeats, steps); with `compiled`, also in turn with the augmentation's
    pixel work compiled (`--compile true`'s views; its compile time is left out, in the warm-up call)."""
    from types import SimpleNamespace

    from sslhub.training import MicroBatch, TwoViews, ViewsAhead

    generator = torch.Generator().manual_seed(0)
    shape = (s.batch_size, 3, s.image_size, s.image_size)
    images = [torch.randint(0, 256, shape, generator=generator).to(torch.uint8) for _ in range(4)]
    if args.device.type == "cuda":
        images = [image.pin_memory() for image in images]
    settings = SimpleNamespace(batched_augmentation=True, channels_last=True, compile=False)
    views = TwoViews(settings, "v2", s.image_size, CIFAR_MEAN, CIFAR_STD, device=args.device)
    settings = SimpleNamespace(batched_augmentation=True, channels_last=True, compile=True)
    compiled_views = TwoViews(settings, "v2", s.image_size, CIFAR_MEAN, CIFAR_STD, device=args.device)
    accelerator = SimpleNamespace(device=args.device, num_processes=1, process_index=0)
    model, optimizer = build_sslhub(s, args.device, splits)

    def micro_batches():
        for index in range(args.steps):
            batch = {"pixel_values": images[index % len(images)]}
            yield MicroBatch(batch, 0, index, first=True, last=True, epoch_end=index == args.steps - 1)

    def loop(ahead: bool, views=views) -> None:
        for _, query, key in ViewsAhead(views, accelerator, 0, ahead=ahead)(micro_batches()):
            train_step("sslhub", model, optimizer, query, key, s, args.device)

    runs = {"views in turn": lambda: loop(False), "views ahead (--prefetch)": lambda: loop(True)}
    if compiled:
        runs["views in turn, augmentation compiled"] = lambda: loop(False, compiled_views)
    for call in runs.values():
        call()
    rows = measure(runs, SimpleNamespace(**{**vars(args), "batch_size": s.batch_size}), 1, cpu_time=False)
    for row in rows.values():  # one call is a loop of `steps` steps (an overlap shows in wall time only)
        for key in ("wall_ms_median", "wall_ms_min"):
            row[key] /= args.steps
        row["images_per_second"] = s.batch_size / row["wall_ms_median"] * 1e3
    print(f"[views ahead] {json.dumps(rows, indent=1)}", flush=True)
    return rows


def recipe_runs(args) -> dict:
    """`recipes/pretrain_moco.py` at the protocol's setting: img/s and `step_time_ms` as shipped, with the
    images decoded every epoch instead of once, and with prefetch."""
    name = "quick" if args.quick else "10000-10000"
    data = split_cifar10(
        HERE / ".cache" / f"cifar10_split_{name}",
        heldout=10_000,
        train_images=512 if args.quick else 10_000,
        eval_images=512 if args.quick else 10_000,
    )
    model = {
        "backbone": "test_resnet",
        "image_size": 32,
        "image_mean": list(CIFAR_MEAN),
        "image_std": list(CIFAR_STD),
        "queue_size": args.queue_size,
        "temperature": 0.2,
        "momentum": 0.99,
        "projector_hidden_size": 512,
    }
    variants = {
        "default (images decoded once into memory)": [],
        "--cache_images false (decoded every epoch)": ["--cache_images", "false"],
        "--prefetch true": ["--prefetch", "true"],
        "--channels_last false (NCHW)": ["--channels_last", "false"],
    }
    if not args.quick:  # compiling takes longer than the quick mode's whole run
        variants["--compile true (model and augmentation)"] = ["--compile", "true"]
    rows = {}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    for name, extra in variants.items():
        with tempfile.TemporaryDirectory() as output_dir:
            command = [
                sys.executable, str(ROOT / "recipes" / "pretrain_moco.py"), "--dataset", str(data),
                "--batch_size", str(args.batch_size), "--max_steps", str(args.recipe_steps),
                "--learning_rate", "0.06", "--weight_decay", "5e-4", "--batched_augmentation", "true",
                "--num_workers", "1", "--save_steps", str(10**9), "--log_steps", "20",
                "--mixed_precision", "no" if args.precision == "fp32" else args.precision,
                "--model", json.dumps(model), "--output_dir", output_dir, *extra,
            ]  # fmt: skip
            process = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
            if process.returncode:
                raise SystemExit(f"recipe run {name} failed:\n{process.stderr[-5000:]}")
            metrics = json.loads((Path(output_dir) / "metrics.json").read_text())
        rows[name] = {k: metrics[k] for k in ("images_per_second", "step_time_ms", "train_seconds")}
        print(f"[recipe] {name}: {rows[name]}", flush=True)
    return rows


def render(results: dict) -> str:
    m, s = results["machine"], results["settings"]
    lines = [
        "# sslhub's MoCo v2 step: where the time goes, what the options buy",
        "",
        "Generated by `bench/step_breakdown.py`; do not edit by hand.",
        "",
        f"- Mode: **{results['mode']}**"
        + (" (toy sizes, to check the script)" if results["mode"] == "quick" else ""),
        f"- Machine: {describe_machine(m)}; load average at the end {results['load_average_at_end']:.1f}",
        f"- Versions: torch {m['torch']}, timm {m['timm']}; date {m['date']}",
        f"- Setting: timm `test_resnet` 32x32, batch {s['batch_size']}, projector 512 -> 128, queue "
        f"{s['queue_size']}, {s['precision']}, channels_last, fused SGD; {s['repeats']} interleaved repeats of "
        f"{s['steps']} steps after {s['warmup']} warm-up steps. Wall times on a shared machine move with the "
        "others' load (see the script's docstring: OpenMP spin-waiting); the CPU time of the step on one thread "
        "(measured apart) moves least.",
        "",
        "## 1. The step (momentum update, forward, backward, SGD)",
        "",
        "| variant | wall ms/step (median) | wall ms/step (min) | img/s | CPU ms/step, 1 thread | warm-up s |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in results["step"].items():
        cpu = f"{row['cpu_ms_1_thread']:.1f}" if "cpu_ms_1_thread" in row else "-"
        lines.append(
            f"| {name} | {row['wall_ms_median']:.1f} | {row['wall_ms_min']:.1f} | {row['images_per_second']:.0f} | "
            f"{cpu} | {row['warmup_seconds']:.1f} |"
        )
    lines += [
        "",
        "## 2. Views made ahead (`--prefetch`), the loop over uint8 batches",
        "",
        "| variant | wall ms/step (median) | wall ms/step (min) | img/s |",
        "|---|---|---|---|",
    ]
    for name, row in results["views_ahead"].items():
        lines.append(
            f"| {name} | {row['wall_ms_median']:.1f} | {row['wall_ms_min']:.1f} | {row['images_per_second']:.0f} |"
        )
    if "recipe" in results:
        parts = list(next(iter(results["recipe"].values()))["step_time_ms"])
        lines += [
            "",
            f"## 3. The recipe, {s['recipe_steps']} steps on CIFAR-10 (`metrics.json`, ms per step)",
            "",
            "| variant | img/s | " + " | ".join(parts) + " |",
            "|---|---|" + "---|" * len(parts),
        ]
        for name, row in results["recipe"].items():
            times = " | ".join(f"{row['step_time_ms'][p]:.1f}" for p in parts)
            lines.append(f"| {name} | {row['images_per_second']:.0f} | {times} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="leave torch.compile out")
    parser.add_argument("--no-recipe", dest="recipe", action="store_false", help="leave the recipe runs out")
    parser.add_argument("--out-dir", type=Path, default=HERE)
    args = parser.parse_args(argv)
    args.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    args.batch_size, args.queue_size = (32, 256) if args.quick else (128, 1024)
    args.repeats, args.steps, args.warmup = (2, 2, 2) if args.quick else (7, 10, 3)
    args.recipe_steps = 8 if args.quick else 300
    results = {
        "mode": "quick" if args.quick else "full",
        "machine": machine_info(args.device),
        "settings": {
            k: getattr(args, k)
            for k in ("batch_size", "queue_size", "repeats", "steps", "warmup", "precision", "recipe_steps")
        },
    }
    results["step"] = step_variants(args)
    results["views_ahead"] = views_ahead(args, setting(args), compiled=not args.quick)
    if args.recipe:
        results["recipe"] = recipe_runs(args)
    results["load_average_at_end"] = os.getloadavg()[0]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "step_breakdown.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out_dir / "STEP_BREAKDOWN.md").write_text(render(results))
    print(render(results))
    return results


if __name__ == "__main__":
    main()

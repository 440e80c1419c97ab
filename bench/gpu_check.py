"""GPU readiness in one run (at most 10 minutes on one GPU): `bash bench/gpu_check.sh`.

1. The GPU's measured bf16 (and fp32/TF32) matrix-multiply rate, the denominator of MFU.
2. MoCo v2 training images/s, ResNet-50 224x224 bf16 + channels_last, sslhub vs lightly under equal
   settings (same weights and queue, `shuffle_bn_splits=1`), with MFU = step FLOPs x img/s / the bf16
   rate; sslhub's preset shuffle-BN (8 sub-batches, one forward) and `torch.compile` too, time permitting.
3. Host syncs in sslhub's step and batched augmentation (`torch.cuda.set_sync_debug_mode("warn")`).
4. Batched augmentation on the GPU (224x224 MoCo v2 views of uint8 batches), and the loop with the next
   views made ahead on a side stream (`--prefetch`) or in turn.
5. A 2-minute MoCo v2 run of `recipes/pretrain_moco.py` (ResNet-18 CIFAR stem, 32x32, batched
   augmentation, precision auto) with kNN before and after, on CIFAR-10 where the shared data is there,
   else the shipped sample.

Writes `bench/results_gpu.json` (and a copy into `$OUT` when set). `--device cpu --dry-run` runs every part
at toy sizes in seconds (the default tests do).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from types import SimpleNamespace

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import step_breakdown  # noqa: E402
from bench_moco import count_step_flops, step_throughput  # noqa: E402
from cifar10_split import CIFAR10  # noqa: E402
from common import (  # noqa: E402
    CIFAR_MEAN,
    CIFAR_STD,
    Setting,
    build_sslhub,
    machine_info,
    make_inputs,
    matmul_flops_per_second,
    synchronize,
    timed,
    train_step,
)


def matmul_rates(args) -> dict:
    n = 256 if args.dry_run else 8192
    rates = {"bf16": matmul_flops_per_second(args.device, torch.bfloat16, n=n, repeats=5)}
    if args.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        rates["tf32"] = matmul_flops_per_second(args.device, torch.float32, n=n, repeats=5)
        torch.backends.cuda.matmul.allow_tf32 = False
    rates["fp32"] = matmul_flops_per_second(args.device, torch.float32, n=n, repeats=5)
    print(f"[matmul] {', '.join(f'{k} {v / 1e12:.1f} TFLOP/s' for k, v in rates.items())}", flush=True)
    return {"n": n, "flops_per_second": rates}


# The dry run's model, for every part: a tiny timm ResNet, batches of 16 (8 BatchNorm sub-batches of 2).
DRY_RUN = Setting(
    "test_resnet-32", "test_resnet", False, 32, 16, queue_size=64, precision="bf16", channels_last=True
)


# The full run's models: ResNet-50 at 224 for the throughput, ResNet-18 with the CIFAR stem for the run.
SETTINGS = {
    "resnet50-224": Setting(
        "resnet50-224", "resnet50", False, 224, 128, queue_size=65536, precision="bf16", channels_last=True
    ),
    "resnet18-32": Setting(
        "resnet18-32", "resnet18", True, 32, 512, queue_size=4096, precision="bf16", channels_last=True
    ),
}


def setting(args, name: str) -> Setting:
    return DRY_RUN if args.dry_run else SETTINGS[name]


def throughput(args, results: dict) -> None:
    """Equal-settings img/s and MFU against lightly, then sslhub's own options (preset shuffle-BN, compile)."""
    import dataclasses
    import importlib.util

    s = setting(args, "resnet50-224")
    timing = SimpleNamespace(
        device=args.device, warmup=2 if args.dry_run else 5, repeats=3, steps=2 if args.dry_run else 10
    )
    peak = results["matmul"]["flops_per_second"]["bf16"]
    libraries = ("sslhub", "lightly") if importlib.util.find_spec("lightly") else ("sslhub",)
    per_image = {lib: count_step_flops(lib, s, args.device) / s.batch_size for lib in libraries}
    section = results["resnet50_224"] = {"setting": dataclasses.asdict(s), "flops_per_image": per_image}
    if "lightly" in libraries:
        row = step_throughput(timing, s, s)
        row["mfu_vs_measured_bf16_matmul"] = {
            lib: per_image[lib] * row[lib]["median"] / peak for lib in libraries
        }
        section["equal_settings"] = row
        print(
            f"[resnet50] sslhub {row['sslhub']['median']:.0f} img/s, lightly {row['lightly']['median']:.0f} "
            f"img/s, ratio {row['ratio']['median']:.2f}, MFU {row['mfu_vs_measured_bf16_matmul']['sslhub']:.1%}",
            flush=True,
        )
    else:
        section["equal_settings"] = "skipped: lightly is not installed (pip install -e '.[bench]')"
    # sslhub alone: equal settings, the preset's 8 BatchNorm sub-batches in one key forward, torch.compile.
    variants = {
        "sslhub, shuffle_bn_splits=1": {},
        "sslhub, shuffle_bn_splits=8 (preset)": {"shuffle_bn_splits": 8},
    }
    if args.compile:
        variants["sslhub, torch.compile"] = {"compile": True}
    for name, options in variants.items():
        if time.perf_counter() - args.started > args.budget_seconds * 0.45:
            section[name] = "skipped: time budget"
            continue
        row = sslhub_variant(args, s, timing, **options)
        row["mfu_vs_measured_bf16_matmul"] = per_image["sslhub"] * row["images_per_second"] / peak
        section[name] = row
        print(f"[resnet50] {name}: {row}", flush=True)


def sslhub_variant(args, s: Setting, timing, shuffle_bn_splits: int = 1, compile: bool = False) -> dict:
    """img/s of sslhub's step alone (best of the repeats), with the preset's shuffle-BN or compiled."""
    torch.manual_seed(0)
    model, optimizer = build_sslhub(s, args.device, shuffle_bn_splits, compile)
    x1, x2 = make_inputs(s, args.device)

    def step():
        train_step("sslhub", model, optimizer, x1, x2, s, args.device)

    warmup = timed(step, args.device, timing.warmup)
    seconds = min(timed(step, args.device, timing.steps) for _ in range(timing.repeats))
    return {"images_per_second": s.batch_size * timing.steps / seconds, "warmup_seconds": warmup}


def host_syncs(args, results: dict) -> None:
    """Synchronizing CUDA calls in sslhub's step and in the batched augmentation (CUDA only)."""
    from sslhub.data import BatchedTwoViewAugmentation

    s = setting(args, "resnet50-224")
    ours, optimizer = build_sslhub(s, args.device, 8 if s.batch_size >= 16 else 2)  # the preset's shuffle-BN
    x1, x2 = make_inputs(s, args.device)
    augment = BatchedTwoViewAugmentation("v2", s.image_size, CIFAR_MEAN, CIFAR_STD)
    size = s.image_size + 32
    images = torch.randint(0, 256, (s.batch_size, 3, size, size), device=args.device).to(torch.uint8)
    generator = torch.Generator(args.device).manual_seed(0)
    for _ in range(2):  # warm-up: first calls may sync (allocations, cuDNN's choices)
        augment(images, generator)
        train_step("sslhub", ours, optimizer, x1, x2, s, args.device)
    synchronize(args.device)
    found = {}
    for part in ("augmentation", "step"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if args.device.type == "cuda":
                torch.cuda.set_sync_debug_mode("warn")
            try:
                if part == "augmentation":
                    augment(images, generator)
                else:  # momentum update, shuffle-BN, loss, enqueue, backward, SGD
                    train_step("sslhub", ours, optimizer, x1, x2, s, args.device)
            finally:
                if args.device.type == "cuda":
                    torch.cuda.set_sync_debug_mode("default")
        messages = [str(w.message) for w in caught if "synchroniz" in str(w.message).lower()]
        found[part] = {"count": len(messages), "first": messages[:3]}
    results["host_syncs"] = {"checked": args.device.type == "cuda", **found}
    print(f"[host syncs] {results['host_syncs']}", flush=True)


def augmentation(args, results: dict) -> None:
    """Batched MoCo v2 views on the device, and the training loop with views made ahead or in turn."""
    from sslhub.data import BatchedTwoViewAugmentation

    size, batch = (32, 8) if args.dry_run else (224, 256)
    augment = BatchedTwoViewAugmentation("v2", size, CIFAR_MEAN, CIFAR_STD)
    images = torch.randint(0, 256, (batch, 3, size + 32, size + 32), device=args.device).to(torch.uint8)
    generator = torch.Generator(args.device).manual_seed(0)
    calls = 2 if args.dry_run else 20
    timed(lambda: augment(images, generator), args.device, 2)
    seconds = timed(lambda: augment(images, generator), args.device, calls)
    results["augmentation"] = {
        "image_size": size,
        "batch_size": batch,
        "image_pairs_per_second": batch * calls / seconds,
    }
    if not args.dry_run:  # the pixel work compiled (`--compile true`): fused kernels instead of dozens
        compiled = BatchedTwoViewAugmentation("v2", size, CIFAR_MEAN, CIFAR_STD, compile=True)
        started = time.perf_counter()
        timed(lambda: compiled(images, generator), args.device, 2)
        results["augmentation"]["compile_seconds"] = time.perf_counter() - started
        seconds = timed(lambda: compiled(images, generator), args.device, calls)
        results["augmentation"]["compiled_image_pairs_per_second"] = batch * calls / seconds
    print(f"[augmentation] {results['augmentation']}", flush=True)

    # The loop at the 2-minute run's setting, a small model, where the views cost most (preset shuffle-BN).
    loop = SimpleNamespace(device=args.device, repeats=3, steps=3 if args.dry_run else 50)
    rows = step_breakdown.views_ahead(loop, setting(args, "resnet18-32"), compiled=not args.dry_run)
    results["views_ahead"] = {"setting": setting(args, "resnet18-32").label, **rows}


def moco_run(args, results: dict) -> None:
    """A short MoCo v2 run of the recipe with kNN before and after; its length fits the time left."""
    s = setting(args, "resnet18-32")
    data = "sample"
    if CIFAR10.exists() and not args.dry_run:
        from cifar10_split import split_cifar10

        data = str(split_cifar10(HERE / ".cache" / "cifar10_split"))  # 40,000 training / 10,000 held-out
    rate = results.get("views_ahead", {}).get("views in turn", {}).get("images_per_second", 0.0)
    seconds = (
        5
        if args.dry_run
        else min(120.0, max(30.0, args.budget_seconds - (time.perf_counter() - args.started) - 90))
    )
    steps = 3 if args.dry_run else max(20, int(seconds * rate / s.batch_size))
    model = {
        "backbone": s.backbone,
        "small_input_stem": s.small_input_stem,
        "image_size": 32,
        "image_mean": list(CIFAR_MEAN),
        "image_std": list(CIFAR_STD),
        "queue_size": s.queue_size,
        "temperature": 0.2,
        "momentum": 0.99,
    }
    with tempfile.TemporaryDirectory() as output_dir:
        command = [
            sys.executable, str(ROOT / "recipes" / "pretrain_moco.py"), "--dataset", data,
            "--batch_size", str(s.batch_size), "--max_steps", str(steps), "--learning_rate", "0.06",
            "--weight_decay", "5e-4", "--batched_augmentation", "true", "--num_workers", str(args.workers),
            "--knn_steps", str(10**9), "--knn_bank_size", "10000", "--save_steps", str(10**9), "--log_steps", "20",
            "--model", json.dumps(model), "--output_dir", output_dir,
        ]  # fmt: skip
        if args.dry_run:
            command += ["--split", "train[:64]", "--knn_eval_split", "test[:32]", "--knn_bank_size", "64"]
        command += ["--num_workers", "0"]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
        if args.device.type == "cpu":
            env["ACCELERATE_USE_CPU"] = "1"
        started = time.perf_counter()
        process = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        if process.returncode:
            raise RuntimeError(f"the recipe failed:\n{process.stderr[-4000:]}")
        metrics = json.loads((Path(output_dir) / "metrics.json").read_text())
    keep = ("knn_top1_random_init", "knn_top1", "steps", "epochs", "train_seconds", "images_per_second")
    results["moco_run"] = {
        "dataset": data if data == "sample" else "CIFAR-10 (bench/cifar10_split.py)",
        "setting": s.label,
        "wall_seconds": time.perf_counter() - started,
        **{k: metrics[k] for k in keep if k in metrics},
        "step_time_ms": metrics.get("step_time_ms"),
        "mixed_precision": metrics.get("mixed_precision"),
    }
    print(f"[moco run] {results['moco_run']}", flush=True)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dry-run", action="store_true", help="toy sizes: checks every part in seconds")
    parser.add_argument(
        "--no-compile", dest="compile", action="store_false", help="(a dry run never compiles)"
    )
    parser.add_argument("--budget-seconds", type=float, default=540.0, help="the whole check's time budget")
    parser.add_argument(
        "--workers", type=int, default=min(8, os.cpu_count() or 1), help="recipe decoding workers"
    )
    parser.add_argument("--out", type=Path, default=HERE / "results_gpu.json")
    args = parser.parse_args(argv)
    args.device = torch.device(args.device)
    args.compile = args.compile and not args.dry_run  # compiling alone takes a minute on a CPU
    args.started = time.perf_counter()
    if args.device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device here; use --device cpu --dry-run to check the script")
    results = {
        "mode": "dry-run" if args.dry_run else "full",
        "machine": machine_info(args.device),
        "cifar10": str(CIFAR10) if CIFAR10.exists() else "not here: the 2-minute run trains on the sample",
        "errors": {},
    }
    parts = [("matmul", lambda: results.update(matmul=matmul_rates(args)))]
    parts += [(name, lambda f=f: f(args, results)) for name, f in (
        ("throughput", throughput), ("host_syncs", host_syncs), ("augmentation", augmentation), ("moco_run", moco_run)
    )]  # fmt: skip
    for name, run in parts:  # one part failing leaves the others' numbers
        try:
            run()
        except Exception:  # noqa: BLE001
            results["errors"][name] = traceback.format_exc()[-3000:]
            print(f"[{name}] FAILED\n{results['errors'][name]}", flush=True)
    results["seconds"] = time.perf_counter() - args.started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    if os.environ.get("OUT"):
        shutil.copy(args.out, Path(os.environ["OUT"]) / args.out.name)
    print(f"wrote {args.out} in {results['seconds']:.0f} s; {len(results['errors'])} parts failed")
    return results


if __name__ == "__main__":
    main()

"""MoCo v2 in sslhub vs lightly: training-step speed and memory, hardware efficiency, inference and load
time, the data pipeline, and kNN accuracy at equal steps.

    python bench/bench_moco.py --quick                      # toy sizes, 1-2 minutes on 2 CPU cores
    python bench/bench_moco.py                              # the full benchmark (see bench/RESULTS.md)
    python bench/bench_moco.py --only throughput,flops      # a subset
    python bench/bench_moco.py --device cuda                # on a GPU: adds ResNet-50 224x224 bf16

Writes `bench/results.json` (or `--out`); `bench/run_all.py` also renders `bench/RESULTS.md` from it.
Step timings use pre-made tensors, exclude warm-up steps and interleave the two libraries (alternating
which goes first) so that both see the same machine drift; ratios are sslhub / lightly per repeat.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from cifar10_split import CIFAR10
from common import (  # noqa: E402
    CIFAR_MEAN,
    CIFAR_STD,
    KNNProbe,
    LightlyViews,
    Setting,
    build_one,
    build_pair,
    lightly_transform,
    machine_info,
    make_inputs,
    make_optimizer,
    matmul_flops_per_second,
    spread,
    sslhub_config,
    synchronize,
    timed,
    train_step,
)

from sslhub.training import peak_memory_mb

LIBRARIES = ("sslhub", "lightly")
MEASUREMENTS = ("components", "throughput", "memory", "flops", "inference", "data", "knn")
CIFAR = str(CIFAR10)  # ../shared/datasets/cifar10/train.parquet


def settings_for(args) -> list[Setting]:
    """The model/input settings: ResNet-18 CIFAR stem at 32x32 and a ResNet-50 at 64x64 (224x224 on GPU)."""
    quick = args.quick
    r18 = Setting("resnet18-32", "resnet18", True, 32, 16 if quick else 128)
    r50 = Setting("resnet50-64", "resnet50", False, 64, 8 if quick else 128)
    out = [r18, r50]
    if args.device.type == "cuda":
        out.append(Setting("resnet50-224", "resnet50", False, 224, 32 if quick else 128))
    return out


def numerics_for(setting: Setting, args) -> list[tuple[str, dict]]:
    """Precision variants, each applied to both libraries (quick mode: fp32 and bf16 + channels_last)."""
    if setting.image_size >= 224 and args.device.type == "cuda":
        return [("bf16 + channels_last", dict(precision="bf16", channels_last=True))]
    variants = [
        ("fp32", dict(precision="fp32", channels_last=False)),
        ("fp32 + channels_last", dict(precision="fp32", channels_last=True)),
        ("bf16 + channels_last", dict(precision="bf16", channels_last=True)),
    ]
    return [variants[0], variants[2]] if args.quick else variants


# ----------------------------------------------------------------------------------------------------------
# (1) training-step throughput, (2) hardware efficiency
# ----------------------------------------------------------------------------------------------------------


def step_throughput(args, ours_setting: Setting, theirs_setting: Setting, compile_ours: bool = False) -> dict:
    """images/s of one MoCo step of each library, interleaved over repeats; sslhub/lightly ratio per repeat."""
    device = args.device
    if ours_setting == theirs_setting:
        ours, theirs = build_pair(ours_setting, device)
    else:
        ours, theirs = build_one("sslhub", ours_setting, device), build_one("lightly", theirs_setting, device)
    if compile_ours:
        ours = torch.compile(ours)
    runs = {
        "sslhub": (
            ours,
            make_optimizer(ours, ours_setting),
            *make_inputs(ours_setting, device),
            ours_setting,
        ),
        "lightly": (
            theirs,
            make_optimizer(theirs, theirs_setting),
            *make_inputs(theirs_setting, device),
            theirs_setting,
        ),
    }
    warmup_seconds = {}
    for library, (model, optimizer, x1, x2, s) in runs.items():
        warmup_seconds[library] = timed(
            lambda lib=library, m=model, o=optimizer, a=x1, b=x2, s=s: train_step(lib, m, o, a, b, s, device),
            device,
            args.warmup,
        )
    rates: dict[str, list[float]] = {library: [] for library in LIBRARIES}
    for repeat in range(args.repeats):
        for library in LIBRARIES if repeat % 2 == 0 else LIBRARIES[::-1]:
            model, optimizer, x1, x2, s = runs[library]
            seconds = timed(
                lambda lib=library, m=model, o=optimizer, a=x1, b=x2, s=s: train_step(
                    lib, m, o, a, b, s, device
                ),
                device,
                args.steps,
            )
            rates[library].append(s.batch_size * args.steps / seconds)
    ratios = [a / b for a, b in zip(rates["sslhub"], rates["lightly"], strict=True)]
    return {
        "sslhub": spread(rates["sslhub"]),
        "lightly": spread(rates["lightly"]),
        "ratio": spread(ratios),
        "warmup_seconds": warmup_seconds,
    }


def run_components(args, results: dict) -> None:
    """Milliseconds of the MoCo machinery around the backbone (best of many calls): the momentum update,
    loss + enqueue (forward and backward) and the shuffle, and the SGD step of each implementation."""
    import torch.nn.functional as F
    from lightly.models.utils import batch_shuffle, batch_unshuffle, update_momentum

    from sslhub.models.momentum import enqueue, momentum_update

    device = args.device
    s = settings_for(args)[0]
    ours, theirs = build_pair(s, device)
    generator = torch.Generator().manual_seed(0)
    raw_query = torch.randn(s.batch_size, 128, generator=generator).to(device).requires_grad_()
    key = F.normalize(torch.randn(s.batch_size, 128, generator=generator), dim=1).to(device)
    x, _ = make_inputs(s, device)

    def best_ms(fn, n: int = 20) -> float:
        return 1e3 * min(timed(fn, device) for _ in range(n))

    def pair_ms(ours_fn, lightly_fn, n: int = 30) -> tuple[float, float]:
        # Interleaved calls, best of n each: the minimum is what load on a shared machine disturbs least.
        times = ([], [])
        for _ in range(n):
            times[0].append(timed(ours_fn, device))
            times[1].append(timed(lightly_fn, device))
        return 1e3 * min(times[0]), 1e3 * min(times[1])

    def ours_loss():
        loss, _ = ours._contrast(F.normalize(raw_query, dim=1), key)
        enqueue(ours.queue, ours.queue_ptr, key)
        loss.backward()

    def lightly_momentum():
        update_momentum(theirs.backbone, theirs.backbone_momentum, m=s.momentum)
        update_momentum(theirs.projection_head, theirs.projection_head_momentum, m=s.momentum)

    rows = {
        "momentum update": pair_ms(
            lambda: momentum_update(ours.key_encoder, ours.query_encoder, s.momentum), lightly_momentum
        ),
        "loss + enqueue (fwd + bwd)": pair_ms(ours_loss, lambda: theirs.criterion(raw_query, key).backward()),
        # sslhub's shuffle-BN is the identity in one process; lightly permutes the batch anyway.
        "batch shuffle + unshuffle": (0.0, best_ms(lambda: batch_unshuffle(*batch_shuffle(x)))),
    }
    params = [p for p in ours.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p)
    sgd_ms = {}
    for implementation in ("default", "foreach", "fused"):
        optimizer = make_optimizer(ours, dataclasses.replace(s, sgd=implementation))
        optimizer.step()
        sgd_ms[implementation] = best_ms(optimizer.step, 5)
    results["components"] = {
        "setting": s.label,
        "parameters": sum(p.numel() for p in params),
        "ms": {name: {"sslhub": a, "lightly": b} for name, (a, b) in rows.items()},
        "sgd_step_ms": sgd_ms,
    }
    print(f"[components] {results['components']}", flush=True)


def count_step_flops(library: str, s: Setting, device: torch.device) -> int:
    """FLOPs of one training step (forward of both encoders + backward), by `torch.utils.flop_counter`."""
    from torch.utils.flop_counter import FlopCounterMode

    s = dataclasses.replace(s, precision="fp32", channels_last=False)
    model = build_one(library, s, device)
    optimizer = make_optimizer(model, s)
    x1, x2 = make_inputs(s, device)
    with FlopCounterMode(display=False) as counter:
        train_step(library, model, optimizer, x1, x2, s, device)
    return counter.get_total_flops()


def run_throughput(args, results: dict) -> None:
    rows = []
    flops_per_image = {}
    for base in settings_for(args):
        if "flops" in args.only:
            flops_per_image[base.name] = {
                lib: count_step_flops(lib, base, args.device) / base.batch_size for lib in LIBRARIES
            }
            results["flops_per_image"] = flops_per_image
        variants = [(label, dataclasses.replace(base, **kw), None) for label, kw in numerics_for(base, args)]
        if args.sgd != "default":
            variants = [
                (f"{label} + {args.sgd} SGD", dataclasses.replace(s, sgd=args.sgd), t)
                for label, s, t in variants
            ]
        if base.name == "resnet18-32":
            # Not equal settings: sslhub's recipe choices (channels_last; fused SGD as proposed for
            # create_optimizer) vs lightly's example (NCHW, torch's default SGD), both fp32.
            variants.append(
                (
                    "as shipped: sslhub channels_last + fused SGD vs lightly example (fp32)",
                    dataclasses.replace(base, channels_last=True, sgd="fused"),
                    dataclasses.replace(base, channels_last=False),
                )
            )
        for label, ours_setting, theirs_setting in variants:
            print(f"[throughput] {base.name}: {label}", flush=True)
            row = step_throughput(args, ours_setting, theirs_setting or ours_setting)
            row.update(setting=base.name, label=ours_setting.label, numerics=label)
            row["config"] = dataclasses.asdict(ours_setting)
            rows.append(row)
            print(f"   ratio {row['ratio']}  sslhub {row['sslhub']['median']:.1f} img/s", flush=True)
        if args.compile:
            s = dataclasses.replace(base, precision="bf16", channels_last=True)
            print(f"[throughput] {base.name}: sslhub torch.compile vs lightly eager", flush=True)
            row = step_throughput(args, s, s, compile_ours=True)
            row.update(
                setting=base.name, label=s.label, numerics="bf16 + channels_last, sslhub torch.compile"
            )
            rows.append(row)
    results["throughput"] = rows
    if flops_per_image:
        rates = results["matmul_flops_per_second"]
        for row in rows:
            per_image = flops_per_image[row["setting"]]
            peak = rates["bf16" if row["config"]["precision"] == "bf16" else "fp32"]
            row["efficiency"] = {lib: per_image[lib] * row[lib]["median"] / peak for lib in LIBRARIES}
            row["tflops"] = {lib: per_image[lib] * row[lib]["median"] / 1e12 for lib in LIBRARIES}


# ----------------------------------------------------------------------------------------------------------
# (1) peak memory, one subprocess per library and setting
# ----------------------------------------------------------------------------------------------------------


def memory_child(args) -> None:
    """Run a few steps of one library in this fresh process and print its peak memory as JSON."""
    s = Setting(**json.loads(args.memory_child))
    device = args.device
    baseline = peak_memory_mb(device)
    model = build_one(args.library, s, device)
    optimizer = make_optimizer(model, s)
    x1, x2 = make_inputs(s, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(3):
        train_step(args.library, model, optimizer, x1, x2, s, device)
    synchronize(device)
    peak = peak_memory_mb(device)  # VmHWM: ru_maxrss would count the parent's memory at fork time
    out = {"baseline_rss_mb": baseline, "peak_rss_mb": peak, "step_rss_mb": peak - baseline}
    if device.type == "cuda":
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    print("MEMORY " + json.dumps(out))


def run_memory(args, results: dict) -> None:
    rows = []
    for base in settings_for(args):
        variants = numerics_for(base, args)
        for label, kw in variants:
            s = dataclasses.replace(base, **kw)
            row = {"setting": base.name, "label": s.label, "numerics": label}
            for library in LIBRARIES:
                command = [
                    sys.executable,
                    __file__,
                    "--memory-child",
                    json.dumps(dataclasses.asdict(s)),
                    "--library",
                    library,
                    "--device",
                    str(args.device),
                    "--threads",
                    str(args.threads),
                ]
                output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
                row[library] = json.loads(output.split("MEMORY ", 1)[1])
            key = "cuda_peak_mb" if args.device.type == "cuda" else "peak_rss_mb"
            row["ratio"] = row["sslhub"][key] / row["lightly"][key]
            print(
                f"[memory] {s.label}: sslhub {row['sslhub'][key]:.0f} MB, lightly {row['lightly'][key]:.0f} MB"
            )
            rows.append(row)
    results["memory"] = rows


# ----------------------------------------------------------------------------------------------------------
# (3) inference: MoCoModel vs the bare timm backbone, from_pretrained vs timm + load_state_dict
# ----------------------------------------------------------------------------------------------------------


def run_inference(args, results: dict) -> None:
    import timm
    from safetensors.torch import load_file, save_file

    from sslhub import MoCoModel
    from sslhub.models.backbones import create_backbone

    device = args.device
    rows, load_rows = [], []
    for base in settings_for(args):
        variants = numerics_for(base, args)
        for label, kw in [v for v in variants if v[0] != "fp32 + channels_last"]:
            s = dataclasses.replace(base, **kw)
            torch.manual_seed(0)
            encoder = MoCoModel(sslhub_config(s)).eval()
            backbone = create_backbone(s.backbone, small_input_stem=s.small_input_stem).eval()
            backbone.load_state_dict(encoder.backbone.state_dict())
            models = {"sslhub": encoder.to(device), "timm": backbone.to(device)}
            if s.channels_last:
                models = {k: m.to(memory_format=torch.channels_last) for k, m in models.items()}
            x, _ = make_inputs(s, device)

            def embed(model, x=x, s=s):
                with (
                    torch.no_grad(),
                    torch.autocast(device.type, torch.bfloat16, enabled=s.precision == "bf16"),
                ):
                    model(x)

            for model in models.values():
                timed(lambda m=model: embed(m), device, args.warmup)
            rates = {k: [] for k in models}
            for repeat in range(args.repeats):
                for name in list(models) if repeat % 2 == 0 else list(models)[::-1]:
                    seconds = timed(lambda m=models[name]: embed(m), device, args.steps)
                    rates[name].append(s.batch_size * args.steps / seconds)
            ratios = [a / b for a, b in zip(rates["sslhub"], rates["timm"], strict=True)]
            rows.append(
                {
                    "setting": base.name,
                    "label": s.label,
                    "numerics": label,
                    "sslhub": spread(rates["sslhub"]),
                    "timm": spread(rates["timm"]),
                    "ratio": spread(ratios),
                }
            )
            print(f"[inference] {s.label}: ratio {rows[-1]['ratio']}", flush=True)

        # Load time of the saved inference model vs timm.create_model + load_state_dict of the same weights.
        with tempfile.TemporaryDirectory() as folder:
            torch.manual_seed(0)
            MoCoModel(sslhub_config(base)).save_pretrained(folder)
            stripped = os.path.join(folder, "backbone.safetensors")
            save_file(MoCoModel.from_pretrained(folder).backbone.state_dict(), stripped)

            def load_timm(base=base, stripped=stripped):
                if base.small_input_stem:  # the CIFAR stem is not a timm name: same seam as sslhub's
                    model = create_backbone(base.backbone, small_input_stem=True)
                else:
                    model = timm.create_model(base.backbone, num_classes=0)
                model.load_state_dict(load_file(stripped))

            loaders = {"sslhub": lambda f=folder: MoCoModel.from_pretrained(f), "timm": load_timm}
            times = {k: [] for k in loaders}
            for repeat in range(args.repeats + 1):
                for name in list(loaders) if repeat % 2 == 0 else list(loaders)[::-1]:
                    start = time.perf_counter()
                    loaders[name]()
                    if repeat:  # the first round warms file caches and lazy imports
                        times[name].append(time.perf_counter() - start)
            ratios = [a / b for a, b in zip(times["sslhub"], times["timm"], strict=True)]
            load_rows.append(
                {
                    "setting": base.name,
                    "backbone": base.backbone,
                    "sslhub_seconds": spread(times["sslhub"]),
                    "timm_seconds": spread(times["timm"]),
                    "ratio": spread(ratios),
                }
            )
            print(f"[load] {base.backbone}: time ratio {load_rows[-1]['ratio']}", flush=True)
    results["inference"] = rows
    results["load"] = load_rows


# ----------------------------------------------------------------------------------------------------------
# (4) the data pipeline: two-view augmentation per worker vs what the training step consumes
# ----------------------------------------------------------------------------------------------------------


def run_data(args, results: dict) -> None:
    from torch.utils.data import DataLoader

    from sslhub.data import TwoViewDataset, collate, load_image_dataset, two_view_transform

    images = 256 if args.quick else 4096
    dataset = load_image_dataset(CIFAR, "train").select(range(images))
    ours = TwoViewDataset(dataset, two_view_transform("v2", 32, CIFAR_MEAN, CIFAR_STD))
    # The same augmentation as sslhub's v2 preset at 32x32 (blur is left out below 64 pixels).
    theirs = LightlyViews(dataset, lightly_transform(32))
    loaders = {
        "sslhub": DataLoader(ours, batch_size=128, num_workers=0, collate_fn=collate),
        "lightly": DataLoader(theirs, batch_size=128, num_workers=0),
    }
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a DataLoader worker runs one thread
    rates = {k: [] for k in loaders}
    try:
        for repeat in range(max(2, args.repeats // 2)):
            for name in list(loaders) if repeat % 2 == 0 else list(loaders)[::-1]:
                start = time.perf_counter()
                for _ in loaders[name]:
                    pass
                rates[name].append(images / (time.perf_counter() - start))
    finally:
        torch.set_num_threads(threads)
    ratios = [a / b for a, b in zip(rates["sslhub"], rates["lightly"], strict=True)]
    batched = batched_augmentation_rates(dataset, max(2, args.repeats // 2))
    row = {
        "images": images,
        "sslhub": spread(rates["sslhub"]),
        "lightly": spread(rates["lightly"]),
        "ratio": spread(ratios),
        "sslhub_batched": spread(batched),
        "batched_ratio": spread([a / b for a, b in zip(batched, rates["lightly"], strict=False)]),
    }
    consumption = {
        r["numerics"]: r["sslhub"]["median"]
        for r in results.get("throughput", [])
        if r["setting"] == "resnet18-32"
        and "compile" not in r["numerics"]
        and "defaults" not in r["numerics"]
    }
    row["step_consumes"] = consumption
    row["workers_needed"] = {k: v / row["sslhub"]["median"] for k, v in consumption.items()}
    results["data"] = row
    print(
        f"[data] per worker: sslhub {row['sslhub']['median']:.0f} img/s, ratio {row['ratio']}; "
        f"batched on one thread {row['sslhub_batched']['median']:.0f} img/s",
        flush=True,
    )


def batched_augmentation_rates(dataset, repeats: int) -> list[float]:
    """Images/s of `--batched_augmentation` on one thread: uint8 decoding (the worker's part) plus the two
    views made for the whole batch (the training process's part), per image pair."""
    from torch.utils.data import DataLoader

    from sslhub.data import BatchedTwoViewAugmentation, UInt8ImageDataset, collate

    augment = BatchedTwoViewAugmentation("v2", 32, CIFAR_MEAN, CIFAR_STD)
    loader = DataLoader(UInt8ImageDataset(dataset, 32), batch_size=128, num_workers=0, collate_fn=collate)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rates = []
    try:
        for repeat in range(repeats):
            generator = torch.Generator().manual_seed(repeat)
            start = time.perf_counter()
            for batch in loader:
                augment(batch["pixel_values"], generator)
            rates.append(len(dataset) / (time.perf_counter() - start))
    finally:
        torch.set_num_threads(threads)
    return rates


# ----------------------------------------------------------------------------------------------------------
# (5) kNN accuracy at equal steps, same seed, same batches
# ----------------------------------------------------------------------------------------------------------


def run_knn(args, results: dict) -> None:
    from torch.utils.data import DataLoader

    from sslhub.data import TwoViewDataset, collate, load_image_dataset, two_view_transform

    device = args.device
    steps, batch, bank_size, test_size = (
        (5, 32, 1000, 500) if args.quick else (args.knn_steps, 128, 10000, 2000)
    )
    s = Setting(
        "resnet18-32",
        batch_size=batch,
        precision="bf16" if device.type == "cpu" or torch.cuda.is_bf16_supported() else "fp32",
        channels_last=True,
    )
    # A held-out split of CIFAR-10 train by a fixed permutation: test | kNN bank | training images.
    full = load_image_dataset(CIFAR, "train")
    order = torch.randperm(len(full), generator=torch.Generator().manual_seed(0)).tolist()
    test = full.select(order[:test_size])
    bank = full.select(order[test_size : test_size + bank_size])
    train = full.select(order[test_size:])
    views = TwoViewDataset(train, two_view_transform("v2", 32, CIFAR_MEAN, CIFAR_STD), seed=0)
    loader = DataLoader(
        views,
        batch_size=batch,
        shuffle=True,
        drop_last=True,
        num_workers=0,
        collate_fn=collate,
        generator=torch.Generator().manual_seed(0),
    )
    ours, theirs = build_pair(s, device)
    optimizers = {"sslhub": make_optimizer(ours, s), "lightly": make_optimizer(theirs, s)}
    models = {"sslhub": ours, "lightly": theirs}
    encoders = {"sslhub": ours.query_encoder, "lightly": theirs.backbone}
    accuracy = KNNProbe(bank, test, device)

    initial = accuracy(encoders["sslhub"])
    losses = {k: [] for k in models}
    seconds = dict.fromkeys(models, 0.0)
    step = 0
    while step < steps:
        for batch_ in loader:
            x1, x2 = (batch_[k].to(device) for k in ("query_pixel_values", "key_pixel_values"))
            x1, x2 = (x.contiguous(memory_format=torch.channels_last) for x in (x1, x2))
            for name in models if step % 2 == 0 else list(models)[::-1]:
                start = time.perf_counter()
                loss = train_step(name, models[name], optimizers[name], x1, x2, s, device)
                losses[name].append(loss.item())
                seconds[name] += time.perf_counter() - start
            step += 1
            if step >= steps:
                break
    row = {
        "steps": steps,
        "batch_size": batch,
        "numerics": s.label,
        "bank_size": bank_size,
        "test_size": test_size,
        "random_init": initial,
        "train_seconds": seconds,
        "final_loss": {k: sum(v[-10:]) / len(v[-10:]) for k, v in losses.items()},
        "max_loss_difference": max(
            abs(a - b) for a, b in zip(losses["sslhub"], losses["lightly"], strict=True)
        ),
    }
    for name, encoder in encoders.items():
        row[name] = accuracy(encoder)
    results["knn"] = row
    print(f"[knn] random {initial:.3f}  sslhub {row['sslhub']:.3f}  lightly {row['lightly']:.3f}", flush=True)


# ----------------------------------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="toy sizes (1-2 minutes on 2 CPU cores)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads")
    parser.add_argument("--only", default=",".join(MEASUREMENTS), help=f"comma list of {MEASUREMENTS}")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per library")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per repeat")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first")
    parser.add_argument("--knn-steps", type=int, default=200, help="training steps of the kNN comparison")
    parser.add_argument(
        "--sgd", default="default", choices=("default", "foreach", "fused"), help="SGD of both libraries"
    )
    parser.add_argument("--compile", action="store_true", help="also time sslhub under torch.compile")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results.json"))
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--library", default="sslhub", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    args.only = [m.strip() for m in args.only.split(",") if m.strip()]
    unknown = set(args.only) - set(MEASUREMENTS)
    if unknown:
        parser.error(f"unknown measurements {sorted(unknown)}; choose from {MEASUREMENTS}")
    defaults = (3, 1, 1) if args.quick else (7, 5, 2)
    args.repeats = args.repeats or defaults[0]
    args.steps = args.steps or defaults[1]
    args.warmup = args.warmup or defaults[2]
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args)
        return {}
    results = {
        "mode": "quick" if args.quick else "full",
        "machine": machine_info(args.device),
        "settings": {"repeats": args.repeats, "steps": args.steps, "warmup": args.warmup},
    }
    started = time.perf_counter()
    if "components" in args.only:
        run_components(args, results)
    if "throughput" in args.only or "flops" in args.only:
        results["matmul_flops_per_second"] = {
            "fp32": matmul_flops_per_second(args.device, torch.float32),
            "bf16": matmul_flops_per_second(args.device, torch.bfloat16),
        }
        run_throughput(args, results)
    if "memory" in args.only:
        run_memory(args, results)
    if "inference" in args.only:
        run_inference(args, results)
    if "data" in args.only:
        run_data(args, results)
    if "knn" in args.only:
        run_knn(args, results)
    results["seconds"] = time.perf_counter() - started
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out} in {results['seconds']:.0f} s")
    return results


if __name__ == "__main__":
    main()

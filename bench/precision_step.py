"""bf16 autocast against fp32: sslhub's MoCo v2 training step on this machine, the two interleaved.

    python bench/precision_step.py                        # batches 128 and 256, 12 rounds (about 2 minutes)
    python bench/precision_step.py --out-dir bench/X      # also writes X/precision_step.json

The step of the time-to-accuracy protocol (timm `test_resnet` at 32x32, projector 512 -> 128, queue 1,024,
the v2 preset's 8 BatchNorm sub-batches, channels_last, fused SGD): momentum update, forward, backward, SGD,
on pre-made views. Each round times a few steps of fp32, then of bf16, so that a machine whose speed drifts
between minutes (shared hosts do) moves both alike; the report is the median and the fastest round of each.
Separate runs of the recipe in fp32 and bf16 minutes apart are not a speed comparison: on a 2-core AMD EPYC
the augmentation, fp32 in both, ran 1.45x slower in one such run than in the other.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
from pathlib import Path

import torch
from common import build_sslhub, machine_info, make_inputs, timed, train_step
from step_breakdown import protocol_setting
from time_to_accuracy import Protocol

PRECISIONS = ("fp32", "bf16")


def measure(batch_size: int, rounds: int, steps: int, device: torch.device) -> dict:
    """ms per step of each precision: `rounds` interleaved rounds of `steps` steps after 3 warm-up steps."""
    p = Protocol()
    arms = {}
    for precision in PRECISIONS:
        s = protocol_setting(batch_size, p.queue_size, precision, device)
        model, optimizer = build_sslhub(s, device, shuffle_bn_splits=p.shuffle_bn_splits)
        views = make_inputs(s, device)
        for _ in range(3):
            train_step("sslhub", model, optimizer, *views, s, device)
        arms[precision] = (s, model, optimizer, views)
    times = {precision: [] for precision in PRECISIONS}
    for _ in range(rounds):
        for precision, (s, model, optimizer, views) in arms.items():
            step = functools.partial(train_step, "sslhub", model, optimizer, *views, s, device)
            seconds = timed(step, device, steps)
            times[precision].append(1000 * seconds / steps)
    median = {precision: statistics.median(values) for precision, values in times.items()}
    return {
        "ms_per_step_median": median,
        "ms_per_step_fastest_round": {precision: min(values) for precision, values in times.items()},
        "fp32_over_bf16": median["fp32"] / median["bf16"],
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--steps", type=int, default=5, help="steps per round")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out-dir", type=Path, help="where precision_step.json goes (not written without)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    results = {"machine": machine_info(device), "rounds": args.rounds, "steps_per_round": args.steps}
    for batch_size in args.batch_sizes:
        r = results[f"batch_{batch_size}"] = measure(batch_size, args.rounds, args.steps, device)
        median, fastest = r["ms_per_step_median"], r["ms_per_step_fastest_round"]
        print(
            f"batch {batch_size}: ms per step, median (fastest) of {args.rounds} interleaved rounds: "
            f"fp32 {median['fp32']:.1f} ({fastest['fp32']:.1f}), bf16 {median['bf16']:.1f} "
            f"({fastest['bf16']:.1f}); fp32 / bf16 = {r['fp32_over_bf16']:.2f}",
            flush=True,
        )
    if args.out_dir:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        (args.out_dir / "precision_step.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()

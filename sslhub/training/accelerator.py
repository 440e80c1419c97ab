"""The Accelerator of a training run: devices, processes, precision, seeds, trackers and logging."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import (
    DataLoaderConfiguration,
    DistributedDataParallelKwargs,
    get_int_from_env,
    set_seed,
)

from .precision import PrecisionChoice, describe, resolve_precision

TRACKERS = ("tensorboard", "wandb", "mlflow", "trackio", "aim", "comet_ml")
DEFAULT_TRACKERS = ("tensorboard", "trackio")  # the ones that log to local files without an account


def installed_trackers() -> list[str]:
    """The trackers of `TRACKERS` whose package is installed (as Accelerate checks it)."""
    import accelerate.utils as checks

    return [name for name in TRACKERS if getattr(checks, f"is_{name}_available")()]


def resolve_report_to(report_to: str | None) -> list[str]:
    """The trackers a run logs to, as transformers' `report_to`: names separated by commas, `all` (every
    installed one), `none`, or unset (the installed ones among tensorboard and trackio).

    Raises:
        ValueError: for an unknown name, or a tracker that is not installed (naming what to install).
    """
    installed = installed_trackers()
    if report_to is None:
        return [name for name in DEFAULT_TRACKERS if name in installed]
    names = [name.strip() for name in report_to.split(",") if name.strip()]
    if names in (["none"], []):
        return []
    if names == ["all"]:
        return installed
    for name in names:
        if name not in TRACKERS:
            raise ValueError(
                f"report_to: unknown tracker {name!r}; choose among {list(TRACKERS)}, all or none"
            )
        if name not in installed:
            extra = "pip install 'sslhub[tensorboard]'" if name == "tensorboard" else f"pip install {name}"
            raise ValueError(f"report_to: {name} is not installed ({extra}), or leave it out")
    return names


def launch_device() -> torch.device:
    """The device this process will train on, as Accelerate picks it, known before the Accelerator exists
    (the precision must be chosen first): the local CUDA GPU unless the launcher asked for the CPU."""
    use_cpu = os.environ.get("ACCELERATE_USE_CPU", "false").lower() in ("1", "true", "yes")
    if use_cpu or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


# The variables in which launchers give the number of processes they started: torchrun, then the MPIs.
LAUNCHED_PROCESSES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def check_processes(num_processes: int) -> None:
    """Stops a run whose launcher started several processes that Accelerate set up as separate one-process runs.

    Each of them would train alone, print and save as the main process, and write the same `output_dir`
    (one crashing on the other's checkpoint folder). That is what a multi-GPU launch config does on a machine
    without GPUs (recent accelerate; 1.9 fell back to gloo) unless ACCELERATE_USE_CPU=1 is set. The error
    is printed by the first process only; the others exit with status 1.

    Raises:
        SystemExit: when the environment counts more than one process and `num_processes` is 1.
    """
    launched = get_int_from_env(list(LAUNCHED_PROCESSES), 1)
    if launched <= 1 or num_processes != 1:
        return
    if get_int_from_env(["RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK"], 0) != 0:
        raise SystemExit(1)
    raise SystemExit(
        f"error: the launcher started {launched} processes, but Accelerate set each up as a run of its own "
        "(1 process, no distributed backend): they would all train alone and write the same output_dir. "
        "The launch config does not set up distribution on this machine, likely a multi-GPU config (such as "
        "recipes/accelerate/cpu_2proc.yaml) on a machine without GPUs, where the launcher does not pass "
        "`use_cpu` on. For several CPU processes set ACCELERATE_USE_CPU=1: "
        "ACCELERATE_USE_CPU=1 accelerate launch --config_file recipes/accelerate/cpu_2proc.yaml ..., or "
        f"ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes {launched} ..."
    )


def create_accelerator(args, ddp_broadcast_buffers: bool = False) -> Accelerator:
    """An Accelerator for one CPU, one or several GPUs, or several nodes, as `accelerate launch` configures.

    The precision is decided from the device (`sslhub.training.precision`), printed with its reason, and
    kept as `accelerator.precision` (a `PrecisionChoice`) for the run's metrics. Samplers are seedable (the
    data order is a function of seed and epoch, needed for exact resume), DDP does not broadcast buffers
    every step (MoCo's queue is kept identical by construction), and the run logs to the trackers of
    `args.report_to` (TensorBoard files go to `output_dir/logs`).
    """
    try:
        precision = resolve_precision(args.mixed_precision, launch_device())
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    accelerator = Accelerator(
        mixed_precision=precision.mode,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
        kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=ddp_broadcast_buffers)],
        log_with=resolve_report_to(args.report_to) or None,
        project_dir=str(Path(args.output_dir) / "logs"),
    )
    check_processes(accelerator.num_processes)  # before anything is printed, read or written
    accelerator.precision = precision
    set_seed(args.seed)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per saved file is noise here
    if not accelerator.is_main_process:
        logging.getLogger().setLevel(logging.WARNING)
    accelerator.print(describe(precision))
    return accelerator


def end_training(accelerator: Accelerator) -> None:
    """`accelerator.end_training()`, finishing a trackio run through trackio itself.

    Accelerate's trackio tracker finishes its run but leaves it trackio's current run, so trackio's exit hook
    finishes it a second time ("Run finished" twice); `trackio.finish()` finishes it and lets it go.
    """
    for tracker in list(accelerator.trackers):
        if tracker.name == "trackio" and accelerator.is_main_process:
            import trackio

            trackio.finish()
            accelerator.trackers.remove(tracker)
    accelerator.end_training()


__all__ = [
    "TRACKERS",
    "PrecisionChoice",
    "check_processes",
    "create_accelerator",
    "end_training",
    "installed_trackers",
    "launch_device",
    "resolve_report_to",
]

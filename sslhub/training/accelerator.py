"""The Accelerator of a training run: devices, processes, precision, seeds, trackers and logging."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs, set_seed

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
    "create_accelerator",
    "end_training",
    "installed_trackers",
    "launch_device",
    "resolve_report_to",
]

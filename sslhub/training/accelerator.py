"""The Accelerator of a training run: devices, processes, mixed precision, seeds, trackers and logging."""

from __future__ import annotations

import logging
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs, set_seed


def create_accelerator(args, ddp_broadcast_buffers: bool = False) -> Accelerator:
    """An Accelerator for one CPU, one or several GPUs, or several nodes, as `accelerate launch` configures.

    Samplers are seedable (the data order is a function of seed and epoch, needed for exact resume),
    DDP does not broadcast buffers every step (MoCo's queue is kept identical by construction), and
    TensorBoard logs go to `output_dir/logs`.
    """
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
        kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=ddp_broadcast_buffers)],
        log_with="tensorboard",
        project_dir=str(Path(args.output_dir) / "logs"),
    )
    set_seed(args.seed)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per saved file is noise here
    if not accelerator.is_main_process:
        logging.getLogger().setLevel(logging.WARNING)
    return accelerator

"""What the training recipes share; each piece does one job and none of them owns the loop.

- `arguments`: settings dataclasses, parsed from YAML and the command line (`parse_args`).
- `accelerator`: the Accelerator of a run (`create_accelerator`).
- `loader`: the prepared DataLoader, the two views of a batch, the run's micro-batches (`micro_batches`),
  their views made ahead (`ViewsAhead`).
- `optim`: optimizers and pure learning-rate schedules.
- `checkpoint`: atomic checkpoints with exact resume (`Checkpointer`).
- `tracking`: progress bar, tracker logs, NaN stop, throughput, step times (`RunLogger`, `StepTimes`).
- `monitor`: the kNN monitor.
- `teacher`: the frozen teacher of distillation and its input adapter; `kmeans`: clustering pseudo-labels.
- `final`: the end of a run (`publish_final_model`).
"""

from .accelerator import create_accelerator, end_training
from .arguments import TrainingArguments, save_arguments, setting
from .checkpoint import Checkpointer, LoopState, list_checkpoints, resolve_resume
from .final import command_line, publish_final_model, save_final_model, training_summary
from .kmeans import assign_clusters, kmeans
from .loader import (
    MicroBatch,
    RunLength,
    TwoViews,
    ViewsAhead,
    check_queue_fits_data,
    micro_batches,
    pretraining_loader,
    set_loader_epoch,
)
from .monitor import KNNMonitor
from .optim import (
    LARS,
    LRSchedule,
    cosine_lr,
    create_finetune_optimizer,
    create_optimizer,
    finetune_param_groups,
    scaled_lr,
    set_lr,
    step_lr,
)
from .parsing import parse_args, saved_model_config
from .teacher import Renormalize, check_teacher, load_teacher, renormalize_for_teacher
from .tracking import LossWatch, NonFiniteLossError, RunLogger, StepTimes, Throughput, peak_memory_mb

__all__ = [
    "Renormalize",
    "assign_clusters",
    "check_teacher",
    "kmeans",
    "load_teacher",
    "renormalize_for_teacher",
    "Checkpointer",
    "KNNMonitor",
    "LARS",
    "LoopState",
    "LossWatch",
    "MicroBatch",
    "NonFiniteLossError",
    "RunLength",
    "RunLogger",
    "StepTimes",
    "Throughput",
    "TrainingArguments",
    "TwoViews",
    "ViewsAhead",
    "command_line",
    "cosine_lr",
    "check_queue_fits_data",
    "create_accelerator",
    "end_training",
    "create_finetune_optimizer",
    "create_optimizer",
    "finetune_param_groups",
    "LRSchedule",
    "list_checkpoints",
    "micro_batches",
    "parse_args",
    "peak_memory_mb",
    "pretraining_loader",
    "publish_final_model",
    "resolve_resume",
    "save_arguments",
    "save_final_model",
    "saved_model_config",
    "scaled_lr",
    "set_loader_epoch",
    "set_lr",
    "setting",
    "step_lr",
    "training_summary",
]

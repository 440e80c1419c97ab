"""Recipe settings: the typed dataclass every training recipe extends, with its checks.

A recipe's settings are a `TrainingArguments` subclass; `parsing.parse_args` fills it from defaults, a
YAML file and the command line. The model's own settings are one nested section (`model`), declared once,
in the model's config class.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml


def setting(default: Any, help: str) -> Any:
    """A recipe setting with its default and the help line `--help` shows."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class TrainingArguments:
    """Settings every training recipe shares: data, kNN monitor, loop, optimization, checkpoints, logging.

    A recipe subclasses it with its own settings and names its model config (`model_config`), whose fields
    make up the `model` section.
    """

    model_config: ClassVar[type | None] = None  # the config class of the `model` section
    # Settings naming data (a dataset id, path or glob), checked to exist when the settings are parsed.
    data_sources: ClassVar[tuple[str, ...]] = ("dataset", "knn_eval_dataset")
    renamed_settings: ClassVar[
        dict[str, str]
    ] = {}  # an old name -> its new name (still read, with a warning)
    model_fields_set_by_recipe: ClassVar[tuple[str, ...]] = ()  # config fields the recipe fills itself
    legacy_model_names: ClassVar[dict[str, str]] = {}  # old flat spelling -> model field

    # data
    dataset: str = setting(
        "sample",
        "a Hub dataset id, a local image folder, parquet file(s) (path or glob), a save_to_disk folder, "
        "or 'sample' (the CIFAR-10 sample shipped with sslhub)",
    )
    split: str = setting("train", "the split that trains (datasets slicing works: 'train[:90%%]')")
    image_column: str | None = setting(None, "the image column; found from its type or name when unset")
    label_column: str | None = setting(None, "the label column (kNN monitor); found when unset")
    streaming: bool = setting(False, "stream the dataset (for data that does not fit on disk)")
    num_workers: int = setting(2, "DataLoader worker processes")
    batched_augmentation: bool = setting(
        False, "make the two views of a whole batch on the training device (equal-sized images)"
    )
    cache_images: bool | None = setting(
        None,
        "batched_augmentation: decode the images once into memory instead of every epoch; unset: when "
        "this machine's processes' copies take at most a quarter of its available memory",
    )
    # kNN monitor on a labelled held-out split
    knn_steps: int = setting(
        0, "kNN accuracy every N optimizer steps, before training and at the end; 0: off"
    )
    knn_eval_dataset: str | None = setting(
        None, "labelled held-out data of the kNN monitor (default: dataset)"
    )
    knn_eval_split: str = setting("test", "held-out split of the kNN monitor")
    knn_bank_size: int = setting(10000, "training images in the kNN bank")
    knn_k: int = setting(200, "kNN neighbours (InstDisc)")
    knn_temperature: float = setting(0.1, "kNN vote temperature: 0.1 on CIFAR, 0.07 on ImageNet")
    # loop
    output_dir: str = setting("outputs/run", "logs, checkpoints and the final model go here")
    epochs: int | None = setting(None, "passes over the training split; unset: the recipe's preset")
    max_steps: int | None = setting(None, "optimizer steps; overrides epochs when set")
    batch_size: int = setting(256, "images per process and micro-batch")
    gradient_accumulation_steps: int = setting(1, "micro-batches per optimizer step")
    mixed_precision: str | None = setting(
        None,
        "auto (bf16 where the device computes it natively, else fp32), no (fp32), bf16 or fp16; unset: "
        "accelerate launch's --mixed_precision if given, else auto",
    )
    channels_last: bool = setting(True, "channels_last memory format (faster convolutions)")
    compile: bool = setting(
        False,
        "torch.compile the model in place, and the batched augmentation's pixel work (seconds to a minute of "
        "compiling first, a C++ compiler on CPU; on 2 CPU cores steps were at most a tenth faster: "
        "bench/step_breakdown.py measures it)",
    )
    prefetch: bool = setting(
        False,
        "make the next micro-batch's views while the current step runs (CUDA: on a side stream; CPU: in a "
        "thread, batched augmentation only)",
    )
    seed: int = setting(0, "seed of initialization, data order and augmentation")
    # optimization; unset values come from the recipe's preset (training_preset)
    optimizer: str | None = setting(None, "sgd, lars or adamw")
    learning_rate: float | None = setting(None, "peak learning rate per 256 images (x global batch / 256)")
    weight_decay: float | None = setting(None, "weight decay")
    no_decay_bias_and_norm: bool = setting(
        False, "sgd/adamw: no weight decay on biases, norms, ViT position embeddings (the papers decay all)"
    )
    sgd_momentum: float = setting(0.9, "momentum of SGD and LARS")
    lr_schedule: str | None = setting(None, "cosine, or step (x0.1 at each of lr_milestones)")
    lr_milestones: list[float] = setting(
        [0.6, 0.8], "step schedule: fractions of the run (MoCo v1: 120, 160 of 200)"
    )
    warmup_epochs: float | None = setting(None, "linear warm-up of the learning rate, in epochs")
    max_grad_norm: float | None = setting(None, "clip gradients to this norm")
    # checkpoints and logging
    save_steps: int = setting(1000, "checkpoint every N optimizer steps (and at the end)")
    save_total_limit: int | None = setting(2, "checkpoints kept (older ones are removed)")
    resume: str | None = setting(None, "a checkpoint folder, or 'latest' in output_dir")
    overwrite_output_dir: bool = setting(
        False, "start afresh in an output_dir that holds an earlier run's checkpoints (they are removed)"
    )
    log_steps: int = setting(10, "log the loss every N optimizer steps")
    report_to: str | None = setting(
        None,
        "trackers, comma-separated: tensorboard, wandb, mlflow, trackio, aim, comet_ml; all; none; unset: the "
        "installed ones among tensorboard and trackio",
    )
    push_to_hub: bool = setting(False, "push the final model to the Hub")
    hub_model_id: str | None = setting(None, "Hub repo id of the pushed model (default: the run's name)")
    # the model
    model: dict = setting(
        {}, "the model's settings, passed to its config preset; one --model.NAME value each (listed below)"
    )

    def training_preset(self) -> dict[str, Any]:
        """Values of the optimization settings left unset: the paper's recipe (recipes override this)."""
        return dict(
            optimizer="sgd",
            learning_rate=0.03,
            weight_decay=1e-4,
            lr_schedule="cosine",
            warmup_epochs=0.0,
            epochs=200,
        )

    def __post_init__(self) -> None:
        """Fill unset settings from the recipe's preset, then check every setting that can be checked
        before any data is read or any model is built."""
        from ..models.configuration_common import check_choice, check_positive
        from .optim import LR_SCHEDULES, OPTIMIZERS
        from .precision import PRECISIONS

        for name, value in self.training_preset().items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        if not all(0 < fraction <= 1 for fraction in self.lr_milestones):
            raise ValueError(f"lr_milestones are fractions of the run in (0, 1], got {self.lr_milestones}")
        if self.mixed_precision is not None:
            check_choice("mixed_precision", self.mixed_precision, PRECISIONS)
        for name in ("batch_size", "epochs", "gradient_accumulation_steps", "log_steps", "save_steps"):
            check_positive(name, getattr(self, name))
        for name in ("knn_bank_size", "knn_k", "knn_temperature", "learning_rate"):
            check_positive(name, getattr(self, name))
        if self.max_steps is not None:
            check_positive("max_steps", self.max_steps)
        for name in ("weight_decay", "warmup_epochs", "knn_steps", "num_workers"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        min_crop_scale = getattr(self, "min_crop_scale", None)  # the recipes' RandomResizedCrop bound
        if min_crop_scale is not None and not 0 < min_crop_scale <= 1:
            raise ValueError(
                f"min_crop_scale is a fraction of the image's area in (0, 1], got {min_crop_scale}"
            )
        if self.streaming and self.max_steps is None:
            raise ValueError("a streamed dataset has no known length: set max_steps")
        if self.cache_images and not self.batched_augmentation:
            raise ValueError("cache_images keeps the uint8 images of batched_augmentation: set both")
        if self.streaming and self.batched_augmentation:
            raise ValueError(
                "batched_augmentation needs a map-style dataset: drop streaming or batched_augmentation"
            )
        from .accelerator import resolve_report_to

        resolve_report_to(self.report_to)  # unknown or missing trackers fail here, before any work
        if self.resume not in (None, "latest") and not Path(self.resume).is_dir():
            raise ValueError(f"resume={self.resume!r} is not a checkpoint folder; pass one, or 'latest'")
        from ..data.loading import check_data_source
        from .checkpoint import list_checkpoints

        for name in self.data_sources:
            if getattr(self, name):
                check_data_source(getattr(self, name), name)

        earlier = list_checkpoints(self.output_dir)
        if earlier and self.resume is None and not self.overwrite_output_dir:
            # A new run there would mix its checkpoints with the old ones (and `latest` would pick theirs).
            raise ValueError(
                f"output_dir={str(self.output_dir)!r} holds an earlier run's checkpoints (up to "
                f"{earlier[-1].name}): continue it with --resume latest, or start afresh with another "
                "--output_dir or --overwrite_output_dir true (removes them)"
            )
        if self.push_to_hub:  # else a missing token or a bad repo id would only fail after the whole run
            from ..hub.publish import HubError, check_can_push, check_repo_id

            try:
                check_repo_id(self.hub_model_id or Path(self.output_dir).resolve().name)
                check_can_push(
                    alternative="leave push_to_hub off and push the final folder later (sslhub push)"
                )
            except HubError as error:
                raise ValueError(f"push_to_hub: {error}") from None


def save_arguments(args, path: str | Path) -> None:
    """Write the resolved settings as YAML (next to the run's outputs, for provenance); it reads back."""
    Path(path).write_text(yaml.safe_dump(dataclasses.asdict(args), sort_keys=False))

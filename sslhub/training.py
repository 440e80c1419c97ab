"""What the training recipes share: typed configs from YAML + command line, the Accelerator set-up,
optimizers and pure schedules, the data loader, crash-safe checkpoints with exact resume, the kNN monitor
and the final save.

Each recipe (`recipes/*.py`) stays one readable script that calls these pieces in order.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import math
import os
import re
import shutil
import sys
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs, set_seed
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .augment import BatchedTwoViewAugmentation
from .data import (
    ImageDataset,
    TwoViewDataset,
    UInt8ImageDataset,
    collate,
    crop_flip_transform,
    eval_transform,
    load_image_dataset,
    sample_seed,
    two_view_transform,
)
from .evaluation import extract_features, knn_accuracy

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
_CHECKPOINT_NAME = re.compile(r"^step_(\d+)$")


# ----------------------------------------------------------------------------------------------------------
# Typed configs: a YAML file plus --field value overrides
# ----------------------------------------------------------------------------------------------------------


@dataclass
class TrainingConfig:
    """Settings every recipe shares (data, loop, optimization, checkpoints, logging).

    Recipes subclass it with their model's settings. Values come from the defaults here, then the
    `--config` YAML file, then `--field value` command-line overrides.
    """

    # data
    dataset: str = "sample"  # Hub id, image folder, parquet file/glob, or "sample" (shipped CIFAR-10 subset)
    split: str = "train"
    image_column: str | None = None  # found automatically when None
    label_column: str | None = None
    streaming: bool = False  # stream datasets that do not fit on disk (sharded across processes)
    num_workers: int = 2
    batched_augmentation: bool = False  # augment whole batches on the training device (equal-sized images)
    # kNN monitor on a labelled held-out split (0 disables it)
    knn_steps: int = 0  # evaluate every N optimizer steps (also before training and at the end)
    knn_eval_dataset: str | None = None  # defaults to `dataset`
    knn_eval_split: str = "test"
    knn_bank_size: int = 10000  # training images used as the kNN bank
    knn_k: int = 200
    knn_temperature: float = 0.1
    # loop
    output_dir: str = "outputs/run"
    epochs: int = 200
    max_steps: int | None = None  # optimizer steps; overrides `epochs` when set
    batch_size: int = 256  # per process
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "no"  # "no", "bf16" or "fp16"
    channels_last: bool = True
    seed: int = 0
    # optimization; the learning rate is given per 256 images and scaled by the global batch
    optimizer: str = "sgd"  # "sgd", "lars" or "adamw"
    learning_rate: float = 0.03
    weight_decay: float = 1e-4
    sgd_momentum: float = 0.9
    warmup_epochs: float = 0.0
    max_grad_norm: float | None = None
    # checkpoints and logging
    save_steps: int = 1000
    save_total_limit: int | None = 2
    resume: str | None = None  # a checkpoint folder, or "latest" in output_dir
    log_steps: int = 10
    push_to_hub: bool = False
    hub_model_id: str | None = None


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _convert(name: str, value: Any, annotation: Any) -> Any:
    """Convert a YAML-parsed value to the field's annotated type, or raise a ValueError naming the field."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        errors = []
        for candidate in (a for a in args if a is not type(None)):
            try:
                return _convert(name, value, candidate)
            except ValueError as error:
                errors.append(str(error))
        raise ValueError(errors[0])
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"--{name} expects true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ValueError(f"--{name} expects an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e30" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ValueError(f"--{name} expects a number, got {value!r}")
    if annotation is str:
        if isinstance(value, bool):  # YAML 1.1 reads no/yes/off/on as booleans
            raise ValueError(f"--{name} expects a string, got {value!r}: quote the value in the YAML file")
        return str(value)
    if list in (annotation, origin) and isinstance(value, (list, tuple)):
        return list(value)
    if dict in (annotation, origin) and isinstance(value, dict):
        return value
    raise ValueError(f"--{name} expects {annotation}, got {value!r}")


def _check_known(cls: type, names: list[str], where: str) -> None:
    known = [f.name for f in dataclasses.fields(cls)]
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3)
            hint = f"; did you mean {', '.join('--' + c for c in close)}?" if close else ""
            raise SystemExit(f"error: unknown setting {name!r} in {where}{hint} (see --help)")


def parse_config(cls: type, argv: list[str] | None = None):
    """Build the recipe config `cls` from `--config X.yaml` and `--field value` overrides.

    Values are parsed as YAML (`--mixed_precision bf16`, `--max_steps 100`, `--backbone_kwargs
    '{drop_path_rate: 0.1}'`, `--resume null`) and checked against the field types; an unknown field
    or a badly typed value ends the program with a message that names it.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(config_help(cls))
        raise SystemExit(0)
    values: dict[str, Any] = {}
    if "--config" in argv:
        at = argv.index("--config")
        if at + 1 >= len(argv):
            raise SystemExit("error: --config needs a YAML file")
        path = argv[at + 1]
        del argv[at : at + 2]
        loaded = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(loaded, dict):
            raise SystemExit(f"error: {path} must hold a mapping of settings")
        _check_known(cls, list(loaded), path)
        values.update(loaded)
    overrides: dict[str, Any] = {}
    while argv:
        flag = argv.pop(0)
        if not flag.startswith("--"):
            raise SystemExit(f"error: expected --field value, got {flag!r}")
        name, _, inline = flag[2:].partition("=")
        if inline:
            raw = inline
        elif argv and not argv[0].startswith("--"):
            raw = argv.pop(0)
        else:
            raw = "true"  # a bare flag switches a boolean on
        value = yaml.safe_load(raw)
        # `--mixed_precision no` means the string "no", not YAML 1.1's boolean.
        overrides[name] = raw if isinstance(value, bool) and raw.lower() not in ("true", "false") else value
    _check_known(cls, list(overrides), "the command line")
    values.update(overrides)
    types = _field_types(cls)
    try:
        converted = {name: _convert(name, value, types[name]) for name, value in values.items()}
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    return cls(**converted)


def config_help(cls: type) -> str:
    """One line per setting: name, type and default."""
    types = _field_types(cls)
    lines = [
        f"{cls.__doc__.strip().splitlines()[0] if cls.__doc__ else cls.__name__}",
        "",
        "usage: [--config FILE.yaml] [--field value ...]",
        "",
        "settings:",
    ]
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        kind = getattr(types[f.name], "__name__", str(types[f.name]))
        lines.append(f"  --{f.name:<28} {kind:<14} default: {default!r}")
    return "\n".join(lines)


def save_config(cfg, path: str | Path) -> None:
    """Write the resolved config as YAML (next to the run's outputs, for provenance)."""
    Path(path).write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))


# ----------------------------------------------------------------------------------------------------------
# Accelerator, data, optimizer, schedules
# ----------------------------------------------------------------------------------------------------------


def create_accelerator(cfg: TrainingConfig, ddp_broadcast_buffers: bool = False) -> Accelerator:
    """An Accelerator for one CPU, one or several GPUs, or several nodes, as `accelerate launch` configures.

    Samplers are seedable (the data order is a function of seed and epoch, needed for exact resume),
    DDP does not broadcast buffers every step (MoCo's queue is kept identical by construction), and
    TensorBoard logs go to `output_dir/logs`.
    """
    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=cfg.seed),
        kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=ddp_broadcast_buffers)],
        log_with="tensorboard",
        project_dir=str(Path(cfg.output_dir) / "logs"),
    )
    set_seed(cfg.seed)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per saved file is noise here
    if not accelerator.is_main_process:
        logging.getLogger().setLevel(logging.WARNING)
    return accelerator


def pretraining_loader(
    cfg: TrainingConfig,
    accelerator: Accelerator,
    augmentation: str,
    image_size: int,
    mean,
    std,
    min_scale: float | None = None,
) -> DataLoader:
    """The DataLoader of a pre-training run, prepared by (and sharded across) the Accelerator.

    `augmentation` is a MoCo preset (`"v1"`, `"v2"`, `"v3"`: two views per image) or `"crop_flip"`
    (one geometry-only view, `pixel_values`, for colorization).
    """
    with accelerator.main_process_first():  # the first process prepares the dataset cache
        dataset = load_image_dataset(
            cfg.dataset,
            cfg.split,
            image_column=cfg.image_column,
            label_column=cfg.label_column,
            streaming=cfg.streaming,
        )
    if cfg.batched_augmentation:
        if cfg.streaming or augmentation not in ("v1", "v2", "v3"):
            raise SystemExit(
                "error: batched_augmentation needs a map-style dataset and a MoCo preset (v1/v2/v3)"
            )
        images = UInt8ImageDataset(dataset, image_size)
    else:
        if augmentation == "crop_flip":
            transform = crop_flip_transform(image_size, mean, std, min_scale=min_scale)
        else:
            transform = two_view_transform(augmentation, image_size, mean, std, min_scale=min_scale)
        if cfg.streaming:
            from datasets.distributed import split_dataset_by_node

            from .data import StreamingTwoViewDataset

            # Sharded here, so the loader must not be sharded again by `prepare`.
            shard = split_dataset_by_node(dataset, accelerator.process_index, accelerator.num_processes)
            return DataLoader(
                StreamingTwoViewDataset(shard, transform, cfg.seed),
                batch_size=cfg.batch_size,
                num_workers=cfg.num_workers,
                collate_fn=collate,
                drop_last=True,
            )
        images = TwoViewDataset(dataset, transform, seed=cfg.seed)
    # drop_last: every process gathers equal-sized key batches into the queue.
    loader = DataLoader(
        images,
        batch_size=cfg.batch_size,
        shuffle=True,
        drop_last=True,
        collate_fn=collate,
        num_workers=cfg.num_workers,
        persistent_workers=False,
    )
    return accelerator.prepare(loader)


class TwoViews:
    """The two views of a `pretraining_loader` batch, made in the worker (per-image transforms) or here,
    on the training device (`--batched_augmentation`), in channels_last when the run uses it.

    Call it as `query, key = views(batch, run)` inside the loop of a `TrainingRun`.
    """

    def __init__(
        self,
        cfg: TrainingConfig,
        augmentation: str,
        image_size: int,
        mean,
        std,
        min_scale: float | None = None,
    ) -> None:
        self.augment = None
        if cfg.batched_augmentation:
            self.augment = BatchedTwoViewAugmentation(augmentation, image_size, mean, std, min_scale)
        self.channels_last = cfg.channels_last

    def __call__(self, batch: dict[str, torch.Tensor], run: TrainingRun) -> tuple[torch.Tensor, torch.Tensor]:
        if self.augment is not None:
            query, key = self.augment(batch["pixel_values"], run.generator())
        else:
            query, key = batch["query_pixel_values"], batch["key_pixel_values"]
        if self.channels_last:
            query = query.contiguous(memory_format=torch.channels_last)
            key = key.contiguous(memory_format=torch.channels_last)
        return query, key


def set_loader_epoch(loader, epoch: int) -> None:
    """Tell the sampler and the dataset (augmentation seeds) which epoch starts."""
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    dataset = getattr(loader, "dataset", None)
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)


def create_optimizer(model: nn.Module, cfg: TrainingConfig) -> torch.optim.Optimizer:
    """SGD (MoCo v1/v2), LARS (MoCo v3 ResNet; timm's implementation) or AdamW (MoCo v3 ViT).

    Biases and normalization weights get no weight decay (and no LARS adaptation) for LARS and AdamW,
    as in MoCo v3 and BYOL; SGD decays everything, as the MoCo v1/v2 code does. SGD and AdamW use the
    fused kernels (one call for all parameters instead of a Python loop: on a CPU, 3 ms instead of 530 ms
    per ResNet-18 step, with the same result).
    """
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            [p for _, p in trainable],
            lr=cfg.learning_rate,
            momentum=cfg.sgd_momentum,
            weight_decay=cfg.weight_decay,
            fused=True,
        )
    decay = [p for _, p in trainable if p.ndim > 1]
    no_decay = [p for _, p in trainable if p.ndim <= 1]
    if cfg.optimizer == "lars":
        from timm.optim import Lars

        groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0, "trust_coeff": 0.0}]
        return Lars(
            groups,
            lr=cfg.learning_rate,
            momentum=cfg.sgd_momentum,
            weight_decay=cfg.weight_decay,
            trust_clip=False,
        )
    if cfg.optimizer == "adamw":
        groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, fused=True)
    raise ValueError(f"optimizer must be one of ['sgd', 'lars', 'adamw'], got {cfg.optimizer!r}")


def cosine_lr(step: int, total_steps: int, base_lr: float, warmup_steps: int = 0) -> float:
    """Linear warmup to `base_lr`, then half-cosine decay to 0; a pure function of the step."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def scaled_lr(cfg: TrainingConfig, accelerator: Accelerator) -> float:
    """The learning rate for the global batch: `learning_rate * global_batch / 256` (Goyal et al. 2017)."""
    global_batch = cfg.batch_size * accelerator.num_processes * cfg.gradient_accumulation_steps
    return cfg.learning_rate * global_batch / 256


# ----------------------------------------------------------------------------------------------------------
# Checkpoints: atomic, with the loop position; exact resume
# ----------------------------------------------------------------------------------------------------------


@dataclass
class LoopState:
    """The loop's position, saved with every checkpoint (`accelerator.register_for_checkpointing`)."""

    step: int = 0  # optimizer steps done
    skipped_images: int = 0
    metrics: dict[str, float] = field(default_factory=dict)

    def state_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.skipped_images = int(state.get("skipped_images", 0))
        self.metrics = dict(state.get("metrics", {}))


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints in `output_dir/checkpoints`, oldest first (half-written ones end in `.tmp`)."""
    root = Path(output_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    found = [
        (int(m.group(1)), p) for p in root.iterdir() if (m := _CHECKPOINT_NAME.match(p.name)) and p.is_dir()
    ]
    return [p for _, p in sorted(found)]


def resolve_resume(resume: str | None, output_dir: str | Path) -> Path | None:
    """The checkpoint folder to resume from: an explicit folder, or `latest` in `output_dir` (None if none)."""
    if not resume:
        return None
    if resume == "latest":
        checkpoints = list_checkpoints(output_dir)
        return checkpoints[-1] if checkpoints else None
    path = Path(resume)
    if not path.is_dir():
        raise FileNotFoundError(f"--resume {resume}: no such checkpoint folder")
    return path


def save_checkpoint(
    accelerator: Accelerator, output_dir: str | Path, step: int, total_limit: int | None = None
) -> Path:
    """`accelerator.save_state` into `step_N.tmp`, then an atomic rename to `step_N`.

    A crash while saving leaves only a `.tmp` folder, which `latest` never picks. Older checkpoints
    beyond `total_limit` are removed afterwards.
    """
    root = Path(output_dir) / CHECKPOINT_DIR
    final, partial = root / f"step_{step}", root / f"step_{step}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
        if total_limit:
            for old in list_checkpoints(output_dir)[:-total_limit]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the run stops before saving anything from that point on."""


class LossWatch:
    """Tracks the loss on the device without a host sync per step; `check` syncs once (at log/save time)."""

    def __init__(self, device: torch.device) -> None:
        self.total = torch.zeros((), device=device)
        self.count = 0
        self.bad = torch.zeros((), dtype=torch.bool, device=device)
        self.last_checked_step = 0

    def update(self, loss: torch.Tensor) -> None:
        loss = loss.detach().float()
        self.bad |= ~torch.isfinite(loss)
        self.total += loss
        self.count += 1

    def check(self, step: int, last_checkpoint: Path | None) -> float:
        """Raise `NonFiniteLossError` if any loss since the last check was NaN/inf; return the mean loss."""
        if bool(self.bad):
            where = f"between steps {self.last_checked_step + 1} and {step}"
            resume = f" The last good checkpoint is {last_checkpoint}." if last_checkpoint else ""
            raise NonFiniteLossError(
                f"the loss became NaN or inf {where}. Lower --learning_rate, add --warmup_epochs, use bf16 "
                f"rather than fp16, or set --max_grad_norm.{resume}"
            )
        mean = (self.total / max(self.count, 1)).item()
        self.total.zero_()
        self.count = 0
        self.last_checked_step = step
        return mean


# ----------------------------------------------------------------------------------------------------------
# kNN monitor
# ----------------------------------------------------------------------------------------------------------


class KNNMonitor:
    """Weighted kNN accuracy of the current encoder on a labelled held-out split (InstDisc protocol).

    The bank is (up to `knn_bank_size` images of) the labelled training split, the queries the held-out
    split, both with the deterministic evaluation transform. Runs on every process (features are
    gathered); returns top-1 in [0, 1].
    """

    def __init__(
        self, cfg: TrainingConfig, accelerator: Accelerator, image_size: int, mean, std, crop_pct: float = 1.0
    ) -> None:
        transform = eval_transform(image_size, mean, std, crop_pct)
        with accelerator.main_process_first():
            bank = load_image_dataset(
                cfg.dataset, cfg.split, image_column=cfg.image_column, label_column=cfg.label_column
            )
            queries = load_image_dataset(
                cfg.knn_eval_dataset or cfg.dataset,
                cfg.knn_eval_split,
                image_column=cfg.image_column,
                label_column=cfg.label_column,
            )
        if "label" not in bank.column_names or "label" not in queries.column_names:
            raise ValueError("the kNN monitor needs labels in both the training and the evaluation split")
        if len(bank) > cfg.knn_bank_size:
            bank = bank.shuffle(seed=cfg.seed).select(range(cfg.knn_bank_size))
        self.loaders = [
            accelerator.prepare(
                DataLoader(
                    ImageDataset(split, transform),
                    batch_size=256,
                    collate_fn=collate,
                    num_workers=cfg.num_workers,
                )
            )
            for split in (bank, queries)
        ]
        self.accelerator = accelerator
        self.k, self.temperature = cfg.knn_k, cfg.knn_temperature

    def __call__(self, encoder: nn.Module) -> float:
        bank_features, bank_labels = extract_features(
            encoder, self.loaders[0], self.accelerator, description="kNN bank"
        )
        query_features, query_labels = extract_features(
            encoder, self.loaders[1], self.accelerator, description="kNN queries"
        )
        return knn_accuracy(
            bank_features, bank_labels, query_features, query_labels, self.k, self.temperature
        )


# ----------------------------------------------------------------------------------------------------------
# Throughput and the end of a run
# ----------------------------------------------------------------------------------------------------------


class Throughput:
    """Images per second between two calls of `rate`, and over the whole run (`overall`)."""

    def __init__(self) -> None:
        self.images, self.start = 0, time.perf_counter()
        self.total_images, self.total_seconds = 0, 0.0

    def add(self, images: int) -> None:
        self.images += images

    def rate(self) -> float:
        now = time.perf_counter()
        elapsed = max(now - self.start, 1e-9)
        value = self.images / elapsed
        self.total_images += self.images
        self.total_seconds += elapsed
        self.images, self.start = 0, now
        return value

    def overall(self) -> float:
        """Mean images/s over the logged intervals (kNN monitor and checkpoint time excluded)."""
        return self.total_images / max(self.total_seconds, 1e-9)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: CUDA allocator peak on GPU, peak resident set size on CPU.

    On Linux the peak RSS comes from `/proc/self/status` (VmHWM): `ru_maxrss` would include the memory of
    the parent at fork time, which a process started from a large Python program inherits.
    """
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def publish_final_model(cfg: TrainingConfig, model, card: dict[str, Any]) -> Path:
    """The end of every recipe (main process): save the inference model with its image processor, remote
    code and card into `output_dir/final`, check that it loads back identically, tell the user what next,
    and push it to the Hub with `--push_to_hub`.

    Args:
        cfg: the recipe config (`output_dir`, `image_size`, `push_to_hub`, `hub_model_id`).
        model: the unwrapped inference model (e.g. `MoCoModel`).
        card: keyword arguments of `sslhub.hub.write_model_card` except `model_name` (the run's name).
    """
    name = Path(cfg.output_dir).resolve().name
    final = save_final_model(model, cfg.output_dir, card={"model_name": name, **card})
    metrics = card.get("training_summary", {})
    (Path(cfg.output_dir) / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    print(check_reload(final, model, cfg.image_size))
    print(report_final_folder(final, card.get("training_summary", {})))
    if cfg.push_to_hub:
        from .hub import push_to_hub

        push_to_hub(final, cfg.hub_model_id or name)
    return final


def save_final_model(model, output_dir: str | Path, card: dict[str, Any] | None = None) -> Path:
    """`save_pretrained` the inference model (with its image processor) into `output_dir/final`, plus a card.

    Args:
        model: the unwrapped inference model (e.g. `MoCoModel`).
        output_dir: the run's output folder.
        card: keyword arguments for `sslhub.hub.write_model_card` (model name, paper, metrics, command).
    """
    from .hub import add_remote_code, write_model_card

    final = Path(output_dir) / "final"
    model.save_pretrained(final)
    add_remote_code(final)  # loads with trust_remote_code=True where sslhub is not installed
    if card is not None:
        write_model_card(final, **card)
    return final


def command_line() -> str:
    """The command that started this process, for model cards."""
    return " ".join(["accelerate launch", *sys.argv]) if sys.argv else ""


# ----------------------------------------------------------------------------------------------------------
# The loop every recipe shares
# ----------------------------------------------------------------------------------------------------------


class TrainingRun:
    """The bookkeeping of a recipe's loop; the recipe keeps its own forward pass.

    Iterating yields the micro-batches of the run from where it stands (resuming mid-epoch at the
    sampler level), after setting the learning rate of the step. Between two micro-batches it does the
    rest: the optimizer step count, the loss check (NaN/inf stops the run), TensorBoard logs and the
    progress bar, the kNN monitor, atomic checkpoints. A recipe reads top to bottom::

        run = TrainingRun(cfg, accelerator, model, optimizer, loader, encoder=lambda: unwrapped.query_encoder)
        for batch in run:
            with accelerator.accumulate(model):
                loss = model(...).loss
                run.backward(loss)
        metrics = run.finish()

    Everything a checkpoint needs is registered with the Accelerator: model buffers (queues, key
    encoders), optimizer, RNG states and the `LoopState` (step, metrics). Schedules are pure functions
    of `run.step`.

    Args:
        cfg: the recipe config.
        accelerator: from `create_accelerator`.
        model, optimizer, loader: already passed through `accelerator.prepare` (a streaming loader not).
        encoder: returns the inference encoder to monitor with kNN (and to save at the end).
        image_size, mean, std: evaluation preprocessing of the kNN monitor.
        name: the run's name in TensorBoard and the progress bar.
    """

    def __init__(
        self,
        cfg: TrainingConfig,
        accelerator: Accelerator,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loader,
        *,
        encoder=None,
        image_size: int | None = None,
        mean=None,
        std=None,
        name: str = "pre-training",
    ) -> None:
        self.cfg, self.accelerator, self.model, self.optimizer, self.loader = (
            cfg,
            accelerator,
            model,
            optimizer,
            loader,
        )
        self.encoder = encoder
        self.accumulation = cfg.gradient_accumulation_steps
        if cfg.streaming and cfg.max_steps is None:
            raise SystemExit("error: a streamed dataset has no known length: set --max_steps")
        self.steps_per_epoch = cfg.max_steps if cfg.streaming else len(loader) // self.accumulation
        if self.steps_per_epoch == 0:
            raise SystemExit(
                f"error: fewer than {cfg.batch_size * self.accumulation} images per process: "
                "lower --batch_size"
            )
        self.total_steps = cfg.max_steps or cfg.epochs * self.steps_per_epoch
        self.peak_lr = scaled_lr(cfg, accelerator)
        self.warmup_steps = round(cfg.warmup_epochs * self.steps_per_epoch)
        self.name = name

        self.state = LoopState()
        accelerator.register_for_checkpointing(self.state)
        self.last_checkpoint = resolve_resume(cfg.resume, cfg.output_dir)
        if self.last_checkpoint is not None:
            accelerator.load_state(str(self.last_checkpoint))
            accelerator.print(f"resumed from {self.last_checkpoint} at step {self.state.step}")

        self.monitor = None
        if cfg.knn_steps and encoder is not None:
            self.monitor = KNNMonitor(cfg, accelerator, image_size, mean, std)
            if self.state.step == 0:
                self.state.metrics["knn_top1_random_init"] = self.monitor(encoder())
                accelerator.print(
                    f"kNN top-1 before training: {self.state.metrics['knn_top1_random_init']:.4f}"
                )
        accelerator.init_trackers(
            name.replace("-", "_"),
            config={k: v for k, v in vars(cfg).items() if isinstance(v, (int, float, str, bool))},
        )
        self.first_micro_batch = True
        self.batch_in_epoch = 0
        self._watch, self._throughput = LossWatch(accelerator.device), Throughput()
        self._skipped = torch.zeros((), dtype=torch.long, device=accelerator.device)
        self._extra_logs: dict[str, float] = {}
        self._started = time.perf_counter()

    @property
    def step(self) -> int:
        """Optimizer steps done so far: the position of every schedule."""
        return self.state.step

    @property
    def epoch(self) -> int:
        return self.state.step // self.steps_per_epoch

    def generator(self) -> torch.Generator:
        """A generator for this micro-batch's random augmentation, seeded from (seed, epoch, batch, process).

        A resumed run draws exactly the numbers an uninterrupted run drew.
        """
        index = self.batch_in_epoch * self.accelerator.num_processes + self.accelerator.process_index
        return torch.Generator(self.accelerator.device).manual_seed(
            sample_seed(self.cfg.seed, self.epoch, index)
        )

    def log(self, **values: float) -> None:
        """Extra scalars for the next log line (e.g. `momentum=...`); logged under `train/`."""
        self._extra_logs.update(values)

    def backward(self, loss: torch.Tensor) -> None:
        """Backward, gradient clipping on the last micro-batch, optimizer step and zero_grad (inside `accumulate`)."""
        self.accelerator.backward(loss)
        if self.accelerator.sync_gradients and self.cfg.max_grad_norm:
            self.accelerator.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._watch.update(loss)

    def __iter__(self):
        accelerator = self.accelerator
        progress = tqdm(
            total=self.total_steps,
            initial=self.step,
            desc=self.name,
            dynamic_ncols=True,
            disable=not accelerator.is_main_process,
        )
        self.model.train()
        while self.step < self.total_steps:
            set_loader_epoch(self.loader, self.epoch)
            # Skip what this epoch already consumed, at the sampler level (nothing is decoded).
            done = (self.step % self.steps_per_epoch) * self.accumulation
            batches = accelerator.skip_first_batches(self.loader, done) if done else self.loader
            for micro_step, batch in enumerate(batches):
                self.batch_in_epoch = done + micro_step
                self.first_micro_batch = micro_step % self.accumulation == 0
                if self.first_micro_batch:
                    set_lr(
                        self.optimizer,
                        cosine_lr(self.step, self.total_steps, self.peak_lr, self.warmup_steps),
                    )
                yield batch
                self._skipped += batch["num_skipped"].to(self._skipped.device)
                first = next(v for k, v in batch.items() if k.endswith("pixel_values"))
                self._throughput.add(first.shape[0] * accelerator.num_processes)
                if (micro_step + 1) % self.accumulation:
                    continue
                self.state.step += 1
                progress.update(1)
                self._after_step(progress)
                if self.step >= self.total_steps or self.step % self.steps_per_epoch == 0:
                    break
        progress.close()

    def _after_step(self, progress) -> None:
        cfg, accelerator, step = self.cfg, self.accelerator, self.step
        at_end = step >= self.total_steps
        if step % cfg.log_steps == 0 or at_end:
            loss = self._watch.check(step, self.last_checkpoint)  # raises on NaN/inf, before any save
            logs = {
                "train/loss": loss,
                "train/lr": self.optimizer.param_groups[0]["lr"],
                "train/images_per_second": self._throughput.rate(),
                "train/epoch": step / self.steps_per_epoch,
                **{f"train/{k}": v for k, v in self._extra_logs.items()},
            }
            accelerator.log(logs, step=step)
            progress.set_postfix(loss=f"{loss:.4f}", lr=f"{logs['train/lr']:.3g}")
        paused = time.perf_counter()  # monitor and checkpoint time is not training throughput
        if self.monitor is not None and (step % cfg.knn_steps == 0 or at_end):
            self.state.metrics["knn_top1"] = self.monitor(self.encoder())
            accelerator.log({"monitor/knn_top1": self.state.metrics["knn_top1"]}, step=step)
            self.model.train()
        if step % cfg.save_steps == 0 or at_end:
            self._watch.check(step, self.last_checkpoint)
            self.state.skipped_images = int(accelerator.reduce(self._skipped, reduction="sum"))
            self.last_checkpoint = save_checkpoint(accelerator, cfg.output_dir, step, cfg.save_total_limit)
        self._throughput.start += time.perf_counter() - paused

    def finish(self) -> dict[str, float]:
        """The run's metrics (kNN, steps, time, peak memory); warns about skipped images."""
        skipped = int(self.accelerator.reduce(self._skipped, reduction="sum"))
        if skipped:
            self.accelerator.print(
                f"warning: {skipped} unreadable images were skipped (named in the log above)"
            )
        return {
            **self.state.metrics,
            "steps": self.step,
            "epochs": round(self.step / self.steps_per_epoch, 2),
            "train_seconds": round(time.perf_counter() - self._started, 1),
            "images_per_second": round(self._throughput.overall(), 1),
            "peak_memory_mb": round(peak_memory_mb(self.accelerator.device)),
            "skipped_images": skipped,
        }


def report_final_folder(final: Path, metrics: dict[str, float]) -> str:
    """What a user needs after a run: the numbers, where the model is, how to load and push it."""
    lines = []
    if "knn_top1" in metrics:
        before = metrics.get("knn_top1_random_init")
        change = f"random init {before:.4f} -> " if before is not None else ""
        lines.append(f"kNN top-1 on the held-out split: {change}trained {metrics['knn_top1']:.4f}")
    lines += [
        f"Saved the model, its image processor and model card to {final}",
        f"  load it:  import sslhub; from transformers import AutoModel; AutoModel.from_pretrained('{final}')",
        f"  embed:    sslhub embed {final} IMAGE_FOLDER --output embeddings.safetensors",
        f"  push it:  sslhub push {final} --repo-id YOUR_NAME/{final.parent.name}",
    ]
    return "\n".join(lines)


@torch.no_grad()
def check_reload(final: Path, model: nn.Module, image_size: int) -> str:
    """Load `final` back with `AutoModel.from_pretrained` and compare its embedding with the in-memory model."""
    from transformers import AutoModel

    reloaded = AutoModel.from_pretrained(final).eval()
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    probe = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    expected = model(probe.to(device)).pooler_output.float().cpu()
    got = reloaded(probe).pooler_output.float()
    model.train(was_training)
    difference = (expected - got).abs().max().item()
    if difference > 1e-4:
        raise RuntimeError(
            f"the saved model in {final} does not reproduce the trained one (max diff {difference})"
        )
    return f"Reloaded with AutoModel.from_pretrained: {type(reloaded).__name__}, same embeddings (max diff {difference:.1e})"

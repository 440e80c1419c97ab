"""The end of every recipe: the inference model saved with its image processor, remote code and card,
checked to load back identically, reported, and pushed on request."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn


def publish_final_model(
    args,
    model: nn.Module,
    card: dict[str, Any],
    metrics: dict[str, Any],
    method_settings: dict[str, Any] | None = None,
) -> Path:
    """Save `model` into `output_dir/final` with its card, write `metrics.json`, check the reload, say what
    next, and push to the Hub with `--push_to_hub`. Call it on the main process.

    Args:
        args: the recipe settings (`output_dir`, `push_to_hub`, `hub_model_id`, and what the card shows).
        model: the unwrapped inference model (e.g. `MoCoModel`).
        card: keyword arguments of `sslhub.hub.write_model_card` except `model_name` (the run's name) and
            `training_summary` (made by `training_summary`).
        metrics: the run's measurements, for the card and `metrics.json`.
        method_settings: the recipe's own settings for the card's table (augmentation, teacher, ...).
    """
    name = Path(args.output_dir).resolve().name
    summary = training_summary(args, metrics, method_settings)
    final = save_final_model(
        model, args.output_dir, card={"model_name": name, **card, "training_summary": summary}
    )
    (Path(args.output_dir) / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    print(check_reload(final, model))
    print(report_final_folder(final, metrics))
    if args.push_to_hub:
        from ..hub.publish import push_to_hub

        push_to_hub(final, args.hub_model_id or name)
    return final


def training_summary(
    args, metrics: dict[str, Any], method_settings: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The model card's table of how a recipe made the model: data, length and batch, optimizer and schedule,
    the method's own settings, precision, hardware, time and the kNN results. Local paths are not shown
    (`dataset_card_name`); `metrics.json` keeps every measurement.
    """
    from accelerate import PartialState

    from ..data.loading import dataset_card_name
    from .optim import scaled_lr
    from .precision import cpu_model

    state = PartialState()
    batch = args.batch_size * state.num_processes * args.gradient_accumulation_steps
    if state.device.type == "cuda":
        device = torch.cuda.get_device_name(state.device)
    else:
        device = cpu_model() or state.device.type
    schedule = f"{args.lr_schedule} schedule" + (
        f" (x0.1 at {', '.join(f'{m:g}' for m in args.lr_milestones)} of the run)"
        if args.lr_schedule == "step"
        else ""
    )
    precision = {"no": "fp32"}.get(metrics.get("mixed_precision"), metrics.get("mixed_precision", "?"))
    rows = {
        "Training data": f"{dataset_card_name(args.dataset)}, split `{args.split}`",
        "Length": f"{metrics['steps']} steps ({metrics['epochs']} epochs) of {batch} images",
        "Optimizer": (
            f"{args.optimizer}"
            + (f" (momentum {args.sgd_momentum:g})" if args.optimizer in ("sgd", "lars") else "")
            + f", learning rate {scaled_lr(args, state.num_processes):.4g} "
            f"({args.learning_rate:g} x {batch}/256), weight decay {args.weight_decay:g}, {schedule}, "
            f"{args.warmup_epochs:g} warm-up epochs"
        ),
        **(method_settings or {}),
        "Precision": f"{precision} ({metrics['precision_reason']})"
        if metrics.get("precision_reason")
        else precision,
        "Hardware": f"{state.num_processes} x {device}",
        "Training time": (
            f"{metrics['train_seconds']:g} s at {metrics['images_per_second']:g} images/s, "
            f"peak memory {metrics['peak_memory_mb']} MB"
        ),
    }
    held_out = f"{dataset_card_name(args.knn_eval_dataset or args.dataset)}, split `{args.knn_eval_split}`"
    for key, label in (("knn_top1_random_init", "at random init"), ("knn_top1", "trained")):
        if key in metrics:
            rows[f"kNN top-1 {label} ({held_out})"] = f"{metrics[key]:.4f}"
    if metrics.get("skipped_images"):
        rows["Unreadable images skipped"] = metrics["skipped_images"]
    return rows


def save_final_model(model: nn.Module, output_dir: str | Path, card: dict[str, Any] | None = None) -> Path:
    """`save_pretrained` the inference model (with its image processor) into `output_dir/final`, plus a card.

    Args:
        model: the unwrapped inference model (e.g. `MoCoModel`).
        output_dir: the run's output folder.
        card: keyword arguments for `sslhub.hub.write_model_card` (model name, paper, metrics, command).
    """
    from ..hub.cards import write_model_card
    from ..hub.remote_code import add_remote_code

    final = Path(output_dir) / "final"
    model.save_pretrained(final)
    add_remote_code(final)  # loads with trust_remote_code=True where sslhub is not installed
    if card is not None:
        write_model_card(final, **card)
    return final


def command_line() -> str:
    """The command that started this process, for model cards: quoted for a shell, with absolute paths
    inside the working directory (or the home folder) written as a reader can use them (`portable_path`)."""
    from ..hub.cards import portable_path

    if not sys.argv:
        return ""
    words = []
    for word in sys.argv:
        name, equals, value = word.partition("=")
        if equals and name.startswith("--"):
            words.append(f"{name}={portable_path(value)}")
        else:
            words.append(portable_path(word))
    return shlex.join(["accelerate", "launch", *words])


def report_final_folder(final: Path, metrics: dict[str, Any]) -> str:
    """What a user needs after a run: the numbers, where the model is, how to load and push it."""
    lines = []
    if "images_per_second" in metrics:
        precision = metrics.get("mixed_precision", "?")
        # The monitor's and checkpoints' share of the timed steps, of this process's wall time (`steps` also
        # counts a resumed run's earlier part, which neither the times nor `train_seconds` cover).
        step_ms = metrics.get("step_time_ms", {})
        share = sum(step_ms.get(part, 0.0) for part in ("evaluation", "checkpoint")) / max(
            step_ms.get("total", 0), 1e-9
        )
        paused = share * metrics["train_seconds"]
        of_which = f" ({paused:.1f} s of them kNN monitor and checkpoints)" if paused > 0 else ""
        lines.append(
            f"Trained {metrics['steps']} steps in {metrics['train_seconds']:.0f} s{of_which} at "
            f"{metrics['images_per_second']:.0f} images/s "
            f"({'fp32' if precision == 'no' else precision}; {metrics.get('precision_reason', '')})"
        )
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
def check_reload(final: Path, model: nn.Module) -> str:
    """Load `final` back with `AutoModel.from_pretrained` and compare its embedding with the in-memory model."""
    from transformers import AutoModel

    reloaded = AutoModel.from_pretrained(final).eval()
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    size = model.config.image_size
    probe = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    expected = model(probe.to(device), return_dict=True).pooler_output.float().cpu()
    got = reloaded(probe, return_dict=True).pooler_output.float()
    model.train(was_training)
    difference = (expected - got).abs().max().item()
    if difference > 1e-4:
        raise RuntimeError(
            f"the saved model in {final} does not reproduce the trained one (max diff {difference})"
        )
    return f"Reloaded with AutoModel.from_pretrained: {type(reloaded).__name__}, same embeddings (max diff {difference:.1e})"

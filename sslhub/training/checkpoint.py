"""Crash-safe checkpoints with exact resume: atomic folders holding everything a run needs to continue."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from accelerate.utils import load as accelerate_load
from accelerate.utils.constants import RNG_STATE_NAME

from .optim import LRSchedule

CHECKPOINT_DIR = "checkpoints"
_CHECKPOINT_NAME = re.compile(r"^step_(\d+)$")


@dataclass
class LoopState:
    """The loop's position, saved with every checkpoint (`accelerator.register_for_checkpointing`)."""

    step: int = 0  # optimizer steps done
    skipped_images: int = 0  # distinct unreadable files met so far
    metrics: dict[str, float] = field(default_factory=dict)
    unreadable: list[str] = field(default_factory=list)  # their names
    schedule: dict[str, Any] = field(default_factory=dict)  # the run's `LRSchedule.settings()`

    def state_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.skipped_images = int(state.get("skipped_images", 0))
        self.metrics = dict(state.get("metrics", {}))
        self.unreadable = list(state.get("unreadable", []))
        self.schedule = dict(state.get("schedule", {}))


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


class Checkpointer:
    """Saves and restores a run exactly: model buffers (queues, key encoders), optimizer, RNG states and
    the loop position (`state`), all registered with the Accelerator.

    A checkpoint is written into `step_N.tmp` and renamed to `step_N` once complete, so a crash while
    saving never leaves a checkpoint that `latest` would pick. Older checkpoints beyond `total_limit` are
    removed after each save.

    Args:
        accelerator: the run's Accelerator (model and optimizer already prepared).
        output_dir: checkpoints go to `output_dir/checkpoints/step_N`.
        total_limit: checkpoints kept; `None` keeps all.
    """

    def __init__(
        self, accelerator: Accelerator, output_dir: str | Path, total_limit: int | None = None
    ) -> None:
        self.accelerator = accelerator
        self.output_dir = Path(output_dir)
        self.total_limit = total_limit
        self.state = LoopState()
        self.last: Path | None = None
        accelerator.register_for_checkpointing(self.state)

    def resume(self, resume: str | None, schedule: LRSchedule | None = None) -> int:
        """Restore the checkpoint `resume` names (a folder or `latest`) if any; returns the step to start at.

        Without `resume`, an earlier run's checkpoints in `output_dir` are removed first (the arguments
        refuse that unless `overwrite_output_dir`), so that `latest` only ever names this run's. With the
        run's learning-rate `schedule`, a checkpoint past its `total_steps` is refused (it belongs to a
        longer run), and a checkpoint trained on another schedule is named with the learning rate that
        changes; the schedule is saved with every checkpoint.
        """
        if schedule is not None:
            self.state.schedule = schedule.settings()
        accelerator = self.accelerator
        if resume is None:
            earlier = list_checkpoints(self.output_dir)
            if earlier and accelerator.is_main_process:
                accelerator.print(
                    f"removing the earlier run's {len(earlier)} checkpoint(s) in {earlier[0].parent}"
                )
                for old in earlier:
                    shutil.rmtree(old)
            accelerator.wait_for_everyone()
        self.last = resolve_resume(resume, self.output_dir)
        if self.last is None:
            if resume == "latest":
                accelerator.print(f"no checkpoint in {self.output_dir / CHECKPOINT_DIR}: starting at step 0")
            return 0
        try:
            accelerator.load_state(str(self.last))
        except RuntimeError as error:  # e.g. size mismatches of a model built with other settings
            lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [
                type(error).__name__
            ]
            raise SystemExit(
                f"error: {self.last} does not fit this run's model ({lines[min(1, len(lines) - 1)][:200]})"
                f"{self._model_differences()}; resume with the settings of its run (config.yaml in "
                f"{self.output_dir})"
            ) from None
        self._check_random_states()
        if schedule is not None:
            if self.state.step > schedule.total_steps:
                raise SystemExit(
                    f"error: {self.last} is at step {self.state.step}, past this run's {schedule.total_steps} "
                    f"steps: resume with the settings of its run (config.yaml in {self.output_dir}), or a "
                    "longer --max_steps / --epochs"
                )
            self._check_schedule(schedule)
        accelerator.print(f"resumed from {self.last} at step {self.state.step}")
        return self.state.step

    def _check_schedule(self, schedule: LRSchedule) -> None:
        """Warn when the checkpoint was trained on another learning-rate schedule (e.g. a longer run asked
        for with --max_steps): the run goes on with this one, so the learning rate jumps at the resumed step."""
        saved, current = self.state.schedule, schedule.settings()
        if saved and saved != current:
            changed = ", ".join(
                f"{k} {saved.get(k)!r} -> {v!r}" for k, v in current.items() if saved.get(k) != v
            )
            step = self.state.step
            try:
                before = LRSchedule(**{**saved, "milestones": tuple(saved.get("milestones", ()))})(step)
                was = f", where the checkpoint's run would use {before:.4g}"
            except (TypeError, ValueError):  # settings written by another sslhub version
                was = ""
            self.accelerator.print(
                f"warning: {self.last} was trained on another learning-rate schedule ({changed}); this run "
                f"continues on its own: at step {step} the learning rate is {schedule(step):.4g}{was}",
                file=sys.stderr,
            )
        self.state.schedule = current

    def _model_config(self):
        """The transformers config of the run's model (the one model `accelerator.prepare` was given), if any;
        accelerate's `save_state` writes that model's weights as `model.safetensors`."""
        models = self.accelerator._models  # what `save_state` / `load_state` iterate
        config = (
            getattr(self.accelerator.unwrap_model(models[0]), "config", None) if len(models) == 1 else None
        )
        return config if hasattr(config, "save_pretrained") else None

    def _model_differences(self) -> str:
        """The model settings that differ between the checkpoint's config.json and this run's model."""
        config, saved_file = self._model_config(), self.last / "config.json"
        if config is None or not saved_file.is_file():
            return ""
        saved, current = json.loads(saved_file.read_text()), config.to_dict()
        changed = [
            f"{name}={saved[name]!r} (this run: {current[name]!r})"
            for name in sorted(saved.keys() & current.keys())
            if saved[name] != current[name] and name not in ("transformers_version", "_name_or_path")
        ]
        return f"; its model settings differ: {', '.join(changed)}" if changed else ""

    def _check_random_states(self) -> None:
        """Warn where accelerate could not restore the checkpoint's random states: it only logs that at info
        level, and the run then goes on with other random numbers (data order, dropout) than an
        uninterrupted one (seen with numpy < 1.25, which accelerate's safe unpickling cannot read)."""
        path = self.last / f"{RNG_STATE_NAME}_{self.accelerator.process_index}.pkl"
        try:
            accelerate_load(path)
        except Exception as error:  # what accelerate's load_state swallows
            print(
                f"warning: the random states in {path} could not be restored ({type(error).__name__}: "
                f"{str(error).splitlines()[0][:120]}): the resumed run goes on, but will not be identical to "
                "an uninterrupted one",
                file=sys.stderr,
            )

    def _save_model_config(self, folder: Path) -> None:
        """Make the checkpoint a `from_pretrained` folder as well: accelerate writes the model's weights as
        `model.safetensors` under their state-dict names; with the config (and an sslhub model's image
        processor) next to them, `AutoModelForPreTraining.from_pretrained(checkpoint)` restores the
        training model (key encoder, queue) and `AutoModel` its encoder, as from a `save_pretrained` folder."""
        config = self._model_config()
        if config is None or not (folder / "model.safetensors").exists():
            return
        config.save_pretrained(folder)
        if str(getattr(config, "model_type", "")).startswith("sslhub_"):
            from ..models.modeling_common import image_processor_for

            image_processor_for(config).save_pretrained(folder)

    def save(self, step: int) -> Path:
        """Write the checkpoint of optimizer step `step` (every process takes part)."""
        accelerator = self.accelerator
        self.state.step = step
        root = self.output_dir / CHECKPOINT_DIR
        final, partial = root / f"step_{step}", root / f"step_{step}.tmp"
        if accelerator.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(partial))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            self._save_model_config(partial)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(partial, final)
            if self.total_limit:
                kept = [p for p in list_checkpoints(self.output_dir) if p != final]  # never the new one
                for old in kept[: max(len(kept) - (self.total_limit - 1), 0)]:
                    shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()
        self.last = final
        return final

"""What a run reports while it trains: the progress bar, tracker logs, the loss check, throughput and
where the step's time goes.

`RunLogger` is fed once per micro-batch (`update`, no host sync) and once per optimizer step (`step`); it
syncs with the device only at logging steps, where it also stops a run whose loss became NaN or infinite.
The recipe brackets the parts of its step with `logger.timed(part)` (`StepTimes`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from .checkpoint import Checkpointer
from .loader import RunLength
from .precision import PrecisionChoice


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


# The parts of a training step, in the order the progress bar shows them (a recipe times those it has);
# "other" is the rest of the wall time (the loop itself, learning-rate setting, bookkeeping).
STEP_PARTS = (
    "data", "augmentation", "forward_backward", "optimizer", "momentum", "logging", "checkpoint", "evaluation"
)  # fmt: skip
_END = object()
_SHORT_NAMES = {
    "augmentation": "aug", "forward_backward": "fwd+bwd", "optimizer": "opt", "momentum": "mom",
    "checkpoint": "ckpt", "evaluation": "eval",
}  # fmt: skip


def _part_order(part: str) -> int:
    """Where a part goes in a breakdown: `STEP_PARTS` in order, then any other part, then other and total."""
    order = (*STEP_PARTS, None, "other", "total")  # None: a part a recipe adds
    return order.index(part if part in order else None)


class StepTimes:
    """Seconds spent in each part of the training step, read (and reset) at logging steps.

    On CPU each part is timed with `perf_counter`. On CUDA each part is bracketed by two CUDA events on the
    current stream and nothing waits for them until `read`, which synchronizes once (at a logging step,
    where the loss check synchronizes anyway): the times are then spans of the GPU's timeline, so a part
    the host spent waiting in (e.g. for data) counts only the idle time it left on the GPU, and the parts
    of a step add up to its wall time. Parts not bracketed make up "other" (wall time minus the parts).

    Args:
        device: the training device.
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self._seconds: dict[str, float] = {}
        self._events: list[tuple[str, torch.cuda.Event, torch.cuda.Event]] = []
        self._parts: dict[str, None] = {}  # the parts timed so far, in the order first seen
        self._open: dict[str, Any] = {}  # part -> its start (perf_counter or CUDA event) while it runs
        self._start = time.perf_counter()

    @contextmanager
    def __call__(self, part: str):
        """Add the time spent inside to `part`. A part timed inside another one counts for the inner part
        only: the outer one is suspended meanwhile (e.g. the kNN monitor inside the logging step)."""
        self._parts.setdefault(part)
        outer = next(reversed(self._open), None)  # the innermost running part, if any
        start = self._mark()
        if outer is not None:
            self._close(outer, start)
        self._open[part] = start
        try:
            yield
        finally:
            end = self._mark()
            self._close(part, end)
            if outer is not None:
                self._open[outer] = end

    def _mark(self):
        """Now: a CUDA event recorded on the current stream, or `perf_counter` on other devices."""
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def _close(self, part: str, end) -> None:
        """End the running span of `part` at `end` (a `_mark`), adding it to the part's time."""
        start = self._open.pop(part)
        if self.cuda:
            self._events.append((part, start, end))
        else:
            self._seconds[part] = self._seconds.get(part, 0.0) + end - start

    def iterate(self, iterable: Iterable, part: str = "data") -> Iterator:
        """The items of `iterable`, the wait for each added to `part`."""
        iterator = iter(iterable)
        while True:
            with self(part):
                item = next(iterator, _END)
            if item is _END:
                return
            yield item

    def read(self) -> dict[str, float]:
        """Seconds per part since the last read, with "other" and "total" (wall time); then start afresh.

        A part still open (a read from inside it, e.g. the logging step) is split at the read: its time so
        far counts here, the rest in the next read."""
        now = time.perf_counter()
        for part in list(self._open):  # the running part (suspended outer ones hold no open span)
            split = now if not self.cuda else self._mark()
            self._close(part, split)
            self._open[part] = split
        if self._events:
            self._events[-1][2].synchronize()
            for part, start, end in self._events:
                self._seconds[part] = self._seconds.get(part, 0.0) + start.elapsed_time(end) / 1e3
        seconds = {part: self._seconds.get(part, 0.0) for part in sorted(self._parts, key=_part_order)}
        total = now - self._start
        seconds["other"] = max(total - sum(seconds.values()), 0.0)
        seconds["total"] = total
        self._seconds, self._events, self._start = {}, [], now
        return seconds


def describe_step_times(seconds: dict[str, float]) -> str:
    """`data 2% aug 14% fwd+bwd 70% ...`: each part's share of the wall time (the progress bar's form)."""
    total = max(seconds.get("total", 0.0), 1e-9)
    return " ".join(
        f"{_SHORT_NAMES.get(part, part)} {value / total:.0%}"
        for part, value in seconds.items()
        if part != "total"
    )


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


class RunLogger:
    """Progress bar, tracker logs (`train/...`), the NaN/inf stop, throughput and skipped images of a run.

    Args:
        accelerator: the run's Accelerator, with its trackers.
        args: the recipe settings (`log_steps`; the scalar ones are logged as the run's config).
        length: steps per epoch and in all.
        checkpointer: the run's checkpoints: its loop state (position, metrics, skipped images) continues
            across resumes, and a NaN message names its last checkpoint.
        name: the run's name in the trackers and on the progress bar.
    """

    def __init__(
        self,
        accelerator: Accelerator,
        args,
        length: RunLength,
        checkpointer: Checkpointer,
        name: str = "training",
    ) -> None:
        self.accelerator, self.args, self.length, self.checkpointer = accelerator, args, length, checkpointer
        self.state = checkpointer.state
        self._watch = LossWatch(accelerator.device)
        self._step_seconds: dict[str, float] = {}  # per part, summed over the logged intervals
        self._steps_timed = 0
        self._last_logged_step = self.state.step
        self._unreadable = set(self.state.unreadable)  # names of unreadable files, this process
        accelerator.init_trackers(
            name.replace("-", "_"),
            config={k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))},
        )
        self.progress = tqdm(
            total=length.total_steps,
            initial=self.state.step,
            desc=name,
            dynamic_ncols=True,
            disable=not accelerator.is_main_process,
        )
        # Clocks start after the trackers have (seconds for some): they time the training loop only.
        self.timed = StepTimes(accelerator.device)  # `with logger.timed("data"): ...` in the recipe
        self._throughput, self._started = Throughput(), time.perf_counter()

    def update(self, loss: torch.Tensor, batch: dict[str, torch.Tensor]) -> None:
        """Account for one micro-batch: its loss (kept on the device), images and unreadable files."""
        self._watch.update(loss)
        self._unreadable.update(batch.get("unreadable", ()))
        images = next(v for k, v in batch.items() if k.endswith("pixel_values"))
        self._throughput.add(images.shape[0] * self.accelerator.num_processes)

    def step(self, step: int, **scalars: float) -> None:
        """After optimizer step `step`: advance the bar; every `log_steps` (and at the end) check the loss
        and log it with the learning rate, throughput and `scalars`."""
        self.progress.update(1)
        if step % self.args.log_steps and step < self.length.total_steps:
            return
        loss = self.check_finite(step)
        steps = step - self._last_logged_step
        seconds = self._read_step_times(step)
        logs = {
            "train/loss": loss,
            "train/images_per_second": self._throughput.rate(),
            "train/epoch": step / self.length.steps_per_epoch,
            **{f"train/{name}": value for name, value in scalars.items()},
            **{f"time/{part}_ms": 1e3 * value / max(steps, 1) for part, value in seconds.items()},
        }
        self.accelerator.log(logs, step=step)
        self.progress.set_postfix(
            loss=f"{loss:.4f}",
            **{k: f"{v:.3g}" for k, v in scalars.items() if k == "lr"},
            time=describe_step_times(seconds),
        )

    def _read_step_times(self, step: int) -> dict[str, float]:
        """The step times since the last read, also added to the run's totals (for `summary`)."""
        seconds = self.timed.read()
        for part, value in seconds.items():
            self._step_seconds[part] = self._step_seconds.get(part, 0.0) + value
        self._steps_timed += step - self._last_logged_step
        self._last_logged_step = step
        return seconds

    def check_finite(self, step: int) -> float:
        """Raise `NonFiniteLossError` if a loss since the last check was NaN/inf; the mean loss since then.

        Also brings the loop state's list of unreadable files up to date (a collective: call it on every
        process at the same steps).
        """
        self.state.unreadable = self.unreadable_files()
        self.state.skipped_images = len(self.state.unreadable)
        return self._watch.check(step, self.checkpointer.last)

    def log(self, values: dict[str, float], step: int) -> None:
        """Log other scalars (e.g. `monitor/knn_top1`) at `step`."""
        self.accelerator.log(values, step=step)

    def evaluate(self, step: int, monitor: Callable[[torch.nn.Module], float] | None, encoder) -> None:
        """At the kNN monitor's steps (every `knn_steps`, and the last): `monitor(encoder)`, logged and kept
        in the checkpointed metrics as `knn_top1`; timed as the step's "evaluation", not as training."""
        if monitor is None or (step % self.args.knn_steps and step < self.length.total_steps):
            return
        with self.paused("evaluation"):
            self.state.metrics["knn_top1"] = monitor(encoder)
        self.log({"monitor/knn_top1": self.state.metrics["knn_top1"]}, step)

    def checkpoint(self, step: int) -> None:
        """At every `save_steps` (and the last step): check the loss (a NaN stops the run before it is
        saved), then save a checkpoint; timed as the step's "checkpoint", not as training."""
        if step % self.args.save_steps and step < self.length.total_steps:
            return
        with self.paused("checkpoint"):
            self.check_finite(step)
            self.checkpointer.save(step)

    @contextmanager
    def paused(self, part: str):
        """Time spent inside (the kNN monitor, a checkpoint) is no training throughput: it counts only as
        its own `part` of the step times ("evaluation", "checkpoint"), not in the part around it."""
        started = time.perf_counter()
        try:
            with self.timed(part):
                yield
        finally:
            self._throughput.start += time.perf_counter() - started

    def unreadable_files(self) -> list[str]:
        """Names of the unreadable files met so far in the run (all processes, resumed parts included)."""
        if self.accelerator.num_processes == 1:
            return sorted(self._unreadable)
        from accelerate.utils import gather_object

        return sorted({name for names in gather_object([sorted(self._unreadable)]) for name in names})

    def summary(self, steps: int) -> dict[str, float]:
        """The run's metrics: the state's kNN results, steps, time, throughput, where a step's time went
        (`step_time_ms`: milliseconds per optimizer step and part, this process, this part of a resumed run),
        peak memory, unreadable files and the precision."""
        self.progress.close()
        self._read_step_times(steps)  # the time since the last logging step
        unreadable = self.unreadable_files()
        precision = getattr(self.accelerator, "precision", None) or PrecisionChoice(
            self.accelerator.mixed_precision, "set on the Accelerator"
        )
        if unreadable:
            shown = ", ".join(unreadable[:5]) + (", ..." if len(unreadable) > 5 else "")
            self.accelerator.print(f"warning: {len(unreadable)} unreadable images were skipped: {shown}")
        return {
            **self.state.metrics,
            "steps": steps,
            "epochs": round(steps / self.length.steps_per_epoch, 2),
            "train_seconds": round(time.perf_counter() - self._started, 1),
            "images_per_second": round(self._throughput.overall(), 1),
            "step_time_ms": {  # parts in `STEP_PARTS` order, as a read gives them (some appear only later)
                part: round(1e3 * self._step_seconds[part] / max(self._steps_timed, 1), 2)
                for part in sorted(self._step_seconds, key=_part_order)
            },
            "peak_memory_mb": round(peak_memory_mb(self.accelerator.device)),
            "skipped_images": len(unreadable),
            "unreadable_files": unreadable[:100],
            "mixed_precision": precision.mode,
            "precision_reason": precision.reason,
        }

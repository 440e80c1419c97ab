"""The data side of a training run: the prepared DataLoader, the two views of a batch, the run's
micro-batches in order, resumable mid-epoch, and their views made ahead of the step that uses them."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from ..data import (
    BatchedTwoViewAugmentation,
    InMemoryUInt8Images,
    TwoViewDataset,
    UInt8ImageDataset,
    collate,
    crop_flip_transform,
    load_image_dataset,
    sample_seed,
    two_view_transform,
)


def pretraining_loader(
    args,
    accelerator: Accelerator,
    augmentation: str,
    image_size: int,
    mean,
    std,
    min_scale: float | None = None,
    dataset=None,
) -> DataLoader:
    """The DataLoader of a training run, prepared by (and sharded across) the Accelerator.

    `augmentation` is a MoCo preset (`"v1"`, `"v2"`, `"v3"`: two views per image) or `"crop_flip"`
    (one geometry-only view, `pixel_values`, for colorization). With `args.batched_augmentation` the
    loader gives equal-sized uint8 images, left on the CPU (pinned for a GPU), and `TwoViews` moves them
    to the training device without waiting and makes the views there. A `dataset` already loaded (e.g. a
    labelled subset) is used instead of `args.dataset`.
    """
    if dataset is None:
        with accelerator.main_process_first():  # the first process prepares the dataset cache
            dataset = load_image_dataset(
                args.dataset,
                args.split,
                image_column=args.image_column,
                label_column=args.label_column,
                streaming=args.streaming,
            )
    if args.batched_augmentation:
        if args.streaming or augmentation not in ("v1", "v2", "v3"):
            raise SystemExit(
                "error: batched_augmentation needs a map-style dataset and a MoCo preset (v1/v2/v3)"
            )
        images = UInt8ImageDataset(dataset, image_size)
        if cache_images(args, images, accelerator):
            started = time.perf_counter()
            images = InMemoryUInt8Images.decode(
                images, args.num_workers, progress=accelerator.is_local_main_process
            )
            accelerator.print(
                f"{len(images):,} images decoded into memory ({images.pixel_values.nbytes / 2**20:,.0f} MB) in "
                f"{time.perf_counter() - started:.1f} s; --cache_images false decodes them every epoch instead"
            )
    else:
        if augmentation == "crop_flip":
            transform = crop_flip_transform(image_size, mean, std, min_scale=min_scale)
        else:
            transform = two_view_transform(augmentation, image_size, mean, std, min_scale=min_scale)
        if args.streaming:
            from datasets.distributed import split_dataset_by_node

            from ..data import StreamingTwoViewDataset

            # Sharded here, so the loader must not be sharded again by `prepare`.
            shard = split_dataset_by_node(dataset, accelerator.process_index, accelerator.num_processes)
            return DataLoader(
                StreamingTwoViewDataset(shard, transform, args.seed),
                batch_size=args.batch_size,
                num_workers=args.num_workers,
                collate_fn=collate,
                drop_last=True,
            )
        images = TwoViewDataset(dataset, transform, seed=args.seed)
    # drop_last: every process gathers equal-sized key batches into the queue. Workers that only decode
    # (batched augmentation) need no epoch, so they persist; per-image views are seeded per epoch. Images in
    # memory need no workers: a batch is an index into one tensor.
    num_workers = 0 if isinstance(images, InMemoryUInt8Images) else args.num_workers
    loader = DataLoader(
        images,
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        collate_fn=collate,
        num_workers=num_workers,
        persistent_workers=args.batched_augmentation and num_workers > 0,
        pin_memory=args.batched_augmentation and accelerator.device.type == "cuda",
    )
    return accelerator.prepare(loader, device_placement=[not args.batched_augmentation])


def available_memory_bytes() -> int | None:
    """Memory this machine can still give without swapping (Linux `MemAvailable`), else its free pages;
    None where neither is known."""
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo") as lines:
        for line in lines:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    with contextlib.suppress(AttributeError, OSError, ValueError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return None


def cache_images(args, images: UInt8ImageDataset, accelerator: Accelerator) -> bool:
    """Whether to decode the images once into memory (`InMemoryUInt8Images`): `args.cache_images`, or unset,
    when the copies of every process on this machine take at most a quarter of its available memory."""
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
    needed = len(images) * 3 * images.size**2 * local_processes
    available = available_memory_bytes()
    if args.cache_images is None:
        return available is not None and needed <= available / 4
    if args.cache_images and available is not None and needed > available:
        raise SystemExit(
            f"error: cache_images: the decoded images of this machine's {local_processes} process(es) need "
            f"{needed / 2**30:.1f} GiB, more than the {available / 2**30:.1f} GiB available; "
            "drop --cache_images true (unset, it decides by itself)"
        )
    return args.cache_images


class TwoViews:
    """The two views of a `pretraining_loader` batch, made in the loader's workers (per-image transforms)
    or here, on the training device (`batched_augmentation`; compiled with the model under `--compile`),
    in channels_last when the run uses it.

    Call it as `query, key = views(batch, generator)`; the generator seeds the batched augmentation.
    """

    def __init__(
        self,
        args,
        augmentation: str,
        image_size: int,
        mean,
        std,
        min_scale: float | None = None,
        device: torch.device | None = None,
    ) -> None:
        self.augment = None
        if args.batched_augmentation:
            self.augment = BatchedTwoViewAugmentation(
                augmentation, image_size, mean, std, min_scale, compile=args.compile
            )
        self.channels_last = args.channels_last
        self.device = device

    @property
    def batched(self) -> bool:
        """Whether the views are made here (batched augmentation) rather than in the loader's workers."""
        return self.augment is not None

    def __call__(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.augment is not None:
            images = batch["pixel_values"].to(self.device or generator.device, non_blocking=True)
            query, key = self.augment(images, generator)
        else:
            query, key = batch["query_pixel_values"], batch["key_pixel_values"]
        if self.channels_last:
            query = query.contiguous(memory_format=torch.channels_last)
            key = key.contiguous(memory_format=torch.channels_last)
        return query, key


def check_queue_fits_data(accelerator: Accelerator, queue_size: int, loader) -> None:
    """Warn when a queue of negatives (MoCo, SEED, CompRess) is longer than an epoch's images: its random
    initial entries then last more than an epoch, and afterwards it holds several stale copies of each
    image's embedding (the papers keep 65,536 of ImageNet's 1.28M images)."""
    try:
        images = len(loader) * loader.total_batch_size  # an epoch's images, over every process
    except (TypeError, AttributeError):  # a streamed dataset, or a loader `prepare` did not wrap
        return
    if queue_size and queue_size > images:
        accelerator.print(
            f"warning: the queue of {queue_size:,} embeddings is longer than the {images:,} images of an epoch: "
            "it keeps random entries for more than an epoch, then several stale copies of each image; set "
            f"model.queue_size to at most {images:,} (a multiple of the global batch)"
        )


def set_loader_epoch(loader, epoch: int) -> None:
    """Tell the sampler and the dataset (augmentation seeds) which epoch starts."""
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    dataset = getattr(loader, "dataset", None)
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)


@dataclass(frozen=True)
class RunLength:
    """How long a run is, in optimizer steps.

    Attributes:
        steps_per_epoch: optimizer steps per pass over the data (`max_steps` for a streamed dataset).
        total_steps: optimizer steps of the whole run.
        accumulation: micro-batches per optimizer step.
    """

    steps_per_epoch: int
    total_steps: int
    accumulation: int = 1

    @classmethod
    def of(cls, args, loader) -> RunLength:
        """The length of a run with `args` (`epochs` or `max_steps`) over `loader`."""
        accumulation = args.gradient_accumulation_steps
        if args.streaming and args.max_steps is None:
            raise SystemExit("error: a streamed dataset has no known length: set --max_steps")
        steps_per_epoch = args.max_steps if args.streaming else len(loader) // accumulation
        if steps_per_epoch == 0:
            raise SystemExit(
                f"error: fewer than {args.batch_size * accumulation} images per process: lower --batch_size"
            )
        return cls(steps_per_epoch, args.max_steps or args.epochs * steps_per_epoch, accumulation)

    def warmup_steps(self, warmup_epochs: float) -> int:
        return round(warmup_epochs * self.steps_per_epoch)


@dataclass
class MicroBatch:
    """One micro-batch and where it stands: epoch, index in the epoch, first / last of its optimizer step,
    last of its epoch (or of the run)."""

    batch: dict[str, torch.Tensor]
    epoch: int
    index: int
    first: bool
    last: bool
    epoch_end: bool = False

    def generator(self, accelerator: Accelerator, seed: int) -> torch.Generator:
        """A generator for this micro-batch's random augmentation, seeded from (seed, epoch, batch, process):
        a resumed run draws exactly the numbers an uninterrupted run drew."""
        index = self.index * accelerator.num_processes + accelerator.process_index
        return torch.Generator(accelerator.device).manual_seed(sample_seed(seed, self.epoch, index))


def micro_batches(
    loader, accelerator: Accelerator, length: RunLength, start_step: int = 0
) -> Iterator[MicroBatch]:
    """The run's micro-batches from optimizer step `start_step` to the end, epoch after epoch.

    A resumed run skips what its epoch already consumed at the sampler level (nothing is decoded); the
    micro-batches of an epoch's incomplete last optimizer step are left out.
    """
    step = start_step
    while step < length.total_steps:
        epoch = step // length.steps_per_epoch
        set_loader_epoch(loader, epoch)
        done = (step % length.steps_per_epoch) * length.accumulation
        batches = accelerator.skip_first_batches(loader, done) if done else loader
        for index, batch in enumerate(batches, start=done):
            last = (index + 1) % length.accumulation == 0
            ends = last and (step + 1 >= length.total_steps or (step + 1) % length.steps_per_epoch == 0)
            first = index % length.accumulation == 0
            yield MicroBatch(batch, epoch, index, first=first, last=last, epoch_end=ends)
            if last:
                step += 1
                if ends:
                    break


class ViewsAhead:
    """The run's micro-batches with their two views; with `ahead`, the next micro-batch's views are made
    while the current step runs.

    - CUDA: the next batch is copied and augmented on a side stream; the step's stream waits for it (an
      event), never the host.
    - CPU, batched augmentation: a background thread augments the next batch (torch releases the GIL), on
      a core the step leaves idle, if any: measure (`bench/step_breakdown.py`) before turning it on.
    - CPU, per-image views: the loader's workers already make them ahead; nothing to do here.

    Runs are the same with or without it: the views are a function of the batch and its generator, the
    next batch is taken from the loader in this thread, and never across an epoch's end (starting an
    epoch's loader draws from the global RNG, which the step also uses and checkpoints save).

    Args:
        views: the run's `TwoViews`.
        accelerator: the run's Accelerator (device, process index).
        seed: the run's seed (augmentation generators).
        ahead: make the next views while the current step runs.
        timed: `RunLogger.timed`, to time waiting for the loader ("data") and for the views ("augmentation").
    """

    def __init__(
        self,
        views: TwoViews,
        accelerator: Accelerator,
        seed: int,
        ahead: bool = False,
        timed: Callable[[str], contextlib.AbstractContextManager] | None = None,
    ) -> None:
        self.views, self.accelerator, self.seed = views, accelerator, seed
        self.timed = timed or (lambda part: contextlib.nullcontext())
        device = accelerator.device
        self.stream = torch.cuda.Stream(device) if ahead and device.type == "cuda" else None
        self.thread = None
        if ahead and device.type == "cpu" and views.batched:
            self.thread = ThreadPoolExecutor(1, thread_name_prefix="views-ahead")

    def _start(self, micro: MicroBatch):
        """Begin making `micro`'s views: a handle for `_finish`."""
        generator = micro.generator(self.accelerator, self.seed)
        if self.thread is not None:
            return self.thread.submit(self.views, micro.batch, generator)
        if self.stream is not None:  # its inputs are its own (a fresh copy of the batch): nothing to wait for
            with torch.cuda.stream(self.stream):
                views = self.views(micro.batch, generator)
            return views, self.stream.record_event()
        return micro.batch, generator

    def _finish(self, handle) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(handle, Future):
            return handle.result()
        if self.stream is not None:
            views, ready = handle
            stream = torch.cuda.current_stream()
            stream.wait_event(ready)
            for view in views:  # made on the side stream, used and freed on this one
                view.record_stream(stream)
            return views
        return self.views(*handle)

    def _next(self, micro_batches: Iterator[MicroBatch]) -> tuple[MicroBatch, object] | None:
        with self.timed("data"):
            micro = next(micro_batches, None)
        return None if micro is None else (micro, self._start(micro))

    def __call__(
        self, micro_batches: Iterator[MicroBatch]
    ) -> Iterator[tuple[MicroBatch, torch.Tensor, torch.Tensor]]:
        """`(micro, query, key)` for each micro-batch of `micro_batches`."""
        micro_batches = iter(micro_batches)
        ahead = self.thread is not None or self.stream is not None
        current = self._next(micro_batches)
        try:
            while current is not None:
                micro, handle = current
                upcoming = self._next(micro_batches) if ahead and not micro.epoch_end else None
                with self.timed("augmentation"):
                    query, key = self._finish(handle)
                yield micro, query, key
                current = upcoming if upcoming is not None else self._next(micro_batches)
        finally:
            if self.thread is not None:
                self.thread.shutdown(wait=True)

"""The training step's speed machinery: step times, views made ahead, and no host sync in a step."""

import time
from types import SimpleNamespace

import pytest
import torch

from sslhub import MoCoForPreTraining
from sslhub.data import batched
from sslhub.training import MicroBatch, StepTimes, TrainingArguments, TwoViews, ViewsAhead, create_optimizer
from sslhub.training.tracking import LossWatch, describe_step_times

from .helpers import HOST_SYNC_OPS, recorded_ops, tiny_moco_v2

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def test_step_times_split_the_wall_time_into_parts():
    times = StepTimes(torch.device("cpu"))
    for _ in range(2):
        with times("data"):
            time.sleep(0.01)
        with times("forward_backward"):
            time.sleep(0.03)
        time.sleep(0.005)  # not bracketed: "other"
    seconds = times.read()
    assert list(seconds) == ["data", "forward_backward", "other", "total"]
    assert 0.02 <= seconds["data"] < seconds["forward_backward"]
    assert seconds["other"] >= 0.01
    assert seconds["total"] == pytest.approx(sum(v for k, v in seconds.items() if k != "total"), rel=1e-6)
    assert describe_step_times(seconds).startswith("data ")
    again = times.read()  # a read starts afresh
    assert again["data"] == 0.0 and again["total"] < seconds["total"]


def test_a_read_inside_a_part_splits_it_so_each_read_adds_up():
    """The logging step reads the times from inside its own "logging" part: the part's time before the read
    belongs to that read, the rest to the next, and every read's parts add up to its wall time."""
    times = StepTimes(torch.device("cpu"))
    with times("forward_backward"):
        time.sleep(0.02)
    with times("logging"):
        time.sleep(0.02)
        first = times.read()
        time.sleep(0.03)
    second = times.read()
    for seconds in (first, second):
        parts = sum(v for k, v in seconds.items() if k != "total")
        assert seconds["total"] == pytest.approx(parts, rel=1e-6)
    assert 0.02 <= first["logging"] < 0.03 and second["logging"] >= 0.03
    assert second["other"] < 0.01


def test_a_part_inside_another_counts_for_the_inner_part_only():
    """The kNN monitor runs inside the logging step: its time is "evaluation", not "logging" too."""
    times = StepTimes(torch.device("cpu"))
    with times("logging"):
        time.sleep(0.01)
        with times("evaluation"):
            time.sleep(0.2)
        time.sleep(0.01)
        inside = times.read()  # the logging step reads from inside its part: after the evaluation
        time.sleep(0.01)
    after = times.read()
    assert 0.02 <= inside["logging"] < 0.1 and inside["evaluation"] >= 0.2  # with it, logging would be 0.22
    assert after["evaluation"] == 0.0 and after["logging"] >= 0.01
    for seconds in (inside, after):
        parts = sum(v for k, v in seconds.items() if k != "total")
        assert seconds["total"] == pytest.approx(parts, rel=1e-6)


def test_step_times_time_the_wait_for_each_item():
    times = StepTimes(torch.device("cpu"))

    def slow():
        for item in range(3):
            time.sleep(0.01)
            yield item

    assert list(times.iterate(slow(), "data")) == [0, 1, 2]
    assert times.read()["data"] >= 0.03


def _micro_batches(epochs: int = 2, per_epoch: int = 3, log: list | None = None):
    """Micro-batches of uint8 images, one optimizer step each; `log` records when each is taken."""
    for epoch in range(epochs):
        for index in range(per_epoch):
            if log is not None:
                log.append(("take", epoch, index))
            images = torch.randint(0, 256, (8, 3, 40, 40), generator=torch.Generator().manual_seed(index))
            yield MicroBatch(
                {"pixel_values": images.to(torch.uint8)},
                epoch,
                index,
                first=True,
                last=True,
                epoch_end=index == per_epoch - 1,
            )


def _views_ahead(ahead: bool) -> ViewsAhead:
    args = SimpleNamespace(batched_augmentation=True, channels_last=True, compile=False)
    views = TwoViews(args, "v2", 32, MEAN, STD, device=torch.device("cpu"))
    accelerator = SimpleNamespace(device=torch.device("cpu"), num_processes=1, process_index=0)
    return ViewsAhead(views, accelerator, seed=3, ahead=ahead)


def test_views_made_ahead_are_the_views_made_in_turn():
    in_turn = list(_views_ahead(False)(_micro_batches()))
    ahead = list(_views_ahead(True)(_micro_batches()))
    assert [(m.epoch, m.index) for m, _, _ in ahead] == [(e, i) for e in range(2) for i in range(3)]
    for (_, query, key), (_, query_ahead, key_ahead) in zip(in_turn, ahead, strict=True):
        assert torch.equal(query, query_ahead) and torch.equal(key, key_ahead)
        assert query_ahead.is_contiguous(memory_format=torch.channels_last)


def test_views_ahead_never_take_a_batch_across_an_epochs_end():
    # Starting an epoch's loader draws from the global RNG, which the step uses too: the next epoch's first
    # batch is taken only after the last step of the epoch has run.
    log = []
    for micro, _, _ in _views_ahead(True)(_micro_batches(log=log)):
        log.append(("step", micro.epoch, micro.index))
    assert log == [
        ("take", 0, 0),
        ("take", 0, 1),  # ahead: taken before step (0, 0) runs
        ("step", 0, 0),
        ("take", 0, 2),
        ("step", 0, 1),
        ("step", 0, 2),  # the epoch's last step: nothing taken ahead of it
        ("take", 1, 0),
        ("take", 1, 1),
        ("step", 1, 0),
        ("take", 1, 2),
        ("step", 1, 1),
        ("step", 1, 2),
    ]


@pytest.mark.parametrize("splits", [1, 2])
def test_a_training_step_never_waits_for_the_device(splits, monkeypatch):
    # Operators that read a size or a value from a tensor (a host sync on a GPU) are absent from a whole
    # MoCo step (batched views as made off the CPU, momentum update, split shuffle-BN, loss, enqueue,
    # backward, SGD, the loss watch); the recipes read values at logging steps only.
    monkeypatch.setattr(batched, "_on_subsets", lambda x: False)
    torch.manual_seed(0)
    model = MoCoForPreTraining(tiny_moco_v2(shuffle_bn_splits=splits, queue_size=64)).train()
    model = model.to(memory_format=torch.channels_last)
    optimizer = create_optimizer(model, TrainingArguments())
    watch = LossWatch(torch.device("cpu"))
    batches = _views_ahead(False)(_micro_batches(epochs=1, per_epoch=1))
    with recorded_ops() as ops:
        for _, query, key in batches:
            model.update_key_encoder()
            output = model(query, key, update_key_encoder=False, enqueue_keys=True)
            output.loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            watch.update(output.loss)
    assert {"aten.convolution", "aten._fused_sgd_", "aten.index_copy_"} <= ops  # the step ran, recorded
    assert not ops & HOST_SYNC_OPS, ops & HOST_SYNC_OPS

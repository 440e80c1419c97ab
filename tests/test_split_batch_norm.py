"""One-process shuffle-BN in one forward (`split_batch_norm`) against the encoder run on each sub-batch."""

import copy

import pytest
import timm.layers
import torch
from torch import nn

from sslhub import MoCoForPreTraining
from sslhub.models.distributed import can_split_batch_norm, shuffle_bn, split_batch_norm

from .helpers import tiny_moco_v2

SPLITS = 4


def _key_encoder() -> nn.Module:
    torch.manual_seed(0)
    return MoCoForPreTraining(tiny_moco_v2(queue_size=64)).key_encoder.train()


def _batch(memory_format=torch.contiguous_format) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    # An offset and a scale away from 0 / 1, so that statistics per sub-batch matter.
    x = torch.randn(16, 3, 32, 32, generator=generator) * 2 + 0.5
    return x.contiguous(memory_format=memory_format)


def _running_statistics(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items() if "running" in k or "num_batches" in k}


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_one_forward_equals_the_encoder_run_on_each_sub_batch(memory_format):
    encoder = _key_encoder().to(memory_format=memory_format)
    reference = copy.deepcopy(encoder)
    x = _batch(memory_format)
    with torch.no_grad():
        expected = torch.cat([reference(chunk).projection for chunk in x.chunk(SPLITS)])  # (16, D)
        whole_batch = reference(x).projection
        with split_batch_norm(encoder, SPLITS):
            got = encoder(x).projection
    scale = expected.abs().max().item()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5 * scale)
    assert not torch.allclose(got, whole_batch, atol=1e-2 * scale)  # the statistics are per sub-batch
    # Afterwards the layers are plain BatchNorms again: no instance attribute left behind.
    assert not any("forward" in vars(layer) for layer in encoder.modules())


def test_running_statistics_move_once_towards_the_mean_of_the_sub_batch_statistics():
    # The authors' SplitBatchNorm: each sub-batch updates its own copy of the running statistics, which are
    # then averaged; the batch counter counts one batch.
    encoder = _key_encoder()
    x = _batch(torch.channels_last)
    copies = [copy.deepcopy(encoder) for _ in range(SPLITS)]
    before = _running_statistics(encoder)
    with torch.no_grad():
        for chunk, copied in zip(x.chunk(SPLITS), copies, strict=True):
            copied(chunk)
        with split_batch_norm(encoder, SPLITS):
            encoder(x)
    after = _running_statistics(encoder)
    for name, value in after.items():
        if name.endswith("num_batches_tracked"):
            assert value == before[name] + 1
            continue
        expected = torch.stack([_running_statistics(c)[name] for c in copies]).mean(0)
        assert not torch.allclose(value, before[name])
        torch.testing.assert_close(value, expected, rtol=1e-4, atol=1e-5)


def test_eval_mode_layers_are_left_alone():
    encoder = _key_encoder().eval()
    x = _batch()
    before = _running_statistics(encoder)
    with torch.no_grad():
        expected = encoder(x).projection
        with split_batch_norm(encoder, SPLITS):
            got = encoder(x).projection
    assert torch.equal(got, expected)
    assert all(torch.equal(v, before[k]) for k, v in _running_statistics(encoder).items())


def test_batch_norm_1d_and_layers_without_running_statistics_are_split_too():
    torch.manual_seed(0)
    head = nn.Sequential(
        nn.Linear(8, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Linear(12, 6), nn.BatchNorm1d(6, affine=False)
    )
    head[1].track_running_stats, head[1].running_mean, head[1].running_var = False, None, None
    head.train()
    x = torch.randn(16, 8) * 3 + 1
    reference = copy.deepcopy(head)
    assert can_split_batch_norm(head)
    with torch.no_grad():
        expected = torch.cat([reference(chunk) for chunk in x.chunk(SPLITS)])
        with split_batch_norm(head, SPLITS):
            got = head(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


class _RunningVarNorm(nn.Module):
    """A batch-statistics layer that is no torch BatchNorm (as timm's EvoNorm B0)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / (x.var(dim=(0, 2, 3), keepdim=True) + 1e-5).sqrt()


@pytest.mark.parametrize(
    "layer",
    [
        nn.BatchNorm2d(4, momentum=None),  # cumulative average: its factor needs the batch count on the host
        timm.layers.BatchNormAct2d(4),  # a subclass that computes more than a BatchNorm
        _RunningVarNorm(4),
    ],
    ids=["cumulative-average", "timm-BatchNormAct2d", "other-batch-statistics-layer"],
)
def test_other_batch_statistics_layers_fall_back_to_one_forward_per_sub_batch(layer):
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Conv2d(3, 4, 3), layer, nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).train()
    assert not can_split_batch_norm(encoder)
    x = torch.randn(8, 3, 8, 8)
    reference = copy.deepcopy(encoder)
    torch.manual_seed(5)
    got = shuffle_bn(encoder, x, num_splits=2, module=encoder)
    torch.manual_seed(5)
    permutation = torch.randperm(8)
    with torch.no_grad():
        expected = torch.empty_like(got)
        for chunk in permutation.chunk(2):
            expected[chunk] = reference(x[chunk])
    assert torch.equal(got, expected)  # bit for bit: the chunked path ran
    # A model whose layers can all be split takes the one-forward path, close but not bit-identical.
    assert can_split_batch_norm(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train())
    assert can_split_batch_norm(nn.Sequential(nn.BatchNorm2d(4, momentum=None)).eval())  # nothing to split

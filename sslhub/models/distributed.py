"""Collectives used inside models (key gathering, shuffle-BN), with a single-process fallback.

Every function here works unchanged in a plain single-process run, where it is the identity.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn


def world_size() -> int:
    """Number of processes in the default group (1 when not distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """Rank of this process in the default group (0 when not distributed)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


@torch.no_grad()
def gather_without_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` from every process along dim 0, in rank order; no gradient flows back.

    All processes must pass tensors of the same shape.
    """
    if world_size() == 1:
        return tensor
    gathered = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(gathered, tensor.contiguous())
    return torch.cat(gathered, dim=0)


@torch.no_grad()
def shuffle_batch(
    x: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shuffle-BN, step 1 (MoCo): give this process a random slice of the global batch.

    Batch-norm statistics of the key encoder are then computed over samples from other processes,
    so they cannot leak which query belongs to which key.

    Returns:
        `(shuffled_local_batch, unshuffle_index)`; pass the index to `unshuffle_batch`.
    """
    if world_size() == 1:
        return x, torch.arange(x.shape[0], device=x.device)
    local_size = x.shape[0]
    x_all = gather_without_grad(x)
    # Rank 0 draws the permutation; every process receives the same one.
    permutation = torch.randperm(x_all.shape[0], device=x.device, generator=generator)
    dist.broadcast(permutation, src=0)
    unshuffle_index = torch.argsort(permutation)
    mine = permutation.view(world_size(), local_size)[rank()]
    return x_all[mine], unshuffle_index


@torch.no_grad()
def unshuffle_batch(x: torch.Tensor, unshuffle_index: torch.Tensor) -> torch.Tensor:
    """Shuffle-BN, step 2: return to this process the outputs of its own samples, in order."""
    if world_size() == 1:
        return x
    local_size = x.shape[0]
    x_all = gather_without_grad(x)
    mine = unshuffle_index.view(world_size(), local_size)[rank()]
    return x_all[mine]


@torch.no_grad()
def shuffle_bn(
    encoder: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    num_splits: int = 1,
    generator: torch.Generator | None = None,
    module: nn.Module | None = None,
) -> torch.Tensor:
    """Run a no-grad key `encoder` on `x` with shuffle-BN (He et al. 2020, Sec. 3.3); outputs in `x`'s order.

    Shuffle-BN keeps the BatchNorm statistics of a key from being computed with its own query's sub-batch,
    which would let the model cheat through the statistics.
    - Several processes: each encodes a random slice of the global batch, then gets its own outputs back
      (`shuffle_batch` / `unshuffle_batch`); `num_splits` is ignored.
    - One process: the batch is permuted with `torch.randperm` (the global RNG unless `generator` is given)
      and cut into `num_splits` equal sub-batches, each normalized with its own BatchNorm statistics, then
      put back in order: the one-GPU emulation of the MoCo authors' CIFAR-10 demo (`SplitBatchNorm`,
      `bn_splits=8`). With `module` (the encoder's modules) whose batch-statistics layers are all torch
      BatchNorms, the shuffled batch goes through the encoder once, with `split_batch_norm`; otherwise the
      encoder runs on each sub-batch in turn, and each sub-batch updates the running statistics once.
      `num_splits=1` encodes `x` as it is.

    Args:
        encoder: maps (n, ...) inputs to (n, D) outputs, row by row but for BatchNorm.
        x: (N, ...) this process's batch.
        num_splits: sub-batches of a single process; must divide N.
        generator: source of the permutation.
        module: the module `encoder` runs, for the one-forward split BatchNorm.

    Returns:
        (N, D) outputs, row i for input i.
    """
    if world_size() > 1:
        shuffled, unshuffle_index = shuffle_batch(x, generator)
        return unshuffle_batch(encoder(shuffled), unshuffle_index)
    if num_splits == 1:
        return encoder(x)
    if num_splits < 1 or x.shape[0] % num_splits:
        raise ValueError(
            f"shuffle_bn_splits={num_splits} must divide the batch of {x.shape[0]} images: one-process "
            "shuffle-BN computes the key encoder's BatchNorm statistics over that many equal sub-batches "
            "(set shuffle_bn_splits=1 to disable it)"
        )
    permutation = torch.randperm(x.shape[0], device=x.device, generator=generator)  # (N,)
    shuffled = x[permutation]  # sub-batch j: rows j * N / num_splits to (j + 1) * N / num_splits - 1
    if module is not None and can_split_batch_norm(module):
        encoded = _encode_with_split_batch_norm(encoder, shuffled, module, num_splits)  # (N, D), permuted
    else:
        encoded = torch.cat([encoder(chunk) for chunk in shuffled.chunk(num_splits)])  # (N, D), permuted
    return encoded[torch.argsort(permutation)]  # row i is the output of x[i]


# Layers whose batch statistics `split_batch_norm` computes per sub-batch (exact types: subclasses such
# as SyncBatchNorm or timm's BatchNormAct2d compute more than a BatchNorm).
_SPLITTABLE = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _uses_batch_statistics(layer: nn.Module) -> bool:
    """Whether `layer` normalizes with statistics of the batch now: a BatchNorm-like layer (torch's, or any
    layer with running statistics) in training mode, or one that keeps no running statistics."""
    running = getattr(layer, "running_mean", None), getattr(layer, "running_var", None)
    is_norm = isinstance(layer, nn.modules.batchnorm._BatchNorm) or any(r is not None for r in running)
    return is_norm and (layer.training or all(r is None for r in running))


def can_split_batch_norm(module: nn.Module) -> bool:
    """Whether every layer of `module` that normalizes with batch statistics is one `split_batch_norm`
    handles: a torch BatchNorm1d/2d/3d with a momentum (not the cumulative average)."""
    return all(
        type(layer) in _SPLITTABLE and layer.momentum is not None
        for layer in module.modules()
        if _uses_batch_statistics(layer)
    )


def _split_batch_norm_forward(layer: nn.Module, x: torch.Tensor, num_splits: int) -> torch.Tensor:
    """`layer` (a torch BatchNorm in batch-statistics mode) applied to each of the `num_splits` equal,
    consecutive sub-batches of `x` (N, C, *) with that sub-batch's statistics, in one pass.

    The MoCo authors' `SplitBatchNorm` folds the splits into channels, a view only in NCHW memory format;
    here the per-sub-batch sums are reduced directly, in float32, on a view of `x` in either format (the
    variance as E[x^2] - E[x]^2, exact enough for normalized networks' activations). The running
    statistics move once, towards the mean over sub-batches of their statistics (unbiased variances), as
    the authors' `SplitBatchNorm`; `num_batches_tracked` counts one batch.
    """
    batch, channels = x.shape[:2]
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        rows = x.permute(0, 2, 3, 1).reshape(num_splits, -1, channels)  # (S, n*H*W, C), a view
        dims, per_channel = (1,), (num_splits, 1, channels)
    else:
        rows = x.contiguous().view(num_splits, batch // num_splits, channels, -1)  # (S, n, C, L)
        dims, per_channel = (1, 3), (num_splits, 1, channels, 1)
    count = rows.numel() // (num_splits * channels)  # values per (sub-batch, channel)
    values = rows.float()  # statistics in float32 (a no-op for float32 inputs)
    mean = values.sum(dims) / count  # (S, C)
    squares = (values * values).sum(dims) / count  # (S, C)
    variance = (squares - mean.square()).clamp_(min=0)  # (S, C), biased
    scale = torch.rsqrt(variance + layer.eps)
    if layer.weight is not None:
        scale = scale * layer.weight
    shift = -mean * scale
    if layer.bias is not None:
        shift = shift + layer.bias
    if layer.training and layer.running_mean is not None:
        layer.num_batches_tracked.add_(1)
        unbiased = variance * (count / max(count - 1, 1))
        layer.running_mean.lerp_(mean.mean(0).to(layer.running_mean.dtype), layer.momentum)
        layer.running_var.lerp_(unbiased.mean(0).to(layer.running_var.dtype), layer.momentum)
    out = torch.addcmul(shift.view(per_channel).to(x.dtype), rows, scale.view(per_channel).to(x.dtype))
    if len(dims) == 1:  # back from (S, n*H*W, C) to (N, C, H, W) in channels_last
        return out.view(batch, x.shape[2], x.shape[3], channels).permute(0, 3, 1, 2)
    return out.view(x.shape)


@torch.compiler.disable  # swapping the layers' forward is not traceable: the key branch runs eagerly
def _encode_with_split_batch_norm(
    encoder: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, module: nn.Module, num_splits: int
) -> torch.Tensor:
    with split_batch_norm(module, num_splits):
        return encoder(x)


@contextlib.contextmanager
def split_batch_norm(module: nn.Module, num_splits: int) -> Iterator[None]:
    """Inside, the BatchNorms of `module` that use batch statistics normalize each of `num_splits` equal,
    consecutive sub-batches of their input with its own statistics, in one forward (the one-process
    shuffle-BN of `shuffle_bn`); layers in eval mode are left as they are. Check `can_split_batch_norm`
    first: other batch-statistics layers would still see the whole batch.
    """
    layers = [layer for layer in module.modules() if type(layer) in _SPLITTABLE]
    patched = {layer: vars(layer).get("forward") for layer in layers}  # an instance's own forward, if any
    for layer in layers:
        original = layer.forward

        def forward(x: torch.Tensor, layer=layer, original=original) -> torch.Tensor:
            if not _uses_batch_statistics(layer):
                return original(x)
            return _split_batch_norm_forward(layer, x, num_splits)

        layer.forward = forward
    try:
        yield
    finally:
        for layer, own in patched.items():
            if own is None:
                del layer.forward  # the class's forward again
            else:
                layer.forward = own

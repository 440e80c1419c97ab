"""Momentum (EMA) updates, momentum schedules and the key queue of MoCo-style methods."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn


@torch.no_grad()
def momentum_update(
    target: nn.Module | Iterable[torch.Tensor], online: nn.Module | Iterable[torch.Tensor], momentum: float
) -> None:
    """EMA of the online parameters into the target: `target = momentum * target + (1 - momentum) * online`.

    MoCo (He et al. 2020, Eq. 2) updates the key encoder this way once per step, before computing keys.
    One fused `_foreach_lerp_` call replaces a Python loop over parameters; it is exact in fp32.
    Buffers (BN running statistics) are not averaged, as in the official code.

    Args:
        target: the key (momentum) encoder, or its parameters.
        online: the query encoder, or its parameters, in the same order.
        momentum: m in [0, 1]; 1 keeps the target fixed, 0 copies the online weights.
    """
    target_params = list(target.parameters() if isinstance(target, nn.Module) else target)
    online_params = list(online.parameters() if isinstance(online, nn.Module) else online)
    if len(target_params) != len(online_params):
        raise ValueError(f"target has {len(target_params)} parameters, online has {len(online_params)}")
    if momentum == 1.0:
        return
    torch._foreach_lerp_([p.data for p in target_params], [p.data for p in online_params], 1.0 - momentum)


def cosine_momentum(step: int, total_steps: int, base_momentum: float, final_momentum: float = 1.0) -> float:
    """MoCo v3 / BYOL momentum schedule: from `base_momentum` at step 0 to `final_momentum` at the end.

    `m(step) = final - (final - base) * (cos(pi * step / total_steps) + 1) / 2`; a pure function of the step.
    """
    if total_steps <= 0:
        return base_momentum
    progress = min(max(step / total_steps, 0.0), 1.0)
    return final_momentum - (final_momentum - base_momentum) * (math.cos(math.pi * progress) + 1) / 2


@torch.no_grad()
def enqueue(queue: torch.Tensor, queue_ptr: torch.Tensor, keys: torch.Tensor) -> None:
    """Write `keys` into the FIFO `queue` at `queue_ptr`, wrapping around, and advance the pointer.

    The oldest keys are overwritten first. Works in place on the buffers, without host syncs.

    Args:
        queue: (K, D) buffer of L2-normalized keys.
        queue_ptr: one-element long buffer, the index of the oldest entry.
        keys: (B, D) new keys, B <= K.
    """
    queue_size, batch_size = queue.shape[0], keys.shape[0]
    if batch_size > queue_size:
        raise ValueError(f"cannot enqueue {batch_size} keys into a queue of size {queue_size}")
    index = (queue_ptr + torch.arange(batch_size, device=queue.device)) % queue_size
    queue.index_copy_(0, index, keys.to(queue.dtype))
    queue_ptr.copy_((queue_ptr + batch_size) % queue_size)

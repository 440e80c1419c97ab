"""Collectives used inside models (key gathering, shuffle-BN), with a single-process fallback.

Every function here works unchanged in a plain single-process run, where it is the identity.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


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

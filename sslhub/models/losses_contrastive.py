"""Contrastive losses of the MoCo family (He et al. 2020; Chen, Xie, He 2021), as pure functions of tensors.

Inside a function the paper's symbols are used: `q` queries, `k` keys, `T` temperature.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce_with_queue(
    query: torch.Tensor, key: torch.Tensor, queue: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """InfoNCE of MoCo v1/v2 (He et al. 2020, Eq. 1): one positive key per query, negatives from a queue.

    With `q` the L2-normalized queries (N, D), `k` their positive keys (N, D) and the queue (K, D),
    the logits are `[q.k, q.queue] / T` and the target is index 0 of every row.

    Returns:
        `(loss, logits)`; logits have shape (N, 1 + K).
    """
    q, k = query, key
    l_pos = (q * k).sum(dim=1, keepdim=True)  # (N, 1)
    l_neg = q @ queue.to(q.dtype).T  # (N, K)
    logits = torch.cat([l_pos, l_neg], dim=1) / temperature  # (N, 1 + K)
    labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    return F.cross_entropy(logits, labels), logits


def info_nce_in_batch(
    query: torch.Tensor, keys: torch.Tensor, temperature: float, positive_offset: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """InfoNCE of MoCo v3 (Chen, Xie, He 2021): in-batch keys, scaled by 2T.

    `q` (N, D) are this process's queries; `keys` (M, D) are the keys of the whole (gathered) batch,
    and the positive of query i is key `positive_offset + i`; every other key is a negative.
    The loss is `2T * CE(q.keys^T / T, positive_offset + i)`.

    Returns:
        `(loss, logits)`; logits have shape (N, M).
    """
    q = query
    logits = q @ keys.to(q.dtype).T / temperature  # (N, M)
    labels = torch.arange(q.shape[0], device=q.device) + positive_offset
    return F.cross_entropy(logits, labels) * (2 * temperature), logits


__all__ = ["info_nce_in_batch", "info_nce_with_queue"]

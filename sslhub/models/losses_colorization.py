"""The loss of the colorization pretext task (Zhang, Isola, Efros 2016), as a pure function of tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def colorization_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    class_weights: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Class-rebalanced multinomial cross-entropy of colorization (Zhang, Isola, Efros 2016, Eq. 2-3).

    With `Z_hat = softmax(logits)` over the Q bins, `Z` the soft-encoded target and
    `v(Z_hw) = w[argmax_q Z_hw,q]` the rebalancing weight of a pixel's most likely bin, the loss is
    `-sum_hw v(Z_hw) * sum_q Z_hw,q * log Z_hat_hw,q`, divided by the number of counted pixels (those where
    `mask` is True; grey pixels or images are left out), so uniform weights give the mean cross-entropy.

    Args:
        logits: (N, Q, h, w) predicted bin logits.
        target: (N, Q, h, w) soft-encoded target distributions.
        class_weights: (Q,) rebalancing weights `w`.
        mask: optional (N, 1, h, w) boolean mask of the pixels that count.

    Returns:
        The scalar loss (0 when no pixel counts).
    """
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    log_z_hat = F.log_softmax(logits, dim=1)  # (N, Q, h, w)
    z = target.to(log_z_hat.dtype)
    cross_entropy = -(z * log_z_hat).sum(dim=1)  # (N, h, w)
    v = class_weights.to(log_z_hat)[z.argmax(dim=1)]  # (N, h, w)
    if mask is not None:
        v = v * mask[:, 0].to(v.dtype)
        count = mask.sum().clamp_min(1)
    else:
        count = v.numel()
    return (v * cross_entropy).sum() / count


__all__ = ["colorization_cross_entropy"]

"""Loss functions of sslhub, as pure functions of tensors.

Each function cites its paper and states what it computes. Inside a function the paper's symbols are used:
`q` queries, `k` keys, `T` temperature.
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


# ---------------------------------------------------------------------------------------------------------
# Self-supervised distillation: a small student learns from a frozen teacher's embeddings.
# ---------------------------------------------------------------------------------------------------------


def _log_softmax(similarities: torch.Tensor, temperature: float) -> torch.Tensor:
    """`log_softmax(similarities / T)` over dim 1, in at least float32.

    Temperatures as small as 1e-4 (SEED's teacher) turn similarities into logits of size 1e4: the division
    happens after the cast (not in bf16/fp16), and the max-subtracting `log_softmax` keeps the result
    finite where `exp` alone would overflow.
    """
    dtype = torch.promote_types(similarities.dtype, torch.float32)
    return F.log_softmax(similarities.to(dtype) / temperature, dim=1)


def knowledge_distillation_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Hinton, Vinyals, Dean 2015: `T^2 * KL(softmax(t / T) || softmax(s / T))`, averaged over the batch.

    With `s` the student's (N, C) logits and `t` the teacher's; the `T^2` factor keeps gradient magnitudes
    independent of T.
    """
    log_p_student = _log_softmax(student_logits, temperature)
    log_p_teacher = _log_softmax(teacher_logits.detach(), temperature)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2


def embedding_regression_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Regression baseline of CompRess (Koohpayegani et al. 2020): mean squared error to the teacher embedding.

    Averages `(s - t)^2` over all N x D entries; the target (possibly batch-normalized) gets no gradient.
    """
    return F.mse_loss(student, teacher.detach().to(student.dtype))


def seed_cross_entropy(
    student: torch.Tensor,
    teacher: torch.Tensor,
    queue: torch.Tensor,
    student_temperature: float = 0.2,
    teacher_temperature: float = 1e-4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SEED (Fang et al. 2021): cross-entropy between teacher and student similarity distributions.

    With `s` (N, D) the L2-normalized student embeddings, `t` (N, D) the teacher's and the queue (K, D) of
    past teacher embeddings, both rank the anchors `[t_i, queue]`: `p^T = softmax([t.t_i, t.queue] / T_t)`,
    `p^S = softmax([s.t_i, s.queue] / T_s)`, and the loss is `-sum_j p^T_j log p^S_j`, averaged over i.

    Returns:
        `(loss, student_logits)`; the logits have shape (N, 1 + K).
    """
    s, t = student, teacher.detach().to(student.dtype)
    bank = queue.to(s.dtype)
    student_logits = torch.cat([(s * t).sum(dim=1, keepdim=True), s @ bank.T], dim=1)  # (N, 1 + K)
    teacher_logits = torch.cat([(t * t).sum(dim=1, keepdim=True), t @ bank.T], dim=1)  # (N, 1 + K)
    log_p_student = _log_softmax(student_logits, student_temperature)
    p_teacher = _log_softmax(teacher_logits, teacher_temperature).exp()
    loss = -(p_teacher * log_p_student).sum(dim=1).mean()
    return loss, student_logits / student_temperature


def compress_kl(
    student: torch.Tensor,
    teacher: torch.Tensor,
    teacher_bank: torch.Tensor,
    student_bank: torch.Tensor | None = None,
    temperature: float = 0.04,
    teacher_temperature: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """CompRess (Koohpayegani, Tejankar, Pirsiavash 2020): KL between similarity distributions over anchors.

    With `s` (N, D_s) and `t` (N, D_t) L2-normalized, the teacher's distribution over the K anchors is
    `p^T = softmax(t.teacher_bank / T_t)` and the student's `p^S = softmax(s.anchors / T)`, where the
    anchors are `teacher_bank` ("1q", then D_s = D_t) or the student embeddings of the same images
    `student_bank` ("2q"). The loss is `KL(p^T || p^S)`, averaged over the batch.

    Returns:
        `(loss, student_logits)`; the logits have shape (N, K).
    """
    s, t = student, teacher.detach()
    student_anchors = teacher_bank if student_bank is None else student_bank
    teacher_temperature = temperature if teacher_temperature is None else teacher_temperature
    student_similarities = s @ student_anchors.to(s.dtype).T  # (N, K)
    teacher_similarities = t @ teacher_bank.to(t.dtype).T  # (N, K)
    log_p_student = _log_softmax(student_similarities, temperature)
    log_p_teacher = _log_softmax(teacher_similarities, teacher_temperature)
    loss = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return loss, student_similarities / temperature


def cluster_cross_entropy(logits: torch.Tensor, pseudo_labels: torch.Tensor) -> torch.Tensor:
    """Clustering baseline of CompRess (after ClusterFit, Yan et al. 2020): cross-entropy to k-means labels.

    The student's (N, k) cluster logits are trained to predict the index of the k-means cluster of the
    teacher embedding of each image, `pseudo_labels` (N,).
    """
    return F.cross_entropy(logits, pseudo_labels)


# ---------------------------------------------------------------------------------------------------------
# Colorization (Zhang, Isola, Efros 2016)
# ---------------------------------------------------------------------------------------------------------


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

"""Self-supervised distillation losses, as pure functions of tensors: a small student learns from a frozen
teacher's embeddings (Hinton KD, regression, SEED, CompRess, k-means pseudo-labels).

Inside a function the papers' symbols are used: `s` student, `t` teacher, `T` temperature.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


def _at_least_float32(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The tensors cast to one dtype of at least float32 (float64 stays float64)."""
    dtype = functools.reduce(torch.promote_types, (x.dtype for x in tensors), torch.float32)
    return tuple(x.to(dtype) for x in tensors)


def _similarities(x: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """`x @ anchors^T` (N, K) in the inputs' dtype (float32 from `_at_least_float32`), with autocast off.

    Under bf16 autocast the product would be rounded to bf16, a step of 2^-8 near 1: at SEED's teacher
    temperature 1e-4 one such step near 0.9 is about 40 logits.
    """
    with torch.autocast(device_type=x.device.type, enabled=False):
        return x @ anchors.T


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
    Similarities are computed in float32 at least, also under autocast.

    Returns:
        `(loss, student_logits)`; the logits have shape (N, 1 + K).
    """
    s, t, bank = _at_least_float32(student, teacher.detach(), queue)  # float32 even under autocast
    student_logits = torch.cat(
        [(s * t).sum(dim=1, keepdim=True), _similarities(s, bank)], dim=1
    )  # (N, 1 + K)
    teacher_logits = torch.cat(
        [(t * t).sum(dim=1, keepdim=True), _similarities(t, bank)], dim=1
    )  # (N, 1 + K)
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
    `student_bank` ("2q"). The loss is `KL(p^T || p^S)`, averaged over the batch. Similarities are computed
    in float32 at least, also under autocast.

    Returns:
        `(loss, student_logits)`; the logits have shape (N, K).
    """
    student_anchors = teacher_bank if student_bank is None else student_bank
    teacher_temperature = temperature if teacher_temperature is None else teacher_temperature
    # float32 even under autocast
    s, t, teacher_bank, student_anchors = _at_least_float32(
        student, teacher.detach(), teacher_bank, student_anchors
    )
    student_similarities = _similarities(s, student_anchors)  # (N, K)
    teacher_similarities = _similarities(t, teacher_bank)  # (N, K)
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


__all__ = [
    "cluster_cross_entropy",
    "compress_kl",
    "embedding_regression_mse",
    "knowledge_distillation_kl",
    "seed_cross_entropy",
]

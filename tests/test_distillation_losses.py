"""Distillation losses against naive references written from the papers' formulas (float64, explicit loops)."""

import math

import pytest
import torch
import torch.nn.functional as F

from sslhub.models.losses_distillation import (
    cluster_cross_entropy,
    compress_kl,
    embedding_regression_mse,
    knowledge_distillation_kl,
    seed_cross_entropy,
)


def _unit(*shape):
    return F.normalize(torch.randn(*shape, dtype=torch.float64), dim=-1)


def _softmax(row, temperature):
    top = max(row)
    exps = [math.exp((v - top) / temperature) for v in row]
    return [e / sum(exps) for e in exps]


def _kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True) if pi > 0)


def test_knowledge_distillation_kl_matches_formula():
    student, teacher, t = torch.randn(5, 7, dtype=torch.float64), torch.randn(5, 7, dtype=torch.float64), 4.0
    expected = 0.0
    for i in range(5):  # T^2 * KL(softmax(t_i / T) || softmax(s_i / T))
        expected += _kl(_softmax(teacher[i].tolist(), t), _softmax(student[i].tolist(), t))
    loss = knowledge_distillation_kl(student, teacher, t)
    assert loss.item() == pytest.approx(t**2 * expected / 5, rel=1e-9)
    assert knowledge_distillation_kl(teacher, teacher, t).item() == pytest.approx(0.0, abs=1e-12)


def test_embedding_regression_mse_matches_formula():
    student, teacher = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    expected = sum((student[i, d].item() - teacher[i, d].item()) ** 2 for i in range(4) for d in range(6))
    assert embedding_regression_mse(student, teacher).item() == pytest.approx(expected / 24, rel=1e-12)


def _naive_seed(student, teacher, queue, t_student, t_teacher):
    total = 0.0
    for i in range(student.shape[0]):  # anchors: [own teacher key t_i, queue_1..K]
        anchors = [teacher[i]] + list(queue)
        p_teacher = _softmax([float(teacher[i] @ a) for a in anchors], t_teacher)
        p_student = _softmax([float(student[i] @ a) for a in anchors], t_student)
        total += -sum(pt * math.log(ps) for pt, ps in zip(p_teacher, p_student, strict=True))
    return total / student.shape[0]


@pytest.mark.parametrize("teacher_temperature", [0.07, 0.02])
def test_seed_matches_formula(teacher_temperature):
    s, t, queue = _unit(4, 8), _unit(4, 8), _unit(6, 8)
    loss, logits = seed_cross_entropy(s, t, queue, 0.2, teacher_temperature)
    assert logits.shape == (4, 7)
    expected = _naive_seed(s, t, queue, 0.2, teacher_temperature)
    assert loss.item() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_seed_is_stable_at_the_authors_teacher_temperature(dtype):
    # At T_t = 1e-4 the teacher's distribution is one-hot on its own key (similarity 1 beats the queue), so
    # the loss is the cross-entropy of the student's logits with target 0; exp(1 / 1e-4) would overflow.
    s, t, queue = _unit(4, 8), _unit(4, 8), _unit(6, 8) * 0.9
    loss, logits = seed_cross_entropy(s.to(dtype), t.to(dtype), queue.to(dtype), 0.2, 1e-4)
    assert torch.isfinite(loss)
    hard = F.cross_entropy(logits.double(), torch.zeros(4, dtype=torch.long))
    tolerance = 1e-9 if dtype == torch.float64 else 5e-2
    assert loss.item() == pytest.approx(hard.item(), rel=tolerance)


@pytest.mark.parametrize("two_queues", [False, True], ids=["1q", "2q"])
def test_compress_matches_formula(two_queues):
    s, t, teacher_bank, student_bank = _unit(3, 5), _unit(3, 5), _unit(9, 5), _unit(9, 5)
    temperature = 0.04
    loss, logits = compress_kl(s, t, teacher_bank, student_bank if two_queues else None, temperature)
    student_anchors = student_bank if two_queues else teacher_bank
    expected = 0.0
    for i in range(3):  # KL(p^T || p^S) over the K anchors
        p_teacher = _softmax([float(t[i] @ a) for a in teacher_bank], temperature)
        p_student = _softmax([float(s[i] @ a) for a in student_anchors], temperature)
        expected += _kl(p_teacher, p_student)
    assert logits.shape == (3, 9)
    assert loss.item() == pytest.approx(expected / 3, rel=1e-9)


def test_compress_with_its_own_teacher_temperature():
    s, t, bank = _unit(2, 4), _unit(2, 4), _unit(5, 4)
    loss, _ = compress_kl(s, t, bank, temperature=0.1, teacher_temperature=0.05)
    expected = sum(
        _kl(_softmax([float(t[i] @ a) for a in bank], 0.05), _softmax([float(s[i] @ a) for a in bank], 0.1))
        for i in range(2)
    )
    assert loss.item() == pytest.approx(expected / 2, rel=1e-9)


def test_cluster_cross_entropy_matches_formula():
    logits, labels = torch.randn(4, 5, dtype=torch.float64), torch.tensor([0, 4, 2, 2])
    expected = sum(-math.log(_softmax(logits[i].tolist(), 1.0)[int(labels[i])]) for i in range(4)) / 4
    assert cluster_cross_entropy(logits, labels).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("name", ["kl", "mse", "seed", "compress_2q"])
def test_gradient_flows_to_the_student_only(name):
    student = _unit(3, 4).requires_grad_()
    teacher = _unit(3, 4).requires_grad_()
    bank = _unit(5, 4)
    loss = {
        "kl": lambda: knowledge_distillation_kl(student, teacher, 2.0),
        "mse": lambda: embedding_regression_mse(student, teacher),
        "seed": lambda: seed_cross_entropy(student, teacher, bank)[0],
        "compress_2q": lambda: compress_kl(student, teacher, bank, _unit(5, 4))[0],
    }[name]()
    loss.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


@pytest.mark.parametrize("name", ["seed", "compress_1q", "compress_2q"])
def test_similarity_losses_stay_float32_under_bf16_autocast(name):
    # fp32 embeddings of an fp32 model; under autocast the similarity matmuls would be rounded to bf16 (a step of
    # 2^-8 near 1), about 40 logits at SEED's teacher temperature 1e-4 near 0.9. The loss must be the formula's.
    s, t, teacher_bank, student_bank = (
        x.float() for x in (_unit(4, 32), _unit(4, 32), _unit(50, 32), _unit(50, 32))
    )
    teacher_bank[:10] = F.normalize(
        t.repeat(3, 1)[:10] + 0.45 * teacher_bank[:10], dim=1
    )  # near the teacher key
    with torch.autocast("cpu", dtype=torch.bfloat16):
        if name == "seed":
            loss, logits = seed_cross_entropy(s, t, teacher_bank, 0.2, 1e-4)
        else:
            loss, logits = compress_kl(
                s, t, teacher_bank, student_bank if name == "compress_2q" else None, 0.04
            )
    assert loss.dtype == logits.dtype == torch.float32
    s, t, teacher_bank, student_bank = (x.double() for x in (s, t, teacher_bank, student_bank))
    if name == "seed":
        expected = _naive_seed(s, t, teacher_bank, 0.2, 1e-4)
    else:
        anchors = student_bank if name == "compress_2q" else teacher_bank
        expected = (
            sum(
                _kl(
                    _softmax([float(t[i] @ a) for a in teacher_bank], 0.04),
                    _softmax([float(s[i] @ a) for a in anchors], 0.04),
                )
                for i in range(4)
            )
            / 4
        )
    assert loss.item() == pytest.approx(expected, rel=1e-5)

"""Losses and updates against naive references written from the papers' formulas."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sslhub.models.losses_contrastive import info_nce_in_batch, info_nce_with_queue
from sslhub.models.momentum import cosine_momentum, enqueue, momentum_update


def _unit(*shape):
    return F.normalize(torch.randn(*shape, dtype=torch.float64), dim=-1)


def test_info_nce_with_queue_matches_formula():
    q, k, queue, t = _unit(5, 8), _unit(5, 8), _unit(7, 8), 0.07
    loss, logits = info_nce_with_queue(q, k, queue, t)
    expected = []
    for i in range(5):  # -log exp(q.k+/T) / (exp(q.k+/T) + sum_j exp(q.queue_j/T))
        pos = math.exp(float(q[i] @ k[i]) / t)
        neg = sum(math.exp(float(q[i] @ queue[j]) / t) for j in range(7))
        expected.append(-math.log(pos / (pos + neg)))
    assert logits.shape == (5, 8)
    assert loss.item() == pytest.approx(sum(expected) / 5, rel=1e-9)


def test_info_nce_in_batch_matches_formula_with_offset():
    # Two processes' worth of keys; this process is rank 1, its positives sit at 4 + i.
    q, keys, t = _unit(4, 6), _unit(8, 6), 0.2
    loss, logits = info_nce_in_batch(q, keys, t, positive_offset=4)
    expected = 0.0
    for i in range(4):
        row = [math.exp(float(q[i] @ keys[j]) / t) for j in range(8)]
        expected += -math.log(row[4 + i] / sum(row))
    assert logits.shape == (4, 8)
    assert loss.item() == pytest.approx(2 * t * expected / 4, rel=1e-9)


def test_info_nce_gradient_flows_to_query_only():
    q = _unit(3, 4).requires_grad_()
    k = _unit(3, 4).requires_grad_()
    loss, _ = info_nce_with_queue(q, k.detach(), _unit(5, 4), 0.1)
    loss.backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert k.grad is None


def test_momentum_update_is_the_ema():
    online, target = nn.Linear(3, 2), nn.Linear(3, 2)
    before = [p.detach().clone() for p in target.parameters()]
    momentum_update(target, online, 0.9)
    for t, o, b in zip(target.parameters(), online.parameters(), before, strict=True):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * o.detach(), rtol=0, atol=1e-7)


def test_momentum_update_extremes():
    online, target = nn.Linear(3, 2), nn.Linear(3, 2)
    frozen = [p.detach().clone() for p in target.parameters()]
    momentum_update(target, online, 1.0)
    assert all(torch.equal(a, b) for a, b in zip(target.parameters(), frozen, strict=True))
    momentum_update(target, online, 0.0)
    assert all(torch.equal(a, b) for a, b in zip(target.parameters(), online.parameters(), strict=True))


def test_cosine_momentum_schedule():
    assert cosine_momentum(0, 100, 0.99) == pytest.approx(0.99)
    assert cosine_momentum(50, 100, 0.99) == pytest.approx(0.995)
    assert cosine_momentum(100, 100, 0.99) == pytest.approx(1.0)
    values = [cosine_momentum(s, 100, 0.99) for s in range(101)]
    assert values == sorted(values)


def test_queue_is_fifo_with_wraparound():
    queue, ptr = torch.zeros(5, 2), torch.zeros(1, dtype=torch.long)
    reference = [None] * 5  # naive FIFO: slot (ptr + i) % K receives key i
    reference_ptr = 0
    for step in range(4):
        keys = torch.full((2, 2), float(step + 1)) + torch.arange(2.0)[:, None]
        enqueue(queue, ptr, keys)
        for row in keys:
            reference[reference_ptr] = row
            reference_ptr = (reference_ptr + 1) % 5
        assert ptr.item() == reference_ptr
    assert torch.equal(queue, torch.stack(reference))


def test_enqueue_rejects_too_many_keys():
    with pytest.raises(ValueError, match="queue of size 2"):
        enqueue(torch.zeros(2, 3), torch.zeros(1, dtype=torch.long), torch.zeros(3, 3))

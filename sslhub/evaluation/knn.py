"""Weighted kNN (InstDisc, Wu et al. 2018), the standard monitor of self-supervised training: cosine
similarity to a bank of labelled training features, the k most similar vote for their class with weight
exp(s / T)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


@torch.no_grad()
def knn_predict(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Weighted kNN class scores (InstDisc): cosine similarity, top-k neighbours vote exp(s / T).

    Memory stays at `chunk_size x N_train` similarities, so 10,000 queries against 50,000 bank
    features need about 200 MB at the default chunk size.

    Args:
        train_features: (N, D) bank features (normalized here).
        train_labels: (N,) bank labels in [0, num_classes).
        test_features: (M, D) query features (normalized here).
        num_classes: number of classes C.
        k: neighbours; clipped to N.
        temperature: T of the vote weights.
        chunk_size: queries handled at once.

    Returns:
        (M, C) summed vote weights per class; `argmax(1)` is the prediction.
    """
    bank = F.normalize(train_features.float(), dim=1)
    labels = train_labels.to(bank.device).long()
    k = min(k, bank.shape[0])
    scores = []
    for start in range(0, test_features.shape[0], chunk_size):
        queries = F.normalize(test_features[start : start + chunk_size].float().to(bank.device), dim=1)
        similarity = queries @ bank.T  # (m, N)
        top_similarity, top_index = similarity.topk(k, dim=1)  # (m, k)
        weights = (top_similarity / temperature).exp()
        votes = torch.zeros(queries.shape[0], num_classes, device=bank.device)
        votes.scatter_add_(1, labels[top_index], weights)  # (m, C)
        scores.append(votes)
    return torch.cat(scores)


def knn_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    k: int = 200,
    temperature: float = 0.1,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> float:
    """Top-1 accuracy (in [0, 1]) of the weighted kNN classifier."""
    num_classes = num_classes or int(max(train_labels.max(), test_labels.max())) + 1
    scores = knn_predict(train_features, train_labels, test_features, num_classes, k, temperature, chunk_size)
    return (scores.argmax(1).cpu() == test_labels.cpu()).float().mean().item()


@torch.no_grad()
def nearest_neighbours(
    bank_features: torch.Tensor, query_features: torch.Tensor, k: int = 8, exclude_self: bool = False
) -> torch.Tensor:
    """(M, k) indices of the most cosine-similar bank rows of each query (for retrieval pictures).

    With `exclude_self`, the queries are the bank's first M rows and each is left out of its own list.
    """
    bank = F.normalize(bank_features.float(), dim=1)
    similarity = F.normalize(query_features.float(), dim=1) @ bank.T  # (M, N)
    if exclude_self:
        similarity[torch.arange(len(query_features)), torch.arange(len(query_features))] = -math.inf
    return similarity.topk(min(k, bank.shape[0]), dim=1).indices

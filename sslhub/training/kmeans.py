"""k-means in torch: the pseudo-labels of the clustering baseline of distillation (CompRess, after ClusterFit)."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def _squared_distances(x: torch.Tensor, centroids: torch.Tensor, chunk_size: int) -> Iterable[torch.Tensor]:
    """Yield (chunk, k) squared Euclidean distances, `|x|^2 - 2 x.c + |c|^2`, for chunks of rows of x."""
    centroid_norms = centroids.pow(2).sum(dim=1)  # (k,)
    for start in range(0, x.shape[0], chunk_size):
        chunk = x[start : start + chunk_size]
        distances = chunk.pow(2).sum(dim=1, keepdim=True) - 2 * chunk @ centroids.T + centroid_norms  # (n, k)
        yield distances.clamp_min_(0)


@torch.no_grad()
def assign_clusters(
    features: torch.Tensor, centroids: torch.Tensor, chunk_size: int = 16384
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid of every feature vector.

    Args:
        features: (N, D) vectors.
        centroids: (k, D) cluster centres.
        chunk_size: rows per distance block, bounding memory to `chunk_size x k`.

    Returns:
        `(labels, squared_distances)`: (N,) long indices of the nearest centroid and (N,) the squared
        distance to it.
    """
    dtype = torch.promote_types(features.dtype, torch.float32)
    x, c = features.to(dtype), centroids.to(device=features.device, dtype=dtype)
    labels, distances = [], []
    for block in _squared_distances(x, c, chunk_size):
        distance, label = block.min(dim=1)
        labels.append(label)
        distances.append(distance)
    return torch.cat(labels), torch.cat(distances)


@torch.no_grad()
def kmeans(
    features: torch.Tensor,
    num_clusters: int,
    iters: int = 50,
    seed: int = 0,
    chunk_size: int = 16384,
) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means (Lloyd's algorithm) with k-means++ initialization (Arthur & Vassilvitskii 2007), in torch.

    Minimizes the sum of squared Euclidean distances of the vectors to their cluster centre. A cluster
    that loses all its members is re-seeded with the vector farthest from its own centre. For cosine
    clustering of embeddings, L2-normalize `features` first.

    Args:
        features: (N, D) vectors, on any device.
        num_clusters: k, at most N.
        iters: maximum number of Lloyd iterations; stops earlier once no assignment changes.
        seed: seed of the k-means++ sampling (results are reproducible for a given seed and device).
        chunk_size: rows per distance block, bounding memory to `chunk_size x k`.

    Returns:
        `(centroids, labels)`: (k, D) centres and (N,) long cluster index of every vector.
    """
    num_points = features.shape[0]
    if not 1 <= num_clusters <= num_points:
        raise ValueError(
            f"num_clusters must be in [1, {num_points}] (the number of vectors), got {num_clusters}"
        )
    dtype = torch.promote_types(features.dtype, torch.float32)
    x = features.to(dtype)
    generator = torch.Generator(device="cpu").manual_seed(seed)

    # k-means++: each new centre is drawn with probability proportional to the squared distance to the
    # nearest centre chosen so far.
    first = int(torch.randint(num_points, (1,), generator=generator))
    centroids = x.new_empty(num_clusters, x.shape[1])
    centroids[0] = x[first]
    nearest = torch.cat(list(_squared_distances(x, centroids[:1], chunk_size)))[:, 0]  # (N,)
    for index in range(1, num_clusters):
        weights = nearest.double().cpu()
        if weights.sum() <= 0:  # fewer distinct points than clusters: any point will do
            weights = torch.ones_like(weights)
        choice = int(torch.multinomial(weights, 1, generator=generator))
        centroids[index] = x[choice]
        new = torch.cat(list(_squared_distances(x, centroids[index : index + 1], chunk_size)))[:, 0]
        nearest = torch.minimum(nearest, new)

    labels = None
    for _ in range(max(iters, 1)):
        new_labels, distances = assign_clusters(x, centroids, chunk_size)
        if labels is not None and torch.equal(new_labels, labels):
            break
        labels = new_labels
        counts = torch.bincount(labels, minlength=num_clusters)  # (k,)
        sums = torch.zeros_like(centroids).index_add_(0, labels, x)  # (k, D)
        centroids = sums / counts.clamp_min(1).unsqueeze(1).to(dtype)
        empty = (counts == 0).nonzero().flatten()
        if len(empty):
            farthest = distances.topk(len(empty)).indices
            centroids[empty] = x[farthest]
    labels, _ = assign_clusters(x, centroids, chunk_size)  # consistent with the final centres
    return centroids, labels

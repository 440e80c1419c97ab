"""k-means in torch: the pseudo-labels of the clustering baseline of distillation (CompRess, after ClusterFit)."""

from __future__ import annotations

import math
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


def _weighted_kmeans_plus_plus(
    candidates: torch.Tensor, weights: torch.Tensor, k: int, generator: torch.Generator
) -> torch.Tensor:
    """Greedy k-means++ (Arthur & Vassilvitskii 2007; the greedy variant sklearn uses) on a small weighted
    candidate set: each new centre is the best of `2 + log k` draws proportional to weight x squared
    distance, the one that lowers the weighted potential most. Returns k rows of `candidates`."""
    trials = 2 + int(math.log(k))
    weights = weights.double()
    squared = torch.cdist(candidates.double(), candidates.double()).pow(2)  # (M, M)
    chosen = [int(torch.multinomial(weights, 1, generator=generator))]
    nearest = squared[chosen[0]]  # (M,)
    for _ in range(1, k):
        score = weights * nearest
        if score.sum() <= 0:  # fewer distinct candidates than clusters: any will do
            score = torch.ones_like(score)
        draws = torch.multinomial(score, trials, replacement=True, generator=generator)  # (trials,)
        potentials = (weights * torch.minimum(nearest, squared[draws])).sum(dim=1)  # (trials,)
        best = int(draws[potentials.argmin()])
        chosen.append(best)
        nearest = torch.minimum(nearest, squared[best])
    return candidates[chosen]


def kmeans_parallel_init(
    x: torch.Tensor, k: int, generator: torch.Generator, rounds: int = 5, chunk_size: int = 16384
) -> torch.Tensor:
    """k-means|| (Bahmani et al. 2012): k-means++-quality starting centres in `rounds` passes over the data
    instead of k.

    Each round samples every point with probability `min(1, 2k d^2(x) / sum d^2)`, `d` the distance to the
    nearest candidate so far; the candidates, weighted by how many points are nearest to each, are then
    reduced to k centres by k-means++.
    """
    num_points = x.shape[0]
    candidates = x[torch.randint(num_points, (1,), generator=generator)]
    nearest = torch.cat(list(_squared_distances(x, candidates, chunk_size)))[:, 0]  # (N,)
    for _ in range(rounds):
        total = nearest.sum()
        if total <= 0:
            break
        probability = (2 * k * nearest / total).clamp(max=1).cpu()
        picked = (torch.rand(num_points, generator=generator) < probability).nonzero().flatten()
        if len(picked) == 0:
            continue
        new = x[picked.to(x.device)]
        candidates = torch.cat([candidates, new])
        distances = torch.cat(list(_squared_distances(x, new, chunk_size))).min(dim=1).values
        nearest = torch.minimum(nearest, distances)
    if len(candidates) < k:  # too few candidates (duplicates): top up with random points
        extra = torch.randperm(num_points, generator=generator)[: k - len(candidates)]
        candidates = torch.cat([candidates, x[extra.to(x.device)]])
    owner, _ = assign_clusters(x, candidates, chunk_size)
    weights = torch.bincount(owner, minlength=len(candidates)).float().cpu()
    return _weighted_kmeans_plus_plus(candidates.cpu(), weights, k, generator).to(x)


def _faiss_kmeans(x: torch.Tensor, k: int, iters: int, seed: int) -> torch.Tensor:
    import faiss

    data = x.detach().float().cpu().contiguous().numpy()
    clustering = faiss.Kmeans(
        data.shape[1], k, niter=max(iters, 1), seed=seed, verbose=False, max_points_per_centroid=100000
    )
    clustering.train(data)
    return torch.from_numpy(clustering.centroids).to(x)


def faiss_available() -> bool:
    """Whether the optional faiss backend is installed (`pip install 'sslhub[faiss]'`)."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


@torch.no_grad()
def kmeans(
    features: torch.Tensor,
    num_clusters: int,
    iters: int = 50,
    seed: int = 0,
    chunk_size: int = 16384,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means: the (k, D) centres and (N,) cluster of every vector, minimizing squared Euclidean distances.

    Backends: `"faiss"` (`faiss.Kmeans`, the optional extra `sslhub[faiss]`: fast on millions of vectors),
    `"torch"` (k-means|| initialization, then Lloyd's iterations in chunks on the features' device; a
    cluster that loses all its members is re-seeded with the vector farthest from its centre), or
    `"auto"`: faiss when installed, else torch. For cosine clustering of embeddings, L2-normalize first.

    Args:
        features: (N, D) vectors, on any device.
        num_clusters: k, at most N.
        iters: maximum number of Lloyd iterations; torch stops earlier once no assignment changes.
        seed: seed of the initialization (results are reproducible for a given seed, backend and device).
        chunk_size: rows per distance block (torch), bounding memory to `chunk_size x k`.
        backend: `"auto"`, `"faiss"` or `"torch"`.

    Returns:
        `(centroids, labels)`, the labels consistent with the returned centres.
    """
    num_points = features.shape[0]
    if not 1 <= num_clusters <= num_points:
        raise ValueError(
            f"num_clusters must be in [1, {num_points}] (the number of vectors), got {num_clusters}"
        )
    if backend not in ("auto", "faiss", "torch"):
        raise ValueError(f"backend must be 'auto', 'faiss' or 'torch', got {backend!r}")
    if backend == "faiss" and not faiss_available():
        raise ImportError("backend='faiss' needs faiss: pip install 'sslhub[faiss]'")
    dtype = torch.promote_types(features.dtype, torch.float32)
    x = features.to(dtype)
    if backend == "faiss" or (backend == "auto" and faiss_available()):
        centroids = _faiss_kmeans(x, num_clusters, iters, seed)
        labels, _ = assign_clusters(x, centroids, chunk_size)
        return centroids, labels

    generator = torch.Generator(device="cpu").manual_seed(seed)
    centroids = kmeans_parallel_init(x, num_clusters, generator, chunk_size=chunk_size)
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

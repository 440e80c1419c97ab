"""Pictures of an evaluation, saved as PNG: an embedding map, a retrieval grid, training curves, a confusion
matrix.

matplotlib and scikit-learn (t-SNE) are optional: install them with `pip install "sslhub[plots]"`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

DEFAULT_CURVES = ("train/loss", "train/lr", "train/momentum", "monitor/knn_top1")


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError('plots need matplotlib: pip install "sslhub[plots]"') from error
    return plt


def _save(figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    _pyplot().close(figure)
    return path


def embed_2d(features: torch.Tensor | np.ndarray, method: str = "tsne", seed: int = 0) -> np.ndarray:
    """Map (N, D) features to (N, 2) with t-SNE (scikit-learn) or UMAP (umap-learn), on L2-normalized rows."""
    x = np.asarray(features, dtype=np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    if method == "tsne":
        try:
            from sklearn.manifold import TSNE
        except ImportError as error:
            raise ImportError('t-SNE maps need scikit-learn: pip install "sslhub[plots]"') from error
        perplexity = float(min(30, max(2, (len(x) - 1) // 3)))
        return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
    if method == "umap":
        try:
            import umap
        except ImportError as error:
            raise ImportError("UMAP maps need umap-learn: pip install umap-learn") from error
        return umap.UMAP(n_components=2, metric="cosine", random_state=seed).fit_transform(x)
    raise ValueError(f"method must be 'tsne' or 'umap', got {method!r}")


def plot_embedding_map(
    features: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    class_names: Sequence[str] | None,
    path: str | os.PathLike,
    method: str = "tsne",
    title: str | None = None,
    seed: int = 0,
) -> Path:
    """Save a 2-D map (t-SNE or UMAP) of embeddings, one colour per class.

    Args:
        features: (N, D) embeddings (a few thousand at most: t-SNE is quadratic).
        labels: (N,) integer classes.
        class_names: names for the legend; class indices when `None`.
        path: the PNG file to write.
        method: `"tsne"` or `"umap"`.
        title: figure title.
        seed: seed of the projection.

    Returns:
        The path written.
    """
    plt = _pyplot()
    points = embed_2d(features, method, seed)
    labels = np.asarray(labels)
    classes = np.unique(labels)
    colours = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    figure, axis = plt.subplots(figsize=(7, 6))
    for i, label in enumerate(classes):
        mask = labels == label
        name = class_names[int(label)] if class_names is not None else str(int(label))
        axis.scatter(
            points[mask, 0], points[mask, 1], s=6, color=colours(i % colours.N), label=name, alpha=0.8
        )
    axis.set_xticks([])
    axis.set_yticks([])
    axis.set_title(title or f"{method.upper() if method == 'umap' else 't-SNE'} of test embeddings")
    if len(classes) <= 20:
        axis.legend(markerscale=3, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    return _save(figure, path)


def _as_array(image) -> np.ndarray:
    """An (H, W, 3) uint8 array from a PIL image or a (3, H, W) / (H, W, 3) tensor in [0, 1] or [0, 255]."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    array = (
        image.detach().cpu().float().numpy() if isinstance(image, torch.Tensor) else np.asarray(image, float)
    )
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = array.transpose(1, 2, 0)
    if array.max() <= 1.0 + 1e-6:
        array = array * 255
    array = np.clip(array, 0, 255).astype(np.uint8)
    return np.repeat(array, 3, axis=2) if array.shape[2] == 1 else array


def plot_retrieval_grid(
    query_images: Sequence,
    neighbour_images: Sequence[Sequence],
    path: str | os.PathLike,
    query_labels: Sequence[str] | None = None,
    neighbour_labels: Sequence[Sequence[str]] | None = None,
    title: str | None = None,
) -> Path:
    """Save a grid with one row per query: the query image, then its nearest neighbours in order.

    Args:
        query_images: M images (PIL, or tensors in [0, 1] of shape (3, H, W)); un-normalize first.
        neighbour_images: M lists of k images each.
        path: the PNG file to write.
        query_labels / neighbour_labels: optional captions (class names); a neighbour whose caption
            differs from its query's is framed in red.
        title: figure title.

    Returns:
        The path written.
    """
    plt = _pyplot()
    rows = len(query_images)
    if rows == 0 or len(neighbour_images) != rows:
        raise ValueError("need one list of neighbours per query, and at least one query")
    columns = 1 + max(len(n) for n in neighbour_images)
    figure, axes = plt.subplots(
        rows, columns, figsize=(1.3 * columns, 1.4 * rows + 0.4), squeeze=False, layout="constrained"
    )
    for row in range(rows):
        images = [query_images[row], *neighbour_images[row]]
        captions = [None] * len(images)
        if query_labels is not None:
            captions = [
                query_labels[row],
                *(neighbour_labels[row] if neighbour_labels else [None] * (len(images) - 1)),
            ]
        for column, axis in enumerate(axes[row]):
            axis.set_xticks([])
            axis.set_yticks([])
            for spine in axis.spines.values():
                spine.set_visible(False)
            if column >= len(images):
                continue
            axis.imshow(_as_array(images[column]))
            if captions[column] is not None:
                axis.set_xlabel(captions[column], fontsize=7)
            wrong = column > 0 and captions[column] is not None and captions[column] != captions[0]
            colour = "black" if column == 0 else ("red" if wrong else None)
            if colour is not None:
                for spine in axis.spines.values():
                    spine.set_visible(True)
                    spine.set_color(colour)
                    spine.set_linewidth(2.5 if column == 0 else 2)
        axes[row][0].set_ylabel("query" if row == 0 else "", fontsize=8)
    figure.suptitle(title or "Nearest neighbours (cosine) of test queries among training images", fontsize=10)
    return _save(figure, path)


def read_scalars(log_dir: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every scalar of the TensorBoard event files under `log_dir`: `{tag: (steps, values)}`, by step.

    Runs in subfolders (as Accelerate's TensorBoard tracker writes them) are read too; a step logged
    twice (after a resume) keeps its last value.
    """
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError as error:
        raise ImportError("reading training logs needs tensorboard: pip install tensorboard") from error
    folders = sorted({p.parent for p in Path(log_dir).rglob("events.out.tfevents.*")})
    points: dict[str, dict[int, float]] = {}
    for folder in folders:
        accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags().get("scalars", []):
            for event in accumulator.Scalars(tag):
                points.setdefault(tag, {})[event.step] = event.value
    return {
        tag: (np.array(sorted(values)), np.array([values[s] for s in sorted(values)]))
        for tag, values in points.items()
    }


def plot_training_curves(
    log_dir: str | os.PathLike,
    path: str | os.PathLike,
    tags: Sequence[str] | None = None,
) -> Path:
    """Save the training curves of a run from its TensorBoard logs, one panel per scalar.

    Args:
        log_dir: the run's logging folder (searched recursively for event files).
        path: the PNG file to write.
        tags: the scalars to draw; by default those of `DEFAULT_CURVES` that were logged
            (`train/loss`, `train/lr`, `train/momentum`, `monitor/knn_top1`), or every scalar if none was.

    Returns:
        The path written.

    Raises:
        FileNotFoundError: when `log_dir` holds no scalar (or none of `tags`).
    """
    plt = _pyplot()
    scalars = read_scalars(log_dir)
    if tags is None:
        tags = [t for t in DEFAULT_CURVES if t in scalars] or sorted(scalars)
    tags = [t for t in tags if t in scalars]
    if not tags:
        raise FileNotFoundError(f"no TensorBoard scalars to plot under {log_dir}")
    columns = min(2, len(tags))
    rows = (len(tags) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3 * rows), squeeze=False)
    for axis, tag in zip(axes.flat, tags, strict=False):
        steps, values = scalars[tag]
        axis.plot(steps, values, marker="o" if len(steps) <= 30 else None, markersize=3)
        axis.set_title(tag, fontsize=10)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(tags) :]:
        axis.set_visible(False)
    figure.tight_layout()
    return _save(figure, path)


def plot_confusion_matrix(
    matrix: torch.Tensor | np.ndarray,
    class_names: Sequence[str] | None,
    path: str | os.PathLike,
    title: str | None = None,
) -> Path:
    """Save a confusion matrix as a heat map of row-normalized rates, each cell annotated in percent.

    Args:
        matrix: (C, C) counts, row = true class, column = predicted class (`confusion_matrix`).
        class_names: the C class names; indices when `None`.
        path: the PNG file to write.
        title: figure title; the overall accuracy is appended.

    Returns:
        The path written.
    """
    plt = _pyplot()
    counts = np.asarray(matrix, dtype=np.float64)
    rates = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    size = len(counts)
    names = list(class_names) if class_names is not None else [str(i) for i in range(size)]
    figure, axis = plt.subplots(figsize=(1.0 + 0.62 * size, 0.8 + 0.55 * size))
    image = axis.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for row in range(size):
        for column in range(size):
            value = rates[row, column]
            axis.text(
                column,
                row,
                f"{100 * value:.0f}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if value > 0.5 else "black",
            )
    axis.set_xticks(range(size), names, rotation=45, ha="right", fontsize=8)
    axis.set_yticks(range(size), names, fontsize=8)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    axis.set_title(f"{title or 'Confusion matrix'} (top-1 {100 * accuracy:.1f}%)", fontsize=10)
    figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04, label="fraction of the true class")
    return _save(figure, path)


def model_log_dirs(model: str) -> list[Path]:
    """Where a pre-training run keeps its TensorBoard logs next to a model: `output_dir/logs` of a model
    saved in `output_dir/final`, or `logs` inside the model's folder."""
    return [Path(model).parent / "logs", Path(model) / "logs"]


def plot_evaluation(
    output_dir: str | os.PathLike,
    features: dict,
    train_data,
    eval_data,
    names: Sequence[str] | None,
    confusion: torch.Tensor,
    title: str,
    seed: int = 0,
    log_dirs: Sequence[str | os.PathLike] = (),
) -> None:
    """The pictures of `recipes/evaluate.py --plots`: the confusion matrix, a t-SNE map of 2,000 held-out
    embeddings, the 8 nearest training images of 8 held-out ones, and the training curves of the first of
    `log_dirs` that holds TensorBoard logs.

    `features` holds `train` and `eval` as (embeddings, labels, row indices into `train_data` /
    `eval_data`), the datasets' rows with an `image` column.
    """
    from ..data import decode_image
    from .knn import nearest_neighbours

    output_dir = Path(output_dir)
    plot_confusion_matrix(confusion, names, output_dir / "confusion_matrix.png", title=title)
    generator = torch.Generator().manual_seed(seed)
    (train_x, train_y, train_index), (eval_x, eval_y, eval_index) = features["train"], features["eval"]
    # t-SNE is quadratic: 2,000 test points show the structure in seconds.
    subset = torch.randperm(len(eval_x), generator=generator)[:2000]
    plot_embedding_map(eval_x[subset], eval_y[subset], names, output_dir / "embedding_map.png", seed=seed)

    queries = torch.randperm(len(eval_x), generator=generator)[:8]
    neighbours = nearest_neighbours(train_x, eval_x[queries], k=8)

    def image(dataset, index):
        picture = decode_image(dataset[int(index)]["image"]).copy()
        picture.thumbnail((96, 96))
        return picture

    def caption(label):
        return names[int(label)] if names else str(int(label))

    plot_retrieval_grid(
        [image(eval_data, eval_index[q]) for q in queries],
        [[image(train_data, train_index[n]) for n in row] for row in neighbours],
        output_dir / "retrieval_grid.png",
        query_labels=[caption(eval_y[q]) for q in queries],
        neighbour_labels=[[caption(train_y[n]) for n in row] for row in neighbours],
    )

    log_dir = next((Path(d) for d in log_dirs if any(Path(d).rglob("events.out.tfevents.*"))), None)
    if log_dir is not None:
        plot_training_curves(log_dir, output_dir / "training_curves.png")
    else:
        print("no TensorBoard logs found for the training curves; pass --log_dir")

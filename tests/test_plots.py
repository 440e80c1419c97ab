"""The evaluation pictures: embedding map, retrieval grid, training curves from TensorBoard logs."""

import pytest
import torch
from PIL import Image

from sslhub.evaluation.plots import (
    plot_embedding_map,
    plot_retrieval_grid,
    plot_training_curves,
    read_scalars,
)

PNG = b"\x89PNG\r\n\x1a\n"


def _png(path):
    data = path.read_bytes()
    assert data[:8] == PNG
    return Image.open(path).size


def test_embedding_map_of_60_points(tmp_path):
    labels = torch.arange(3).repeat(20)
    features = torch.randn(3, 16)[labels] * 4 + torch.randn(60, 16)
    width, height = _png(plot_embedding_map(features, labels, ["cat", "dog", "ship"], tmp_path / "map.png"))
    assert width > 300 and height > 300
    with pytest.raises(ValueError, match="tsne"):
        plot_embedding_map(features, labels, None, tmp_path / "other.png", method="pca")


def test_retrieval_grid_takes_tensors_and_pil_images(tmp_path):
    queries = [torch.rand(3, 32, 32), Image.new("RGB", (40, 30), (0, 128, 255))]
    neighbours = [[torch.rand(3, 32, 32) for _ in range(4)], [Image.new("L", (32, 32), 90) for _ in range(3)]]
    path = plot_retrieval_grid(
        queries,
        neighbours,
        tmp_path / "grid.png",
        query_labels=["cat", "dog"],
        neighbour_labels=[["cat", "dog", "cat", "cat"], ["dog", "dog", "cat"]],
    )
    width, height = _png(path)
    assert width > height  # 2 rows of 1 query + 4 neighbours
    with pytest.raises(ValueError, match="one list of neighbours per query"):
        plot_retrieval_grid(queries, neighbours[:1], tmp_path / "bad.png")


def test_training_curves_from_tensorboard_logs(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(tmp_path / "logs" / "run")
    for step in range(20):
        writer.add_scalar("train/loss", 5.0 - 0.1 * step, step)
        writer.add_scalar("train/lr", 0.03, step)
        if step % 5 == 0:
            writer.add_scalar("monitor/knn_top1", 0.1 + 0.01 * step, step)
    writer.close()
    scalars = read_scalars(tmp_path / "logs")
    assert set(scalars) == {"train/loss", "train/lr", "monitor/knn_top1"}
    steps, values = scalars["monitor/knn_top1"]
    assert steps.tolist() == [0, 5, 10, 15] and values[-1] == pytest.approx(0.25)
    _png(plot_training_curves(tmp_path / "logs", tmp_path / "curves.png"))
    with pytest.raises(FileNotFoundError):
        plot_training_curves(tmp_path / "empty", tmp_path / "none.png")

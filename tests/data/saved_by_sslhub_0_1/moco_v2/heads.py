"""Projection and prediction heads (MLPs) of the self-supervised methods."""

from __future__ import annotations

from torch import nn


class MLPHead(nn.Sequential):
    """An MLP head: `num_layers` linear layers, ReLU (and optionally BatchNorm) between them.

    Covers the heads of the MoCo family: v1 (one linear layer to 128), v2 (Linear-ReLU-Linear,
    no BN) and v3 (Linear-BN-ReLU ... Linear-BN without affine on the output).

    Args:
        in_features: input width (the backbone's `num_features`).
        hidden_features: width of the hidden layers.
        out_features: output width.
        num_layers: number of linear layers (>= 1).
        batch_norm: BatchNorm1d after every hidden linear layer.
        last_batch_norm: BatchNorm1d without affine parameters on the output (MoCo v3, SimCLR v2).
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        out_features: int,
        num_layers: int = 2,
        batch_norm: bool = False,
        last_batch_norm: bool = False,
    ) -> None:
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        layers: list[nn.Module] = []
        width = in_features
        for _ in range(num_layers - 1):
            layers.append(nn.Linear(width, hidden_features, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(hidden_features))
            layers.append(nn.ReLU(inplace=True))
            width = hidden_features
        layers.append(nn.Linear(width, out_features, bias=not last_batch_norm))
        if last_batch_norm:
            layers.append(nn.BatchNorm1d(out_features, affine=False))
        super().__init__(*layers)


def projection_head(
    in_features: int,
    num_layers: int,
    hidden_features: int | None,
    out_features: int,
    batch_norm: bool = False,
    last_batch_norm: bool = False,
) -> MLPHead | None:
    """The projector of an encoder, or `None` when `num_layers` is 0; the hidden width defaults to the input's."""
    if num_layers == 0:
        return None
    return MLPHead(
        in_features,
        hidden_features or in_features,
        out_features,
        num_layers=num_layers,
        batch_norm=batch_norm,
        last_batch_norm=last_batch_norm,
    )

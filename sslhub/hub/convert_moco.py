"""MoCo v1/v2 checkpoints (facebookresearch/moco): the query encoder `encoder_q`, a torchvision ResNet.

The head `encoder_q.fc` becomes the projector: one linear layer in v1, `fc.0`/`fc.2` (an MLP with a ReLU
between) in v2. The key encoder `encoder_k` is left out; the queue's length is kept as `queue_size`.
"""

from __future__ import annotations

import torch

from ..models.configuration_moco import MoCoConfig
from .convert import backbone_settings, encoder_weights, mlp_spec, projector_settings, resnet_backbone

_PREFIX = "encoder_q."
_HEAD = "encoder_q.fc."


def moco_v1_v2_config(
    state_dict: dict[str, torch.Tensor],
    layout: str,
    *,
    arch: str | None = None,
    backbone: str | None = None,
    backbone_kwargs: dict | None = None,
    image_size: int | None = None,
) -> tuple[MoCoConfig, dict[str, torch.Tensor]]:
    """The `MoCoConfig` (v1 or v2 preset) and the `MoCoModel` weights of a MoCo v1/v2 state dict.

    Args:
        state_dict: the checkpoint's state dict, `module.` prefix removed.
        layout: `"moco_v1"` or `"moco_v2"` (see `detect_layout`).
        arch: the checkpoint's `arch` entry, a torchvision ResNet name (else read from the blocks).
        backbone: a timm name overriding the derived one.
        backbone_kwargs: extra `timm.create_model` arguments.
        image_size: the input size for the image processor (32 for a small stem, 224 otherwise by default).
    """
    name, small_stem = resnet_backbone(state_dict, _PREFIX, arch, backbone)
    common = backbone_settings(backbone or name, {}, small_stem, backbone_kwargs, image_size)
    weights = encoder_weights(state_dict, _PREFIX, _HEAD)
    if layout == "moco_v1":  # a bare nn.Linear; sslhub's projector is always a sequence of layers
        weights["projector.0.weight"] = weights.pop("projector.weight")
        weights["projector.0.bias"] = weights.pop("projector.bias")
        projector = dict(projector_num_layers=1, projection_dim=state_dict[f"{_HEAD}weight"].shape[0])
    else:
        projector = projector_settings(mlp_spec(state_dict, _HEAD))
    queue = state_dict.get("queue")  # (D, K) in the authors' code
    queue_size = queue.shape[1] if queue is not None else 65536
    preset = MoCoConfig.v1 if layout == "moco_v1" else MoCoConfig.v2
    return preset(**common, **projector, queue_size=queue_size), weights

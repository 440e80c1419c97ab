"""Checkpoints in the official MoCo layouts, built the authors' way on tiny backbones (converter and zoo tests).

The official files hold torchvision ResNet-50s (MoCo v1/v2, v3) and the authors' timm ViTs (v3). The tiny
ones here keep their key layout and `arch` entry: a timm `resnet50` (same keys as torchvision's) with one
bottleneck block per stage and narrow stages, and a `vit_small` one block deep; the converter is told the
sizes through `backbone_kwargs`, as a user would for a backbone of their own.
"""

from pathlib import Path

import timm
import torch
from torch import nn

TINY_RESNET50 = {"layers": [1, 1, 1, 1], "channels": [8, 16, 32, 64], "stem_width": 8}
TINY_VIT_SMALL = {"embed_dim": 24, "depth": 1, "num_heads": 2}
TINY_BACKBONE_KWARGS = {
    "moco_v1": TINY_RESNET50,
    "moco_v2": TINY_RESNET50,
    "moco_v3_resnet": TINY_RESNET50,
    "moco_v3_vit": TINY_VIT_SMALL,
}
"""The `backbone_kwargs` that fit the tiny checkpoint of each layout."""


def randomize_batch_norm(model: nn.Module) -> None:
    """Non-trivial BatchNorm statistics and affine weights, so that a dropped buffer shows."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            if module.affine:
                module.weight.data.uniform_(0.5, 1.5)
                module.bias.data.uniform_(-0.2, 0.2)


def build_mlp(num_layers, input_dim, mlp_dim, output_dim, last_bn=True):
    """MoCo v3's `_build_mlp` (moco/builder.py), as the authors wrote it."""
    mlp = []
    for layer in range(num_layers):
        dim1 = input_dim if layer == 0 else mlp_dim
        dim2 = output_dim if layer == num_layers - 1 else mlp_dim
        mlp.append(nn.Linear(dim1, dim2, bias=False))
        if layer < num_layers - 1:
            mlp.append(nn.BatchNorm1d(dim2))
            mlp.append(nn.ReLU(inplace=True))
        elif last_bn:
            mlp.append(nn.BatchNorm1d(dim2, affine=False))
    return nn.Sequential(*mlp)


def write_checkpoint(
    path, encoders: dict[str, nn.Module], extra: dict, ddp: bool, arch: str | None, epoch: int = 200, **top
):
    """Save a checkpoint in the authors' layout: {'epoch', 'arch', 'state_dict', 'optimizer'} (+ `top`)."""
    prefix = "module." if ddp else ""
    state_dict = {
        f"{prefix}{name}.{k}": v for name, enc in encoders.items() for k, v in enc.state_dict().items()
    }
    state_dict.update({f"{prefix}{k}": v for k, v in extra.items()})
    checkpoint = {
        "epoch": epoch,
        "state_dict": state_dict,
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.03}]},
        **top,
    }
    if arch:
        checkpoint["arch"] = arch
    torch.save(checkpoint, path)


def _encoder(layout: str, dim: int) -> nn.Module:
    """The query / base encoder of `layout`: a tiny backbone with the authors' head in place of its own."""
    if layout == "moco_v3_vit":
        encoder = timm.create_model("vit_small_patch16_224", img_size=32, patch_size=8, **TINY_VIT_SMALL)
        encoder.head = build_mlp(3, encoder.embed_dim, 32, dim)
    else:
        encoder = timm.create_model("resnet50", num_classes=dim, **TINY_RESNET50)
        width = encoder.num_features
        if layout == "moco_v2":
            encoder.fc = nn.Sequential(nn.Linear(width, width), nn.ReLU(), encoder.fc)
        elif layout == "moco_v3_resnet":
            encoder.fc = build_mlp(2, width, 32, dim)
    randomize_batch_norm(encoder)
    return encoder.eval()


def official_checkpoint(layout: str, path: Path, dim: int = 16) -> nn.Module:
    """Write a tiny checkpoint of an official layout (`detect_layout` name) to `path`; return its query
    (v1/v2) or base (v3) encoder, whose output is the converted model's `projection`."""
    encoder = _encoder(layout, dim)
    if layout in ("moco_v1", "moco_v2"):
        encoders = {"encoder_q": encoder, "encoder_k": _encoder(layout, dim)}
        extra = {"queue": torch.randn(dim, 64), "queue_ptr": torch.zeros(1, dtype=torch.long)}
        write_checkpoint(path, encoders, extra, True, "resnet50")
    else:
        encoders = {"base_encoder": encoder, "momentum_encoder": _encoder(layout, dim)}
        predictor = build_mlp(2, dim, 32, dim, last_bn=False)
        extra = {f"predictor.{k}": v for k, v in predictor.state_dict().items()}
        arch = "vit_small" if layout == "moco_v3_vit" else "resnet50"
        write_checkpoint(path, encoders, extra, True, arch, epoch=300, scaler={"scale": 65536.0})
    return encoder

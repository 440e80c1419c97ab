"""Tiny configurations shared by the tests (timm's `test_*` backbones, 32x32 images)."""

from sslhub import MoCoConfig


def tiny_moco_v2(**overrides) -> MoCoConfig:
    settings = dict(
        backbone="test_resnet", image_size=32, queue_size=32, momentum=0.9, projection_dim=16, crop_pct=1.0
    )
    return MoCoConfig.v2(**{**settings, **overrides})


def tiny_moco_v3(**overrides) -> MoCoConfig:
    settings = dict(
        backbone="test_vit",
        backbone_kwargs={"img_size": 32, "patch_size": 8},
        image_size=32,
        projector_hidden_size=32,
        predictor_hidden_size=32,
        projection_dim=16,
        crop_pct=1.0,
    )
    return MoCoConfig.v3(**{**settings, **overrides})

"""Every invalid MoCo setting is refused when the config is built, with a message naming the field."""

import pytest

from sslhub import MoCoConfig


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"backbone": "resnet_does_not_exist"}, r"backbone='resnet_does_not_exist' is not a timm model"),
        ({"temperature": 0.0}, r"temperature must be a positive number"),
        ({"temperature": -0.1}, r"temperature must be a positive number"),
        ({"momentum": 1.5}, r"momentum must be in \[0, 1\]"),
        ({"momentum": -0.1}, r"momentum must be in \[0, 1\]"),
        ({"queue_size": 1000, "batch_size": 256}, r"queue_size=1000 must be a multiple .* batch_size"),
        ({"version": "v4"}, r"version must be one of \['v1', 'v2', 'v3'\]"),
        ({"key_batch_norm": "split"}, r"key_batch_norm must be one of \['shuffle', 'sync', 'none'\]"),
        ({"version": "v3", "queue_size": 4096}, r"version='v3' uses in-batch keys and no queue"),
        ({"version": "v2", "queue_size": 0}, r"needs a queue of negatives"),
        ({"image_std": [0.5, 0.5]}, r"image_std must have 3 values"),
        ({"shuffle_bn_splits": 0}, r"shuffle_bn_splits must be an integer >= 1"),
        (
            {"shuffle_bn_splits": 8, "batch_size": 100, "queue_size": 1000},
            r"batch_size=100 must be divisible by shuffle_bn_splits=8",
        ),
        ({"position_embedding": "rope"}, r"position_embedding must be one of \['learned', 'sincos'\]"),
    ],
)
def test_invalid_settings_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MoCoConfig(**kwargs)


def test_presets_follow_the_papers():
    v1, v2, v3 = MoCoConfig.v1(), MoCoConfig.v2(), MoCoConfig.v3()
    assert (v1.temperature, v1.projector_num_layers, v1.queue_size, v1.momentum) == (0.07, 1, 65536, 0.999)
    assert (v2.temperature, v2.projector_num_layers, v2.projection_dim) == (0.2, 2, 128)
    assert not v2.projector_batch_norm
    assert (v3.queue_size, v3.temperature, v3.projection_dim, v3.projector_hidden_size) == (0, 1.0, 256, 4096)
    assert v3.symmetric_loss and v3.predictor_num_layers == 2 and v3.momentum == 0.99
    vit = MoCoConfig.v3("vit_small_patch16_224")
    assert vit.temperature == 0.2 and vit.projector_num_layers == 3 and vit.predictor_last_batch_norm
    # The authors' code: bias-free MLPs and a fixed sin-cos position embedding in v3 (ViTs), one-GPU
    # shuffle-BN over 8 BN splits in the v1/v2 CIFAR-10 demo.
    assert not v3.mlp_bias and not vit.mlp_bias and v1.mlp_bias and v2.mlp_bias
    assert vit.position_embedding == "sincos"
    assert v1.position_embedding == v2.position_embedding == v3.position_embedding == "learned"
    assert v1.shuffle_bn_splits == v2.shuffle_bn_splits == 8 and v3.shuffle_bn_splits == 1
    # Fields absent from folders saved before them take the old behaviour.
    base = MoCoConfig()
    assert base.mlp_bias and base.position_embedding == "learned" and base.shuffle_bn_splits == 1


def test_shuffle_bn_splits_are_checked_only_where_they_apply():
    MoCoConfig.v2(queue_size=4096, batch_size=256)  # 8 divides 256
    MoCoConfig.v2(queue_size=1000, batch_size=100, shuffle_bn_splits=4)
    MoCoConfig.v2(queue_size=1000, batch_size=100, key_batch_norm="none")  # no shuffle-BN: no splits


def test_symmetric_loss_doubles_the_keys_per_step():
    MoCoConfig.v2(queue_size=512, batch_size=256)
    with pytest.raises(ValueError, match="512 = batch_size x 2"):
        MoCoConfig.v2(queue_size=768, batch_size=256, symmetric_loss=True)


def test_preset_overrides_and_round_trip(tmp_path):
    config = MoCoConfig.v2("resnet18", small_input_stem=True, image_size=32, queue_size=4096)
    config.save_pretrained(tmp_path)
    loaded = MoCoConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert loaded.small_input_stem and loaded.backbone == "resnet18"


def test_a_misspelt_or_impossible_setting_fails_when_the_config_is_built():
    # transformers keeps unknown keyword arguments; a near-miss of a setting would silently keep its default.
    with pytest.raises(
        ValueError, match="unknown setting 'temprature' for MoCoConfig; did you mean 'temperature'"
    ):
        MoCoConfig.v2(temprature=0.1)
    with pytest.raises(ValueError, match="image_std must be positive"):
        MoCoConfig.v2(image_std=[0.0, 0.2, 0.2])
    assert MoCoConfig.v2(num_labels=3, note="kept").note == "kept"  # other extra keys stay allowed

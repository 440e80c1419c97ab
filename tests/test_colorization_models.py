"""Contract tests of the colorization models, their config and the class-rebalanced loss."""

import pytest
import timm
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModel, AutoModelForImageClassification, AutoModelForPreTraining

from sslhub import (
    ColorizationConfig,
    ColorizationForImageClassification,
    ColorizationForPreTraining,
    ColorizationModel,
)
from sslhub.models.color import ab_bin_centers, lightness_to_input, rgb_to_lab, soft_encode_ab
from sslhub.models.losses_colorization import colorization_cross_entropy


def tiny_resnet(**overrides) -> ColorizationConfig:
    settings = dict(backbone="test_resnet", image_size=32, crop_pct=1.0, decoder_hidden_size=16)
    return ColorizationConfig.paper(**{**settings, **overrides})


def tiny_vit(**overrides) -> ColorizationConfig:
    settings = dict(
        backbone="test_vit",
        backbone_kwargs={"img_size": 32, "patch_size": 8},
        image_size=32,
        crop_pct=1.0,
        decoder_hidden_size=16,
    )
    return ColorizationConfig.paper(**{**settings, **overrides})


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny tensors: on a shared 2-core machine, intra-op threads only contend (about 6x slower under load).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


CONFIGS = {"resnet": tiny_resnet, "vit": tiny_vit}
AUTO_CLASS = {
    ColorizationModel: AutoModel,
    ColorizationForPreTraining: AutoModelForPreTraining,
    ColorizationForImageClassification: AutoModelForImageClassification,
}


def _pixel_values(config, batch=2, size=32):
    rgb = torch.rand(batch, 3, size, size)
    mean, std = torch.tensor(config.image_mean), torch.tensor(config.image_std)
    return (rgb - mean[:, None, None]) / std[:, None, None]  # as the image processor normalizes


def _primary(output):
    if getattr(output, "loss", None) is not None:
        return output.loss
    return output.logits.pow(2).sum() if "logits" in output else output.pooler_output.pow(2).sum()


def _encoder(model):
    return model.base_model


@pytest.mark.parametrize("make_config", CONFIGS.values(), ids=CONFIGS.keys())
@pytest.mark.parametrize("model_class", AUTO_CLASS.keys(), ids=lambda c: c.__name__)
class TestContract:
    def test_output_shapes_and_gradients(self, model_class, make_config):
        config = make_config(num_labels=3)
        model = model_class(config)
        output = model(_pixel_values(config))
        if model_class is ColorizationForImageClassification:
            assert output.logits.shape == (2, 3)
        else:
            assert output.pooler_output.shape == (2, _encoder(model).num_features)
        first = {
            ColorizationModel: "last_hidden_state",
            ColorizationForPreTraining: "loss",
            ColorizationForImageClassification: "logits",
        }[model_class]
        assert output.to_tuple()[0] is output[first]
        if model_class is ColorizationForPreTraining:
            assert output.logits.shape == (2, 313, 8, 8)  # H/4 x W/4
            assert output.loss.ndim == 0 and torch.isfinite(output.loss)
        _primary(output).backward()
        assert all(p.grad is not None for p in model.parameters())
        assert any(p.grad.abs().sum() > 0 for p in model.parameters())

    def test_save_and_auto_load_round_trip(self, model_class, make_config, tmp_path):
        model = model_class(make_config()).eval()
        if model_class is ColorizationForPreTraining:
            model.set_class_weights_from_prior(torch.rand(313) ** 3)
        model.save_pretrained(tmp_path)
        assert (tmp_path / "model.safetensors").exists() and (tmp_path / "preprocessor_config.json").exists()
        assert isinstance(AutoConfig.from_pretrained(tmp_path), ColorizationConfig)
        loaded = AUTO_CLASS[model_class].from_pretrained(tmp_path).eval()
        assert type(loaded) is model_class
        inputs = _pixel_values(model.config)
        with torch.no_grad():
            for a, b in zip(model(inputs).to_tuple(), loaded(inputs).to_tuple(), strict=True):
                # The weights are compared bit for bit below; outputs may differ in the last bit because
                # tensors loaded from safetensors are not 64-byte aligned, which changes the CPU kernels.
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        assert loaded.state_dict().keys() == model.state_dict().keys()
        for key, value in model.state_dict().items():
            assert torch.equal(value, loaded.state_dict()[key]), key
        if model_class is ColorizationForPreTraining:
            assert "class_weights" in loaded.state_dict() and not torch.equal(
                loaded.class_weights, torch.ones(313)
            )
            assert torch.equal(loaded.ab_centers, ab_bin_centers())  # the non-persistent table is rebuilt

    def test_stripped_backbone_loads_into_timm(self, model_class, make_config):
        config = make_config()
        model = model_class(config).eval()
        prefix = "backbone." if model_class is ColorizationModel else "encoder.backbone."
        stripped = {k[len(prefix) :]: v for k, v in model.state_dict().items() if k.startswith(prefix)}
        reference = timm.create_model(
            config.backbone, num_classes=0, in_chans=1, **(config.backbone_kwargs or {})
        )
        reference.load_state_dict(stripped, strict=True)
        reference.eval()
        pixel_values = _pixel_values(config)
        mean, std = torch.tensor(config.image_mean), torch.tensor(config.image_std)
        rgb = pixel_values * std[:, None, None] + mean[:, None, None]
        lightness = lightness_to_input(rgb_to_lab(rgb)[:, :1])  # what the encoder feeds its backbone
        with torch.no_grad():
            torch.testing.assert_close(
                reference(lightness), _encoder(model)(pixel_values).pooler_output, rtol=0, atol=1e-6
            )


def test_encoder_sees_the_centred_lightness_of_the_unnormalized_image():
    config = tiny_resnet(image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.25, 0.3])
    model = ColorizationModel(config)
    rgb = torch.rand(2, 3, 32, 32)
    pixel_values = (rgb - torch.tensor([0.5, 0.4, 0.3])[:, None, None]) / torch.tensor([0.2, 0.25, 0.3])[
        :, None, None
    ]
    torch.testing.assert_close(model.pixel_values_to_lab(pixel_values), rgb_to_lab(rgb), rtol=0, atol=1e-4)
    first_conv = next(m for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    assert first_conv.in_channels == 1
    features = model(pixel_values, output_hidden_states=True).last_hidden_state
    assert features.ndim == 4 and features.shape[:2] == (2, model.num_features)


def test_small_input_stem_keeps_one_input_channel_and_a_larger_feature_map(tmp_path):
    model = ColorizationModel(tiny_resnet(small_input_stem=True)).eval()
    conv1 = model.backbone.conv1
    assert (conv1.in_channels, conv1.kernel_size, conv1.stride) == (1, (3, 3), (1, 1))
    pixel_values = _pixel_values(model.config)
    plain = ColorizationModel(tiny_resnet())(pixel_values, output_hidden_states=True).last_hidden_state
    small = model(pixel_values, output_hidden_states=True).last_hidden_state
    assert small.shape[-1] == 4 * plain.shape[-1]
    model.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(reloaded(pixel_values).pooler_output, model(pixel_values).pooler_output)


@pytest.mark.parametrize("size", [(64, 64), (64, 32)])
def test_logits_are_at_a_quarter_of_the_input_resolution(size):
    config = tiny_resnet(image_size=64)
    model = ColorizationForPreTraining(config).eval()
    with torch.no_grad():
        output = model(torch.randn(2, 3, *size))
        colours = model.colorize(torch.randn(2, 3, *size))
    assert output.logits.shape == (2, 313, size[0] // 4, size[1] // 4)
    assert colours.shape == (2, 3, *size) and colours.min() >= 0 and colours.max() <= 1


def test_vit_tokens_are_laid_on_the_patch_grid():
    model = ColorizationForPreTraining(tiny_vit(decoder_output_stride=8)).eval()
    assert model(_pixel_values(model.config)).logits.shape == (2, 313, 4, 4)


def test_loss_is_the_rebalanced_soft_cross_entropy_of_the_model_targets():
    config = tiny_resnet(soft_encoding_neighbors=10, grey_mask="none")
    model = ColorizationForPreTraining(config).eval()
    model.set_class_weights_from_prior(torch.rand(313))
    pixel_values = _pixel_values(config)
    with torch.no_grad():
        output = model(pixel_values)
    rgb = (
        pixel_values * torch.tensor(config.image_std)[:, None, None]
        + torch.tensor(config.image_mean)[:, None, None]
    )
    ab = rgb_to_lab(rgb)[:, 1:, ::4, ::4]  # (N, 2, 8, 8): the top-left pixel of each 4x4 block
    targets = soft_encode_ab(ab, num_neighbors=10, sigma=5.0)
    expected = colorization_cross_entropy(output.logits, targets, model.class_weights)
    torch.testing.assert_close(output.loss, expected)


@pytest.mark.parametrize("size", [32, 30])
def test_targets_subsample_the_ab_of_the_top_left_pixel_of_each_block(size):
    # The authors' Caffe net: a 1x1 convolution with stride 4 on the ab image (`data_ab_ss`). A sharp
    # red | blue edge inside a block keeps that pixel's colour; averaging would invent a purple.
    config = tiny_resnet(grey_mask="none")
    model = ColorizationForPreTraining(config).eval()
    rgb = torch.zeros(1, 3, size, size)
    rgb[:, 0, :, :14] = 1.0  # red up to column 13, blue from column 14: the edge is inside block 3 (12..15)
    rgb[:, 2, :, 14:] = 1.0
    lab = rgb_to_lab(rgb)
    h = w = size // 4  # the logits' size: 8, or 7 for 30 (the 8th subsampled column is cropped)
    targets, mask = model.targets_from_lab(lab, (h, w))
    assert targets.shape == (1, 313, h, w) and mask is None
    reference_ab = torch.empty(1, 2, h, w)
    for i in range(h):
        for j in range(w):
            reference_ab[0, :, i, j] = lab[0, 1:, 4 * i, 4 * j]
    torch.testing.assert_close(targets, soft_encode_ab(reference_ab, num_neighbors=5, sigma=5.0))
    red_bin = soft_encode_ab(lab[:, 1:, :1, :1], num_neighbors=5).argmax(dim=1).item()
    assert targets[0, :, :, 3].argmax(dim=0).eq(red_bin).all()  # block 3 starts red
    averaged = soft_encode_ab(F.avg_pool2d(lab[:, 1:, : 4 * h, : 4 * w], 4), num_neighbors=5)
    assert not averaged[0, :, :, 3].argmax(dim=0).eq(red_bin).any()  # the old targets were another colour
    with torch.no_grad():
        assert model(torch.randn(1, 3, size, size)).logits.shape[-2:] == (h, w)


def test_colorization_cross_entropy_against_a_naive_loop():
    logits = torch.randn(2, 313, 3, 2)
    target = soft_encode_ab((torch.rand(2, 2, 3, 2) - 0.5) * 150)
    weights = torch.rand(313) + 0.5
    mask = torch.rand(2, 1, 3, 2) > 0.3
    total, count = 0.0, 0
    for n in range(2):
        for h in range(3):
            for w in range(2):
                if mask[n, 0, h, w]:
                    z = target[n, :, h, w]
                    log_probs = torch.log_softmax(logits[n, :, h, w], dim=0)
                    total += weights[z.argmax()] * -(z * log_probs).sum()
                    count += 1
    torch.testing.assert_close(colorization_cross_entropy(logits, target, weights, mask), total / count)
    # Uniform weights and one-hot targets reduce to the ordinary cross-entropy.
    labels = torch.randint(0, 313, (2, 3, 2))
    one_hot = F.one_hot(labels, 313).permute(0, 3, 1, 2).float()
    torch.testing.assert_close(
        colorization_cross_entropy(logits, one_hot, torch.ones(313)), F.cross_entropy(logits, labels)
    )
    nothing = colorization_cross_entropy(logits, target, weights, torch.zeros_like(mask))
    assert nothing.item() == 0.0


def test_fully_grey_images_weigh_zero():
    model = ColorizationForPreTraining(tiny_resnet())  # grey_mask="image" by default
    grey = torch.full((2, 3, 32, 32), 0.5)
    grey = (grey - torch.tensor(model.config.image_mean)[:, None, None]) / torch.tensor(
        model.config.image_std
    )[:, None, None]
    assert model(grey).loss.item() == 0.0
    assert model.__class__(tiny_resnet(grey_mask="none"))(grey).loss.item() > 0


def test_class_weights_default_uniform_and_follow_the_prior():
    model = ColorizationForPreTraining(tiny_resnet(rebalancing_lambda=0.5))
    assert torch.equal(model.class_weights, torch.ones(313)) and model.class_weights_source == "uniform"
    prior = torch.zeros(313)
    prior[120] = 1.0
    weights = model.set_class_weights_from_prior(prior)
    assert model.class_weights_source == "prior"
    assert weights is model.class_weights and weights[120] == weights.min() and weights[0] == weights.max()
    assert "class_weights" in model.state_dict() and "ab_centers" not in model.state_dict()


def test_pretraining_checkpoint_loads_as_encoder_and_encoder_folder_as_pretraining(tmp_path):
    pretraining = ColorizationForPreTraining(tiny_resnet()).eval()
    pretraining.set_class_weights_from_prior(torch.rand(313))
    pretraining.save_pretrained(tmp_path / "pretraining")
    encoder = ColorizationModel.from_pretrained(tmp_path / "pretraining").eval()
    x = _pixel_values(pretraining.config)
    with torch.no_grad():
        torch.testing.assert_close(
            encoder(x).pooler_output, pretraining.encoder(x).pooler_output, rtol=1e-5, atol=1e-6
        )
    encoder.save_pretrained(tmp_path / "encoder")
    restarted = ColorizationForPreTraining.from_pretrained(tmp_path / "encoder")
    assert torch.equal(restarted.class_weights, torch.ones(313))  # missing: uniform, not garbage
    assert torch.equal(restarted.ab_centers, ab_bin_centers())
    assert torch.isfinite(restarted(x).loss)


def test_fresh_model_keeps_timm_initialization():
    torch.manual_seed(0)
    model = ColorizationModel(tiny_resnet())
    torch.manual_seed(0)
    reference = timm.create_model("test_resnet", num_classes=0, in_chans=1)
    for key, value in reference.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[key], value), key


def test_a_few_steps_lower_the_loss_on_a_fixed_batch():
    model = ColorizationForPreTraining(tiny_resnet())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    # Four flat colour regions per image: pixel noise would give each target pixel a colour of its own.
    pixel_values = F.interpolate(
        _pixel_values(model.config, batch=8, size=2), scale_factor=16, mode="nearest"
    )
    losses = []
    for _ in range(15):
        loss = model(pixel_values).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) / 3 < 0.8 * losses[0], losses


def test_config_validation_names_the_field():
    bad = {
        "num_bins": 100,
        "soft_encoding_neighbors": 0,
        "soft_encoding_sigma": 0.0,
        "rebalancing_lambda": 1.5,
        "prior_smoothing_sigma": -1.0,
        "annealed_mean_temperature": 0.0,
        "decoder_hidden_size": 0,
        "decoder_num_layers": -1,
        "decoder_output_stride": 0,
        "grey_mask": "images",
        "grey_threshold": -1.0,
        "backbone": "not_a_timm_model",
    }
    for field, value in bad.items():
        with pytest.raises(ValueError, match=field if field != "backbone" else "backbone="):
            ColorizationConfig(**{"backbone": "test_resnet", field: value})


def test_presets_follow_the_paper_and_the_authors_code():
    paper = ColorizationConfig.paper(backbone="test_resnet")
    assert (paper.soft_encoding_neighbors, paper.soft_encoding_sigma, paper.rebalancing_lambda) == (
        5,
        5.0,
        0.5,
    )
    assert (paper.annealed_mean_temperature, paper.decoder_output_stride, paper.num_bins) == (0.38, 4, 313)
    code = ColorizationConfig.authors_code(backbone="test_resnet", decoder_hidden_size=8)
    assert (
        code.soft_encoding_neighbors == 10
        and code.decoder_hidden_size == 8
        and code.model_type == "sslhub_colorization"
    )

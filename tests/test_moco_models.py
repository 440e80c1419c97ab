"""Contract tests over every MoCo model class, and MoCo-specific behaviour."""

import copy
import json
import math

import pytest
import timm
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModel, AutoModelForImageClassification, AutoModelForPreTraining

from sslhub import MoCoConfig, MoCoForImageClassification, MoCoForPreTraining, MoCoModel

from .helpers import tiny_moco_v2, tiny_moco_v3


def tiny_moco_v3_sincos(**overrides) -> MoCoConfig:
    return tiny_moco_v3(**{"position_embedding": "sincos", **overrides})


CONFIGS = {"v2-resnet": tiny_moco_v2, "v3-vit": tiny_moco_v3_sincos}
AUTO_CLASS = {
    MoCoModel: AutoModel,
    MoCoForPreTraining: AutoModelForPreTraining,
    MoCoForImageClassification: AutoModelForImageClassification,
}


def _build(model_class, make_config):
    config = make_config(num_labels=3)
    return model_class(config), config


def _inputs(model_class, batch=4, size=32):
    x1, x2 = torch.randn(batch, 3, size, size), torch.randn(batch, 3, size, size)
    if model_class is MoCoForPreTraining:
        return {"query_pixel_values": x1, "key_pixel_values": x2}
    if model_class is MoCoForImageClassification:
        return {"pixel_values": x1, "labels": torch.tensor([0, 1, 2, 0])}
    return {"pixel_values": x1}


def _primary(output):
    if getattr(output, "loss", None) is not None:
        return output.loss
    return output.pooler_output.pow(2).sum() + output.projection.pow(2).sum()


def _query_backbone(model):
    return model.backbone if isinstance(model, MoCoModel) else model.query_encoder.backbone


@pytest.mark.parametrize("make_config", CONFIGS.values(), ids=CONFIGS.keys())
@pytest.mark.parametrize("model_class", AUTO_CLASS.keys(), ids=lambda c: c.__name__)
class TestContract:
    def test_output_shapes(self, model_class, make_config):
        model, config = _build(model_class, make_config)
        output = model(**_inputs(model_class))
        if model_class is MoCoModel:
            assert output.pooler_output.shape == (4, model.num_features)
            assert output.projection.shape == (4, config.projection_dim)
        elif model_class is MoCoForPreTraining:
            negatives = config.queue_size if config.has_queue else 4
            assert output.logits.shape == (4, 1 + negatives if config.has_queue else negatives)
            assert output.query_embeddings.shape == output.key_embeddings.shape == (4, config.projection_dim)
            torch.testing.assert_close(output.query_embeddings.norm(dim=1), torch.ones(4))
            assert output.loss.ndim == 0 and torch.isfinite(output.loss)
        else:
            assert output.logits.shape == (4, 3)
            assert output.loss.ndim == 0

    def test_gradients_reach_only_the_query_branch(self, model_class, make_config):
        model, _ = _build(model_class, make_config)
        _primary(model(**_inputs(model_class))).backward()
        for name, parameter in model.named_parameters():
            if name.startswith("key_encoder."):
                assert parameter.grad is None and not parameter.requires_grad, name
        trained = [p for n, p in model.named_parameters() if not n.startswith("key_encoder.")]
        assert all(p.grad is not None for p in trained)
        assert any(p.grad.abs().sum() > 0 for p in trained)

    def test_save_and_auto_load_round_trip(self, model_class, make_config, tmp_path):
        model, _ = _build(model_class, make_config)
        model.eval()
        model.save_pretrained(tmp_path)
        assert (tmp_path / "model.safetensors").exists() and (tmp_path / "preprocessor_config.json").exists()
        assert isinstance(AutoConfig.from_pretrained(tmp_path), MoCoConfig)
        loaded = AUTO_CLASS[model_class].from_pretrained(tmp_path)
        assert type(loaded) is model_class
        loaded.eval()
        inputs = _inputs(model_class)
        with torch.no_grad():
            # Weights are bit-exact (checked below); outputs may differ in the last bit because tensors
            # loaded from safetensors are not 64-byte aligned, which changes the kernels' summation order.
            for a, b in zip(model(**inputs).to_tuple(), loaded(**inputs).to_tuple(), strict=True):
                torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
        assert loaded.state_dict().keys() == model.state_dict().keys()
        for key, value in model.state_dict().items():
            assert torch.equal(value, loaded.state_dict()[key]), key

    def test_stripped_backbone_loads_into_timm(self, model_class, make_config):
        model, config = _build(model_class, make_config)
        model.eval()
        prefix = "backbone." if model_class is MoCoModel else "query_encoder.backbone."
        stripped = {k[len(prefix) :]: v for k, v in model.state_dict().items() if k.startswith(prefix)}
        reference = timm.create_model(config.backbone, num_classes=0, **(config.backbone_kwargs or {}))
        reference.load_state_dict(stripped, strict=True)
        reference.eval()
        x = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(reference(x), _query_backbone(model)(x), rtol=0, atol=0)


@pytest.mark.parametrize("make_config", CONFIGS.values(), ids=CONFIGS.keys())
def test_key_encoder_starts_as_copy_and_follows_the_ema(make_config):
    model = MoCoForPreTraining(make_config())
    for q, k in zip(
        model.query_encoder.state_dict().values(), model.key_encoder.state_dict().values(), strict=True
    ):
        assert torch.equal(q, k)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    inputs = _inputs(MoCoForPreTraining)
    model(**inputs).loss.backward()
    optimizer.step()
    query_after = [p.detach().clone() for p in model.query_encoder.parameters()]
    key_before = [p.detach().clone() for p in model.key_encoder.parameters()]
    model(**inputs)  # the next step first moves the key encoder towards the query encoder
    m = model.momentum
    for key, kb, qa in zip(model.key_encoder.parameters(), key_before, query_after, strict=True):
        torch.testing.assert_close(key.detach(), m * kb + (1 - m) * qa, rtol=1e-6, atol=1e-7)
    assert any(not torch.equal(kb, qa) for kb, qa in zip(key_before, query_after, strict=True))


def test_queue_receives_the_keys_in_fifo_order():
    model = MoCoForPreTraining(tiny_moco_v2(queue_size=12))
    previous = model.queue.clone()
    out = model(**_inputs(MoCoForPreTraining))
    torch.testing.assert_close(model.queue[:4], out.key_embeddings)
    assert torch.equal(model.queue[4:], previous[4:])
    assert model.queue_ptr.item() == 4
    for _ in range(2):
        model(**_inputs(MoCoForPreTraining))
    assert model.queue_ptr.item() == 0  # 3 x 4 keys fill 12 slots and wrap
    torch.testing.assert_close(model.queue.norm(dim=1), torch.ones(12))


def test_eval_mode_does_not_touch_key_encoder_or_queue():
    model = MoCoForPreTraining(tiny_moco_v2()).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model(**_inputs(MoCoForPreTraining))
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_symmetric_queue_loss_enqueues_both_views():
    model = MoCoForPreTraining(tiny_moco_v2(symmetric_loss=True, queue_size=16))
    model(**_inputs(MoCoForPreTraining))
    assert model.queue_ptr.item() == 8


def test_pretraining_checkpoint_loads_as_encoder_and_classifier(tmp_path):
    pretraining = MoCoForPreTraining(tiny_moco_v2()).eval()
    pretraining.save_pretrained(tmp_path)
    encoder = MoCoModel.from_pretrained(tmp_path).eval()
    classifier = MoCoForImageClassification.from_pretrained(tmp_path, num_labels=5).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = pretraining.query_encoder(x).pooler_output
        torch.testing.assert_close(encoder(x).pooler_output, expected, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(classifier.base_model(x).pooler_output, expected, rtol=1e-6, atol=1e-6)
        logits = classifier(x).logits
    assert logits.shape == (2, 5)
    torch.testing.assert_close(logits, classifier.classifier(expected), rtol=1e-6, atol=1e-6)


def test_pretraining_from_an_encoder_folder_copies_query_into_key(tmp_path):
    MoCoModel(tiny_moco_v2()).save_pretrained(tmp_path)
    model = MoCoForPreTraining.from_pretrained(tmp_path)
    for q, k in zip(
        model.query_encoder.state_dict().values(), model.key_encoder.state_dict().values(), strict=True
    ):
        assert torch.equal(q, k)
    assert not any(p.requires_grad for p in model.key_encoder.parameters())
    torch.testing.assert_close(model.queue.norm(dim=1), torch.ones(model.config.queue_size))


def test_fresh_model_keeps_timm_initialization():
    torch.manual_seed(0)
    model = MoCoModel(tiny_moco_v2())
    torch.manual_seed(0)
    reference = timm.create_model("test_resnet", num_classes=0)
    for key, value in reference.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[key], value), key


def test_small_input_stem_keeps_resolution():
    config = MoCoConfig.v2(backbone="resnet18", small_input_stem=True, queue_size=8)
    model = MoCoModel(config).eval()
    features = model(torch.randn(1, 3, 32, 32), output_hidden_states=True).last_hidden_state
    assert features.shape[-2:] == (4, 4)  # three stride-2 stages only: 32 -> 4
    assert model.backbone.conv1.kernel_size == (3, 3)


@pytest.mark.parametrize(
    ("make_config", "update_key_encoder"),
    # v3: full steps. v2: a queue filled from one fixed batch holds that batch's own keys as negatives,
    # so its loss is measured against a fixed key encoder and queue.
    [(tiny_moco_v3, True), (tiny_moco_v2, False)],
    ids=["v3-full-steps", "v2-fixed-queue"],
)
def test_a_few_steps_lower_the_loss_on_a_fixed_batch(make_config, update_key_encoder):
    model = MoCoForPreTraining(make_config(queue_size=64) if make_config is tiny_moco_v2 else make_config())
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    inputs = _inputs(MoCoForPreTraining, batch=16)
    losses = []
    for _ in range(20):
        loss = model(**inputs, update_key_encoder=update_key_encoder).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) / 3 < 0.8 * losses[0], losses


def test_saved_folder_serves_image_processor_and_pipeline(tmp_path):
    import numpy as np
    from PIL import Image
    from transformers import AutoImageProcessor, pipeline

    config = tiny_moco_v2(image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.25, 0.3])
    model = MoCoModel(config).eval()
    model.save_pretrained(tmp_path)
    processor = AutoImageProcessor.from_pretrained(tmp_path)
    assert list(processor.image_mean) == [0.5, 0.4, 0.3] and list(processor.image_std) == [0.2, 0.25, 0.3]
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 40, 3), dtype=np.uint8))
    pixel_values = processor(images=image, return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (1, 3, 32, 32)
    extractor = pipeline("image-feature-extraction", model=str(tmp_path), device="cpu")
    features = torch.tensor(extractor(image, pool=True))
    with torch.no_grad():
        expected = model(pixel_values).pooler_output
    torch.testing.assert_close(features.reshape(expected.shape), expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        feature_map = model(pixel_values).last_hidden_state
    default = torch.tensor(extractor(image))  # without pool: last_hidden_state, as transformers models
    torch.testing.assert_close(default.reshape(feature_map.shape), feature_map, rtol=1e-5, atol=1e-5)


def test_activation_checkpointing_gives_the_same_gradients():
    model = MoCoModel(tiny_moco_v3())
    inputs = _inputs(MoCoModel)
    _primary(model(**inputs)).backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    # transformers 5.2x renamed `gradient_checkpointing_enable` (kept as a deprecated alias); older 5.x only
    # has the old name: sslhub's models work with either.
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()
    assert model.backbone.grad_checkpointing
    _primary(model(**inputs)).backward()
    for parameter, grad in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(parameter.grad, grad, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------- MoCo v3 heads (item: bias)


def _layers(head):
    """A head as the list of its layers, the way the authors' `_build_mlp` would be written out."""
    layers = []
    for layer in head:
        if isinstance(layer, torch.nn.Linear):
            layers.append(("Linear", layer.in_features, layer.out_features, layer.bias is not None))
        elif isinstance(layer, torch.nn.BatchNorm1d):
            layers.append(("BatchNorm1d", layer.num_features, layer.affine))
        else:
            layers.append((type(layer).__name__,))
    return layers


def test_v3_heads_follow_the_authors_mlp_builder():
    # moco-v3/moco/builder.py: `_build_mlp(num_layers, input_dim, mlp_dim, output_dim, last_bn=True)` uses
    # nn.Linear(..., bias=False) everywhere, BN + ReLU after each hidden Linear, BN(affine=False) last where
    # last_bn. ResNet: projector _build_mlp(2, d, 4096, 256), predictor _build_mlp(2, 256, 4096, 256, False);
    # ViT: projector _build_mlp(3, d, 4096, 256), predictor _build_mlp(2, 256, 4096, 256).
    hidden = [("BatchNorm1d", 4096, True), ("ReLU",)]
    resnet = MoCoForPreTraining(MoCoConfig.v3("resnet10t", image_size=32))
    d = resnet.query_encoder.num_features
    assert _layers(resnet.query_encoder.projector) == [
        ("Linear", d, 4096, False),
        *hidden,
        ("Linear", 4096, 256, False),
        ("BatchNorm1d", 256, False),
    ]
    assert _layers(resnet.predictor) == [("Linear", 256, 4096, False), *hidden, ("Linear", 4096, 256, False)]
    vit = MoCoForPreTraining(
        MoCoConfig.v3("vit_tiny_patch16_224", backbone_kwargs={"img_size": 32}, image_size=32)
    )
    d = vit.query_encoder.num_features
    assert _layers(vit.query_encoder.projector) == [
        ("Linear", d, 4096, False),
        *hidden,
        ("Linear", 4096, 4096, False),
        *hidden,
        ("Linear", 4096, 256, False),
        ("BatchNorm1d", 256, False),
    ]
    assert _layers(vit.predictor) == [
        ("Linear", 256, 4096, False),
        *hidden,
        ("Linear", 4096, 256, False),
        ("BatchNorm1d", 256, False),
    ]


def test_v2_head_keeps_its_biases_and_old_v3_folders_load_theirs(tmp_path):
    # MoCo v2's MLP is torch's nn.Linear (bias=True): Linear-ReLU-Linear.
    assert _layers(MoCoModel(tiny_moco_v2()).projector) == [
        ("Linear", 96, 96, True),
        ("ReLU",),
        ("Linear", 96, 16, True),
    ]
    # A v3 folder saved before `mlp_bias` existed has the ResNet predictor's last bias and no such field.
    config = MoCoConfig.v3("test_resnet", projector_hidden_size=32, predictor_hidden_size=32, mlp_bias=True)
    model = MoCoForPreTraining(config)
    assert model.predictor[-1].bias is not None
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["mlp_bias"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    loaded = MoCoForPreTraining.from_pretrained(tmp_path)
    assert loaded.config.mlp_bias is True
    assert torch.equal(loaded.predictor[-1].bias, model.predictor[-1].bias)


# -------------------------------------------------------------------------- symmetric loss of v1/v2


def _naive_info_nce(q, k, queue, t):
    """-log exp(q.k+/T) / (exp(q.k+/T) + sum_j exp(q.queue_j/T)), averaged over the rows, in float64."""
    total = 0.0
    for i in range(q.shape[0]):
        positive = math.exp(float(q[i].double() @ k[i].double()) / t)
        negatives = sum(math.exp(float(q[i].double() @ row.double()) / t) for row in queue)
        total += -math.log(positive / (positive + negatives))
    return total / q.shape[0]


def test_symmetric_queue_loss_is_the_sum_of_both_orders():
    # The authors' CIFAR-10 demo: loss = loss_12 + loss_21, both against the queue before this step's keys.
    model = MoCoForPreTraining(tiny_moco_v2(symmetric_loss=True, queue_size=16)).eval()
    x1, x2 = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)
    queue = model.queue.clone()
    with torch.no_grad():
        loss = model(x1, x2, update_key_encoder=False, enqueue_keys=False).loss
        q1, q2 = (F.normalize(model.query_encoder(x).projection, dim=1) for x in (x1, x2))
        k1, k2 = (F.normalize(model.key_encoder(x).projection, dim=1) for x in (x1, x2))
    t = model.config.temperature
    expected = _naive_info_nce(q1, k2, queue, t) + _naive_info_nce(q2, k1, queue, t)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


# ----------------------------------------------------------------- one-process shuffle-BN (BN splits)


def test_split_shuffle_bn_keys_are_those_of_their_own_sub_batch():
    model = MoCoForPreTraining(tiny_moco_v2(shuffle_bn_splits=4, queue_size=64))
    x1, x2 = torch.randn(16, 3, 32, 32), torch.randn(16, 3, 32, 32)
    torch.manual_seed(3)
    keys = model(x1, x2, update_key_encoder=False, enqueue_keys=False).key_embeddings
    torch.manual_seed(3)  # the permutation comes from the global RNG (the recipes seed it and checkpoint it)
    permutation = torch.randperm(16)
    reference = copy.deepcopy(model.key_encoder).train()
    expected = torch.empty_like(keys)
    with torch.no_grad():
        for chunk in permutation.chunk(4):  # each sub-batch of the shuffled batch gets its own BN statistics
            expected[chunk] = F.normalize(reference(x2[chunk]).projection, dim=1)
        whole_batch = F.normalize(reference(x2).projection, dim=1)
    # Row i is the key of image i; the one-forward split BatchNorm rounds differently from a BatchNorm.
    torch.testing.assert_close(keys, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(keys, whole_batch, atol=1e-3)  # the statistics did change
    # The same seed gives the same keys: reproducible from the RNG state.
    torch.manual_seed(3)
    torch.testing.assert_close(
        model(x1, x2, update_key_encoder=False, enqueue_keys=False).key_embeddings, keys
    )


def test_split_shuffle_bn_leaves_eval_mode_and_other_settings_alone():
    model = MoCoForPreTraining(tiny_moco_v2(shuffle_bn_splits=4)).eval()
    x = torch.randn(8, 3, 32, 32)
    state = torch.get_rng_state()
    with torch.no_grad():
        keys = model(x, x, update_key_encoder=False, enqueue_keys=False).key_embeddings
        torch.testing.assert_close(keys, F.normalize(model.key_encoder(x).projection, dim=1))
    assert torch.equal(torch.get_rng_state(), state)  # no permutation drawn
    for settings in ({"shuffle_bn_splits": 1}, {"key_batch_norm": "none"}):
        model = MoCoForPreTraining(tiny_moco_v2(**settings))
        reference = copy.deepcopy(model.key_encoder).train()
        keys = model(x, x, update_key_encoder=False, enqueue_keys=False).key_embeddings
        with torch.no_grad():
            torch.testing.assert_close(
                keys, F.normalize(reference(x).projection, dim=1), rtol=1e-5, atol=1e-6
            )


def test_split_shuffle_bn_needs_a_divisible_batch():
    model = MoCoForPreTraining(tiny_moco_v2(shuffle_bn_splits=4))
    with pytest.raises(ValueError, match="shuffle_bn_splits=4 must divide the batch of 6"):
        model(torch.randn(6, 3, 32, 32), torch.randn(6, 3, 32, 32))


# --------------------------------------------------------------- MoCo v3's fixed sin-cos position embedding


def _authors_sincos(grid: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """moco-v3/vits.py `build_2d_sincos_position_embedding`, written out as the authors do (square grids)."""
    grid_w = torch.arange(grid, dtype=torch.float64)
    grid_h = torch.arange(grid, dtype=torch.float64)
    grid_w, grid_h = torch.meshgrid(grid_w, grid_h, indexing="ij")
    pos_dim = dim // 4
    omega = 1.0 / temperature ** (torch.arange(pos_dim, dtype=torch.float64) / pos_dim)
    out_w = torch.einsum("m,d->md", grid_w.flatten(), omega)
    out_h = torch.einsum("m,d->md", grid_h.flatten(), omega)
    pos_emb = torch.cat([out_w.sin(), out_w.cos(), out_h.sin(), out_h.cos()], dim=1)[None]
    return torch.cat([torch.zeros(1, 1, dim, dtype=torch.float64), pos_emb], dim=1)  # class token: 0


def test_sincos_position_embedding_matches_the_authors_formula():
    model = MoCoModel(tiny_moco_v3(position_embedding="sincos"))
    pos_embed = model.backbone.pos_embed  # (1, 1 + 4 * 4, 64)
    assert pos_embed.shape == (1, 17, 64)
    torch.testing.assert_close(pos_embed.double(), _authors_sincos(4, 64), rtol=0, atol=1e-6)
    # Element by element from the formula: token 1 + r * W + c, omega_d = 1 / 10000^(d / 16).
    for r, c, d in [(0, 0, 0), (1, 2, 3), (3, 1, 15), (2, 3, 7)]:
        omega = 1 / 10000 ** (d / 16)
        row = pos_embed[0, 1 + r * 4 + c]
        expected = [math.sin(r * omega), math.cos(r * omega), math.sin(c * omega), math.cos(c * omega)]
        assert [row[d + 16 * i].item() for i in range(4)] == pytest.approx(expected, abs=1e-6)


def test_sincos_position_embedding_is_frozen_through_training_and_round_trips(tmp_path):
    model = MoCoForPreTraining(tiny_moco_v3(position_embedding="sincos"))
    table = _authors_sincos(4, 64).float()
    backbones = (model.query_encoder.backbone, model.key_encoder.backbone)
    assert all("pos_embed" not in name for name, _ in model.named_parameters())
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)  # even an optimizer over everything misses it
    for _ in range(2):
        loss = model(torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for backbone in backbones:
        assert not backbone.pos_embed.requires_grad and backbone.pos_embed.grad is None
        torch.testing.assert_close(backbone.pos_embed, table, rtol=0, atol=1e-6)
    model.save_pretrained(tmp_path / "checkpoint")
    model.query_encoder.save_pretrained(tmp_path / "inference")
    for folder in ("checkpoint", "inference"):
        loaded = MoCoForPreTraining.from_pretrained(tmp_path / folder)
        assert all("pos_embed" not in name for name, _ in loaded.named_parameters())
        for backbone in (loaded.query_encoder.backbone, loaded.key_encoder.backbone):
            assert not backbone.pos_embed.requires_grad
            torch.testing.assert_close(backbone.pos_embed, table, rtol=0, atol=1e-6)
        assert loaded.state_dict()["query_encoder.backbone.pos_embed"].shape == (1, 17, 64)


def test_sincos_position_embedding_missing_from_a_folder_is_refilled(tmp_path):
    from safetensors.torch import load_file, save_file

    MoCoModel(tiny_moco_v3(position_embedding="sincos")).save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    del tensors["backbone.pos_embed"]
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    loaded = MoCoModel.from_pretrained(tmp_path)
    torch.testing.assert_close(loaded.backbone.pos_embed, _authors_sincos(4, 64).float(), rtol=0, atol=1e-6)


def test_sincos_needs_a_vit():
    with pytest.raises(ValueError, match="position_embedding='sincos' needs a ViT backbone"):
        MoCoModel(tiny_moco_v2(position_embedding="sincos"))

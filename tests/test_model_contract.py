"""The contract every model family shares: transformers' output types, hidden states from timm, the
classification heads (problem types, Auto classes, pipelines) and the per-family remote code."""

import functools
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageClassification, pipeline
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutputWithNoAttention

from sslhub import (
    ColorizationConfig,
    ColorizationForImageClassification,
    ColorizationForPreTraining,
    ColorizationModel,
    MoCoConfig,
    MoCoForImageClassification,
    MoCoForPreTraining,
    MoCoModel,
    StudentConfig,
    StudentForDistillation,
    StudentForImageClassification,
    StudentModel,
)
from sslhub.hub.remote_code import add_remote_code, remote_code_files
from sslhub.models.modeling_common import EncoderOutput

from .helpers import tiny_moco_v2, tiny_moco_v3

VIT = {"backbone": "test_vit", "backbone_kwargs": {"img_size": 32, "patch_size": 8}}
SMALL = {"image_size": 32, "crop_pct": 1.0}


def _student(**overrides) -> StudentConfig:
    return StudentConfig(
        **{
            "backbone": "test_resnet",
            "loss": "mse",
            "teacher_dim": 16,
            "projector_hidden_size": 32,
            **SMALL,
            **overrides,
        }
    )


def _colorization(**overrides) -> ColorizationConfig:
    return ColorizationConfig(**{"backbone": "test_resnet", "decoder_hidden_size": 16, **SMALL, **overrides})


CONFIGS = {
    "moco-resnet": tiny_moco_v2,
    "moco-resnet-small-stem": lambda **kw: tiny_moco_v2(small_input_stem=True, **kw),
    "moco-vit-sincos": lambda **kw: tiny_moco_v3(position_embedding="sincos", **kw),
    "student-resnet": _student,
    "student-efficientnet": lambda **kw: _student(backbone="test_efficientnet", **kw),
    "student-vit": lambda **kw: _student(**VIT, **kw),
    "colorization-resnet": _colorization,
    "colorization-vit": lambda **kw: _colorization(**VIT, **kw),
}
FAMILIES = {  # config class -> (inference, training, classification)
    MoCoConfig: (MoCoModel, MoCoForPreTraining, MoCoForImageClassification),
    StudentConfig: (StudentModel, StudentForDistillation, StudentForImageClassification),
    ColorizationConfig: (ColorizationModel, ColorizationForPreTraining, ColorizationForImageClassification),
}
ONE_PER_FAMILY = ["moco-vit-sincos", "student-resnet", "colorization-resnet"]


def _is_vit(config) -> bool:
    return config.backbone == "test_vit"


def _images(batch=2):
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))


# ------------------------------------------------------------------------------------ encoder outputs


@pytest.mark.parametrize("name", CONFIGS)
def test_encoder_returns_base_model_output_with_pooling(name):
    config = CONFIGS[name]()
    model = FAMILIES[type(config)][0](config).eval()
    with torch.no_grad():
        output = model(_images())
        pooled_again = model.backbone.forward_head(output.last_hidden_state, pre_logits=True)
        as_tuple = model(_images(), return_dict=False)
    assert isinstance(output, BaseModelOutputWithPooling) and isinstance(output, EncoderOutput)
    assert output.pooler_output.shape == (2, model.num_features)
    features = output.last_hidden_state  # always there: what the pooled embedding is pooled from
    if _is_vit(config):
        assert features.shape == (2, 1 + 16, model.num_features)  # class token + 4 x 4 patches
    else:
        assert features.ndim == 4 and features.shape[:2] == (2, model.num_features)
    torch.testing.assert_close(pooled_again, output.pooler_output, rtol=0, atol=0)
    assert output.hidden_states is None and output.attentions is None
    has_projection = getattr(model, "projector", None) is not None
    assert (output.projection is not None) == has_projection
    expected_keys = ["last_hidden_state", "pooler_output"] + (["projection"] if has_projection else [])
    assert list(output.keys()) == expected_keys
    assert len(as_tuple) == len(expected_keys)
    for value, key in zip(as_tuple, expected_keys, strict=True):
        torch.testing.assert_close(value, output[key])


@pytest.mark.parametrize("name", CONFIGS)
def test_hidden_states_come_from_one_pass_of_forward_intermediates(name, monkeypatch):
    config = CONFIGS[name]()
    model = FAMILIES[type(config)][0](config).eval()
    backbone = model.backbone
    calls = []
    for method in ("forward_features", "forward_intermediates"):
        original = getattr(backbone, method)

        @functools.wraps(original)  # keeps the signature that `backbone_intermediates` reads
        def counted(*args, _original=original, _method=method, **kwargs):
            calls.append(_method)
            return _original(*args, **kwargs)

        monkeypatch.setattr(backbone, method, counted)
    with torch.no_grad():
        plain = model(_images())
        assert calls == ["forward_features"]  # the default path: one pass, no intermediates
        calls.clear()
        output = model(_images(), output_hidden_states=True)
        assert calls == ["forward_intermediates"]  # the same single pass, with its intermediates
    torch.testing.assert_close(output.last_hidden_state, plain.last_hidden_state, rtol=0, atol=0)
    torch.testing.assert_close(output.pooler_output, plain.pooler_output, rtol=0, atol=0)
    hidden_states = output.hidden_states
    assert isinstance(hidden_states, tuple) and len(hidden_states) > 1
    if _is_vit(config):  # every block's tokens, class token first, laid out as last_hidden_state
        assert len(hidden_states) == len(backbone.blocks)
        assert all(h.shape == output.last_hidden_state.shape for h in hidden_states)
        with torch.no_grad():
            torch.testing.assert_close(backbone.norm(hidden_states[-1]), output.last_hidden_state)
    else:  # the stem and every stage, NCHW
        assert all(h.ndim == 4 and h.shape[0] == 2 for h in hidden_states)
    if "resnet" in config.backbone:  # a ResNet's last stage is its last map; an EfficientNet adds a head conv
        torch.testing.assert_close(hidden_states[-1], output.last_hidden_state, rtol=0, atol=0)
    if "small-stem" in name:
        assert hidden_states[0].shape[-2:] == (32, 32)  # the 3x3 stride-1 stem keeps the resolution


def test_hidden_states_fall_back_to_the_last_feature_map(monkeypatch):
    model = MoCoModel(tiny_moco_v2()).eval()

    def not_implemented(*args, **kwargs):
        raise NotImplementedError

    monkeypatch.setattr(model.backbone, "forward_intermediates", not_implemented)
    with torch.no_grad():
        output = model(_images(), output_hidden_states=True)
    assert len(output.hidden_states) == 1
    assert output.hidden_states[0] is output.last_hidden_state


@pytest.mark.parametrize("name", ONE_PER_FAMILY)
def test_the_configs_output_flags_apply_when_a_call_leaves_them_unset(name):
    # As transformers' models: `from_pretrained(..., return_dict=False, output_hidden_states=True)` sets them.
    config = CONFIGS[name](return_dict=False, output_hidden_states=True, num_labels=3)
    inference, _, classification = FAMILIES[type(config)]
    with torch.no_grad():
        for model_class in (inference, classification):
            model = model_class(config).eval()
            as_tuple = model(_images())
            assert isinstance(as_tuple, tuple)
            output = model(_images(), return_dict=True)
            assert output.hidden_states is not None and len(output.hidden_states) > 1
            assert model(_images(), return_dict=True, output_hidden_states=False).hidden_states is None


def test_a_pretraining_model_configured_for_tuples_still_trains():
    # Its encoders are called for their named outputs whatever the config says; the step returns a tuple.
    model = MoCoForPreTraining(tiny_moco_v2(return_dict=False)).train()
    loss, logits, *_ = model(_images(), _images())
    loss.backward()
    assert logits.shape[0] == 2 and all(p.grad is not None for p in model.query_encoder.parameters())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ONE_PER_FAMILY)
def test_every_class_runs_in_the_half_precision_it_is_loaded_in(name, dtype):
    # `from_pretrained(..., dtype=torch.bfloat16)` with inputs of that dtype, as a pipeline passes them;
    # colorization computes Lab in float32 and must hand the backbone its own dtype.
    config = CONFIGS[name](num_labels=3)
    inference, training, classification = FAMILIES[type(config)]
    images = _images().to(dtype)
    with torch.no_grad():
        for model_class in (inference, classification):
            model = model_class(config).eval().to(dtype)
            output = model(images)
            first = output.pooler_output if model_class is inference else output.logits
            assert first.dtype == dtype and torch.isfinite(first.float()).all()
        if training is ColorizationForPreTraining:
            model = training(config).eval().to(dtype)
            assert torch.isfinite(model(images).loss) and model.colorize(images).shape == images.shape


@pytest.mark.parametrize("name", ONE_PER_FAMILY)
def test_inputs_that_are_not_processed_images_are_refused_with_the_way_to_make_them(name):
    model = FAMILIES[type(CONFIGS[name]())][0](CONFIGS[name]()).eval()
    with pytest.raises(TypeError, match="image processor"):
        model(Image.new("RGB", (32, 32)))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\).*\(2, 1, 32, 32\)"):
        model(torch.zeros(2, 1, 32, 32))  # grey images without the processor's conversion to RGB
    with pytest.raises(ValueError, match="float images"):
        model(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))


# ----------------------------------------------------------------------------------- classification


def _reference_loss(problem_type, logits, labels):
    """The loss formulas, in float64, written out."""
    z, y = logits.double(), labels
    if problem_type == "single_label_classification":
        return -(z.log_softmax(dim=1)[torch.arange(len(y)), y]).mean()  # cross-entropy
    if problem_type == "multi_label_classification":
        p = torch.sigmoid(z)
        return -(y * p.log() + (1 - y) * (1 - p).log()).mean()  # binary cross-entropy with logits
    return ((z.squeeze() - y.double().squeeze()) ** 2).mean()  # mean squared error


LABELS = {
    "single_label_classification": (3, torch.tensor([0, 2, 1, 2])),
    "multi_label_classification": (
        3,
        torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.0, 1.0, 0.0]]),
    ),
    "regression": (3, torch.randn(4, 3, generator=torch.Generator().manual_seed(0))),
    "regression-one-target": (1, torch.randn(4, generator=torch.Generator().manual_seed(1))),
}


@pytest.mark.parametrize("problem", LABELS)
@pytest.mark.parametrize("name", ONE_PER_FAMILY)
def test_classifier_loss_follows_the_problem_type(name, problem):
    problem_type = problem.removesuffix("-one-target")
    num_labels, labels = LABELS[problem]
    config = CONFIGS[name](num_labels=num_labels, problem_type=problem_type)
    model = FAMILIES[type(config)][2](config).eval()
    output = model(_images(4), labels=labels, output_hidden_states=True)
    assert isinstance(output, ImageClassifierOutputWithNoAttention)
    assert output.logits.shape == (4, num_labels)
    assert output.hidden_states is not None and len(output.hidden_states) > 1
    expected = _reference_loss(problem_type, output.logits.detach(), labels)
    assert output.loss.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-7)
    output.loss.backward()
    assert model.classifier.weight.grad is not None
    assert model(_images(4)).loss is None
    loss, logits = model(_images(4), labels=labels, return_dict=False)
    torch.testing.assert_close(logits, output.logits)


@pytest.mark.parametrize("name", ONE_PER_FAMILY)
def test_classifier_infers_an_unset_problem_type_as_transformers_does(name):
    for num_labels, labels, expected in (
        (3, torch.tensor([0, 1]), "single_label_classification"),
        (3, torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]), "multi_label_classification"),
        (1, torch.tensor([0.5, -1.0]), "regression"),
    ):
        config = CONFIGS[name](num_labels=num_labels)
        model = FAMILIES[type(config)][2](config)
        assert model.config.problem_type is None
        model(_images(), labels=labels)
        assert model.config.problem_type == expected


@pytest.mark.parametrize("name", ONE_PER_FAMILY)
def test_auto_classifier_loads_the_encoder_from_every_folder_kind(name, tmp_path):
    config = CONFIGS[name]()
    inference, training, classification = FAMILIES[type(config)]
    encoder = inference(config).eval()
    folders = {"inference": encoder, "training": training(config), "classifier": classification(config)}
    folders["training"].base_model.load_state_dict(encoder.state_dict())
    folders["classifier"].base_model.load_state_dict(encoder.state_dict(), strict=False)
    for kind, model in folders.items():
        model.save_pretrained(tmp_path / kind)
        loaded = AutoModelForImageClassification.from_pretrained(
            tmp_path / kind, num_labels=5, ignore_mismatched_sizes=kind == "classifier"
        ).eval()
        assert type(loaded) is classification, kind
        assert loaded.config.num_labels == 5 and loaded.classifier.out_features == 5
        for key, value in loaded.base_model.backbone.state_dict().items():
            assert torch.equal(value, encoder.backbone.state_dict()[key]), (kind, key)
        assert getattr(loaded.base_model, "projector", None) is None  # the head reads the pooled embedding
        with torch.no_grad():
            pooled = encoder(_images()).pooler_output
            torch.testing.assert_close(
                loaded(_images()).logits, loaded.classifier(pooled), rtol=1e-5, atol=1e-6
            )


@pytest.mark.parametrize("name", ONE_PER_FAMILY)
def test_saved_classifier_round_trips_and_serves_the_pipelines(name, tmp_path):
    config = CONFIGS[name](
        num_labels=3, id2label={0: "cat", 1: "dog", 2: "bird"}, label2id={"cat": 0, "dog": 1, "bird": 2}
    )
    inference, _, classification = FAMILIES[type(config)]
    model = classification(config).eval()
    model.save_pretrained(tmp_path / "classifier")
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path / "classifier").eval()
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8))
    classify = pipeline("image-classification", model=str(tmp_path / "classifier"), device="cpu")
    predictions = classify(image, top_k=3)
    pixel_values = classify.image_processor(images=image, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        probabilities = model(pixel_values).logits.softmax(dim=1)[0]
    assert {p["label"] for p in predictions} == {"cat", "dog", "bird"}
    for prediction in predictions:
        index = config.label2id[prediction["label"]]
        assert prediction["score"] == pytest.approx(probabilities[index].item(), abs=1e-5)

    encoder = inference(config).eval()
    encoder.save_pretrained(tmp_path / "encoder")
    extract = pipeline("image-feature-extraction", model=str(tmp_path / "encoder"), device="cpu")
    with torch.no_grad():
        expected = encoder(pixel_values).pooler_output
    features = torch.tensor(extract(image, pool=True))
    torch.testing.assert_close(features.reshape(expected.shape), expected, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------- remote code

_OTHER_FAMILIES = {
    MoCoConfig: ("modeling_student.py", "modeling_colorization.py", "color.py", "losses_colorization.py"),
    StudentConfig: ("modeling_moco.py", "modeling_colorization.py", "color.py", "losses_contrastive.py"),
    ColorizationConfig: ("modeling_moco.py", "modeling_student.py", "losses_contrastive.py", "momentum.py"),
}


@pytest.mark.parametrize("config_class", FAMILIES, ids=lambda c: c.__name__)
def test_remote_code_closure_stays_per_family(config_class):
    files, auto_map = remote_code_files(config_class)
    assert not set(_OTHER_FAMILIES[config_class]) & set(files)
    classification = FAMILIES[config_class][2]
    assert auto_map["AutoModelForImageClassification"].endswith(f".{classification.__name__}")


LOAD_WITHOUT_SSLHUB = textwrap.dedent(
    """
    import sys

    class BlockSslhub:
        def find_spec(self, name, path=None, target=None):
            if name == "sslhub" or name.startswith("sslhub."):
                raise ModuleNotFoundError(name)

    sys.meta_path.insert(0, BlockSslhub())
    import torch
    from transformers import AutoModelForImageClassification

    for folder in sys.argv[1:]:
        model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
        assert "transformers_modules" in type(model).__module__, type(model).__module__
        expected = torch.load(f"{folder}/expected.pt")
        with torch.no_grad():
            output = model(expected["pixel_values"], output_hidden_states=True)
        torch.testing.assert_close(output.logits, expected["logits"])
        assert type(output).__name__ == "ImageClassifierOutputWithNoAttention" and output.hidden_states
    """
)


def test_classifiers_load_with_remote_code_without_sslhub(tmp_path):
    folders = []
    for name in ONE_PER_FAMILY:
        config = CONFIGS[name](num_labels=4)
        model = FAMILIES[type(config)][2](config).eval()
        folder = tmp_path / name
        model.save_pretrained(folder)
        add_remote_code(folder)
        with torch.no_grad():
            torch.save({"pixel_values": _images(), "logits": model(_images()).logits}, folder / "expected.pt")
        # Loaded with sslhub and saved again (a fine-tuned model, `push_to_hub`): it still carries the
        # modules its config's auto_map names.
        resaved = tmp_path / f"{name}-resaved"
        FAMILIES[type(config)][2].from_pretrained(folder).save_pretrained(resaved)
        shutil.copyfile(folder / "expected.pt", resaved / "expected.pt")
        folders += [str(folder), str(resaved)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "PYTHON"))}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    run = subprocess.run(
        [sys.executable, "-I", "-c", LOAD_WITHOUT_SSLHUB, *folders],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]

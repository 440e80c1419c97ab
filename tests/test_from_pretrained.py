"""`from_pretrained` of every training class is a correct starting point for more training.

Two folder kinds per class: the inference folder (`MoCoModel`, `StudentModel`, `ColorizationModel`), which
starts training afresh, and the full training checkpoint (`...ForPreTraining` / `...ForDistillation`), which
continues it. Both by path and by Hub id (an offline cache), and both again after `accelerate` prepares
the model and its optimizer.
"""

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from accelerate import Accelerator
from huggingface_hub import constants as hf_constants
from safetensors.torch import load_file
from torch import nn

from sslhub import (
    ColorizationConfig,
    ColorizationForPreTraining,
    ColorizationModel,
    MoCoConfig,
    MoCoForPreTraining,
    MoCoModel,
    StudentConfig,
    StudentForDistillation,
    StudentModel,
)
from sslhub.models.modeling_student import TeacherAdapter

from .helpers import fill_hub_cache, tiny_moco_v2, tiny_moco_v3

TINY = dict(image_size=32, crop_pct=1.0)


def _moco(config: MoCoConfig) -> tuple[MoCoForPreTraining, dict]:
    return MoCoForPreTraining(config), {}


def _student() -> tuple[StudentForDistillation, dict]:
    config = StudentConfig(
        backbone="test_resnet",
        loss="compress_2q",
        teacher_dim=16,
        projector_hidden_size=32,
        queue_size=16,
        **TINY,
    )
    teacher = TeacherAdapter(MoCoModel(tiny_moco_v2()))
    return StudentForDistillation(config, teacher=teacher), {"teacher": teacher}


def _colorization() -> tuple[ColorizationForPreTraining, dict]:
    config = ColorizationConfig.paper(backbone="test_resnet", decoder_hidden_size=16, **TINY)
    return ColorizationForPreTraining(config), {}


@dataclass
class Case:
    build: Callable[[], tuple[nn.Module, dict]]
    encoder: str  # the attribute holding the inference model, saved as the inference folder
    queues: tuple[str, ...] = ()  # L2-normalized queue buffers, with `queue_ptr`
    frozen: str | None = None  # prefix of the tensors that must never be trained


CASES = {
    "moco-v1": Case(
        lambda: _moco(
            MoCoConfig.v1(
                backbone="test_resnet", queue_size=32, projection_dim=16, shuffle_bn_splits=2, **TINY
            )
        ),
        "query_encoder",
        ("queue",),
        "key_encoder.",
    ),
    "moco-v2": Case(lambda: _moco(tiny_moco_v2()), "query_encoder", ("queue",), "key_encoder."),
    "moco-v3-resnet": Case(
        lambda: _moco(
            MoCoConfig.v3(
                backbone="test_resnet",
                projector_hidden_size=32,
                predictor_hidden_size=32,
                projection_dim=16,
                **TINY,
            )
        ),
        "query_encoder",
        (),
        "key_encoder.",
    ),
    "moco-v3-vit-sincos": Case(
        lambda: _moco(tiny_moco_v3(position_embedding="sincos")), "query_encoder", (), "key_encoder."
    ),
    "student-compress-2q": Case(_student, "student", ("teacher_queue", "student_queue")),
    "colorization": Case(_colorization, "encoder"),
}


def _step(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    images = torch.randn(4, 3, 32, 32)
    if isinstance(model, MoCoForPreTraining):
        loss = model(query_pixel_values=images, key_pixel_values=torch.randn(4, 3, 32, 32)).loss
    else:
        loss = model(images).loss
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def _trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Per case, a model after two training steps (a key encoder that is no longer the query encoder, queues
    that moved, learned class weights) saved both ways, and the model itself."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("saved")
    folders = {}
    for name, case in CASES.items():
        model, _ = case.build()
        optimizer = torch.optim.SGD(_trainable(model), lr=0.1)
        if isinstance(model, ColorizationForPreTraining):
            model.set_class_weights_from_prior(torch.rand(313) ** 2)
        model.train()
        for _ in range(2):
            _step(model, optimizer)
        model.eval()
        if case.frozen is not None:  # so that "as saved" and "copied from the query encoder" differ
            query, key = model.query_encoder.state_dict(), model.key_encoder.state_dict()
            assert any(not torch.equal(query[k], key[k]) for k in query), name
        model.save_pretrained(root / name / "checkpoint")
        getattr(model, case.encoder).save_pretrained(root / name / "inference")
        folders[name] = model
    return root, folders


def _load(model_class, folder, source, tmp_path, **kwargs):
    if source == "folder":
        return model_class.from_pretrained(folder, **kwargs)
    assert hf_constants.HF_HUB_OFFLINE, "the suite runs with HF_HUB_OFFLINE=1 (tests/conftest.py)"
    repo_id = f"sslhub-test/{folder.parent.name}-{folder.name}"
    fill_hub_cache(tmp_path / "hub", repo_id, folder)
    return model_class.from_pretrained(repo_id, cache_dir=tmp_path / "hub", **kwargs)


def _check(loaded: nn.Module, trained: nn.Module, case: Case, kind: str) -> None:
    state, saved_state = loaded.state_dict(), trained.state_dict()
    assert state.keys() == saved_state.keys()
    # Gradients where they belong: every parameter of the trained part, none of the frozen part.
    for name, parameter in loaded.named_parameters():
        frozen = case.frozen is not None and name.startswith(case.frozen)
        assert parameter.requires_grad is not frozen, name
    if kind == "checkpoint":  # exactly as saved: weights, BN statistics, key encoder, queues, pointer
        for key, value in saved_state.items():
            assert torch.equal(state[key], value), key
        if isinstance(loaded, ColorizationForPreTraining):
            assert loaded.class_weights_source == "checkpoint"
        return
    prefix = f"{case.encoder}."
    for key, value in saved_state.items():
        if key.startswith(prefix):
            assert torch.equal(state[key], value), key
    if case.frozen is not None:  # the key encoder is an exact copy of the loaded query encoder
        query = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        key_encoder = {k[len(case.frozen) :]: v for k, v in state.items() if k.startswith(case.frozen)}
        assert key_encoder.keys() == query.keys()
        for key, value in query.items():
            assert torch.equal(key_encoder[key], value), key
    for name in case.queues:  # drawn afresh: unit rows, not the saved queue, pointer at 0
        queue = getattr(loaded, name)
        torch.testing.assert_close(queue.norm(dim=1), torch.ones(queue.shape[0]))
        assert not torch.equal(queue, saved_state[name]), name
    if case.queues:
        assert saved_state["queue_ptr"].item() != 0 and loaded.queue_ptr.item() == 0
    if isinstance(loaded, ColorizationForPreTraining):
        assert torch.equal(loaded.class_weights, torch.ones(313)) and loaded.class_weights_source == "uniform"


@pytest.mark.parametrize("source", ["folder", "hub_id"])
@pytest.mark.parametrize("kind", ["inference", "checkpoint"])
@pytest.mark.parametrize("case_name", CASES.keys())
def test_from_pretrained_is_a_starting_point_for_training(saved, case_name, kind, source, tmp_path):
    root, trained = saved
    case = CASES[case_name]
    _, kwargs = case.build()
    model_class = type(trained[case_name])
    loaded = _load(model_class, root / case_name / kind, source, tmp_path, **kwargs)
    assert type(loaded) is model_class
    _check(loaded, trained[case_name], case, kind)

    # The same after Accelerate prepared it with an optimizer over the trainable tensors only.
    optimizer = torch.optim.SGD(_trainable(loaded), lr=0.1)
    prepared, optimizer = Accelerator(cpu=True).prepare(loaded, optimizer)
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for name, parameter in prepared.named_parameters():
        frozen = case.frozen is not None and name.startswith(case.frozen)
        assert (id(parameter) in optimized) is not frozen, name
    _check(prepared, trained[case_name], case, kind)
    prepared.train()
    _step(prepared, optimizer)  # a training step reaches the trainable tensors only
    for name, parameter in prepared.named_parameters():
        frozen = case.frozen is not None and name.startswith(case.frozen)
        assert (parameter.grad is None) is frozen and parameter.requires_grad is not frozen, name


def test_a_teacher_is_never_saved(saved):
    root, trained = saved
    tensors = load_file(root / "student-compress-2q" / "checkpoint" / "model.safetensors")
    assert trained["student-compress-2q"].teacher is not None
    assert set(tensors) == set(trained["student-compress-2q"].state_dict())
    assert not any(key.startswith(("teacher.", "_teacher.")) for key in tensors)
    assert {"teacher_queue", "student_queue", "queue_ptr"} <= set(tensors)


def test_loading_info_is_still_returned(saved):
    root, _ = saved
    model, info = MoCoForPreTraining.from_pretrained(root / "moco-v2" / "inference", output_loading_info=True)
    assert isinstance(model, MoCoForPreTraining) and not info["missing_keys"]
    assert not any(p.requires_grad for p in model.key_encoder.parameters())


@pytest.mark.parametrize(
    "model_class, case_name",
    [
        (StudentModel, "moco-v2"),  # would fail on a MoCo-only setting, naming a StudentConfig typo
        (StudentForDistillation, "moco-v2"),
        (MoCoModel, "student-compress-2q"),  # would load none of the weights, keeping a random model
        (MoCoForPreTraining, "colorization"),
        (ColorizationModel, "moco-v3-resnet"),
    ],
)
def test_a_folder_of_another_family_is_refused(saved, model_class, case_name):
    root, _ = saved
    model_type = CASES[case_name].build()[0].config.model_type
    with pytest.raises(ValueError, match=f"of a '{model_type}' model.*AutoModel"):
        model_class.from_pretrained(root / case_name / "inference")

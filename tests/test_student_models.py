"""Contract tests over the student model classes, distillation-specific behaviour, teachers and k-means."""

import importlib

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, AutoModelForImageClassification, AutoModelForPreTraining

from sslhub import (
    MoCoForImageClassification,
    MoCoModel,
    StudentConfig,
    StudentForDistillation,
    StudentForImageClassification,
    StudentModel,
)
from sslhub.models.modeling_common import output_embedding
from sslhub.models.modeling_student import TeacherAdapter
from sslhub.training import assign_clusters, kmeans, load_teacher
from sslhub.training.kmeans import faiss_available

from .helpers import tiny_moco_v2

BACKBONES = {
    "test_resnet": None,
    "test_efficientnet": None,
    "test_vit": {"img_size": 32, "patch_size": 8},
}
QUEUE_LOSSES = ("seed", "compress_1q", "compress_2q")
AUTO_CLASS = {
    StudentModel: AutoModel,
    StudentForDistillation: AutoModelForPreTraining,
    StudentForImageClassification: AutoModelForImageClassification,
}


def tiny_student(loss="seed", backbone="test_resnet", **overrides) -> StudentConfig:
    settings = dict(
        backbone=backbone,
        backbone_kwargs=BACKBONES[backbone],
        loss=loss,
        teacher_dim=16,
        projector_hidden_size=32,
        num_clusters=5,
        queue_size=32 if loss in QUEUE_LOSSES else 0,
        image_size=32,
        crop_pct=1.0,
    )
    return StudentConfig(**{**settings, **overrides})


def tiny_teacher(loss="seed") -> TeacherAdapter:
    """A randomly initialized teacher with 16-d outputs: MoCo projections, or timm logits for KD."""
    if loss == "kl":
        return load_teacher("timm:test_resnet", "logits", pretrained=False, model_kwargs={"num_classes": 16})
    return TeacherAdapter(MoCoModel(tiny_moco_v2()))


def _build(model_class, backbone, loss="seed"):
    config = tiny_student(loss, backbone, num_labels=3)
    if model_class is not StudentForDistillation:
        return model_class(config), config
    return StudentForDistillation(config, teacher=tiny_teacher(loss)), config


def _images(batch=4):
    return torch.randn(batch, 3, 32, 32)


def _primary(output):
    if getattr(output, "loss", None) is not None:
        return output.loss
    if "logits" in output:
        return output.logits.pow(2).sum()
    return output.pooler_output.pow(2).sum() + output.projection.pow(2).sum()


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("model_class", AUTO_CLASS, ids=lambda c: c.__name__)
class TestContract:
    def test_output_shapes(self, model_class, backbone):
        model, config = _build(model_class, backbone)
        output = model(_images())
        if model_class is StudentModel:
            assert output.pooler_output.shape == (4, model.num_features)
            assert output.projection.shape == (4, config.teacher_dim)
            assert list(output.keys()) == ["last_hidden_state", "pooler_output", "projection"]
        elif model_class is StudentForImageClassification:
            assert output.logits.shape == (4, 3) and output.loss is None
        else:
            assert output.logits.shape == (4, 1 + config.queue_size)
            assert output.student_embeddings.shape == output.teacher_embeddings.shape == (4, 16)
            torch.testing.assert_close(output.student_embeddings.norm(dim=1), torch.ones(4))
            assert output.loss.ndim == 0 and torch.isfinite(output.loss)

    def test_gradients_reach_only_the_student(self, model_class, backbone):
        model, _ = _build(model_class, backbone)
        _primary(model(_images())).backward()
        assert all(p.grad is not None for p in model.parameters())
        assert any(p.grad.abs().sum() > 0 for p in model.parameters())
        if model_class is StudentForDistillation:
            teacher_parameters = list(model.teacher.parameters())
            assert teacher_parameters and all(
                p.grad is None and not p.requires_grad for p in teacher_parameters
            )
            assert not {id(p) for p in teacher_parameters} & {id(p) for p in model.parameters()}

    def test_save_and_auto_load_round_trip(self, model_class, backbone, tmp_path):
        model, _ = _build(model_class, backbone)
        model.eval()
        model.save_pretrained(tmp_path)
        assert (tmp_path / "preprocessor_config.json").exists()
        assert isinstance(AutoConfig.from_pretrained(tmp_path), StudentConfig)
        saved = load_file(tmp_path / "model.safetensors")
        assert saved.keys() == model.state_dict().keys()  # the teacher is not saved
        loaded = AUTO_CLASS[model_class].from_pretrained(tmp_path)
        assert type(loaded) is model_class
        loaded.eval()
        x = _images()
        extra = {}
        if model_class is StudentForDistillation:
            assert loaded.teacher is None
            with torch.no_grad():
                extra = {"teacher_embeddings": model.teacher(x)}
        # Weights are compared exactly below; outputs within float32 rounding, because loaded tensors are
        # views of the memory-mapped file whose alignment can steer SIMD kernels down another path.
        with torch.no_grad():
            for a, b in zip(model(x, **extra).to_tuple(), loaded(x, **extra).to_tuple(), strict=True):
                torch.testing.assert_close(a, b)
        for key, value in model.state_dict().items():
            assert torch.equal(value, loaded.state_dict()[key]), key

    def test_stripped_backbone_loads_into_timm(self, model_class, backbone):
        model, config = _build(model_class, backbone)
        model.eval()
        prefix = "backbone." if model_class is StudentModel else "student.backbone."
        stripped = {k[len(prefix) :]: v for k, v in model.state_dict().items() if k.startswith(prefix)}
        reference = timm.create_model(config.backbone, num_classes=0, **(config.backbone_kwargs or {}))
        reference.load_state_dict(stripped, strict=True)
        reference.eval()
        encoder = model.base_model
        x = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(reference(x), encoder.backbone(x), rtol=0, atol=0)


LOSSES = ("kl", "mse", "seed", "compress_1q", "compress_2q", "cluster")


@pytest.mark.parametrize("loss", LOSSES)
def test_a_few_steps_lower_each_loss_on_a_fixed_batch(loss):
    model = StudentForDistillation(tiny_student(loss), teacher=tiny_teacher(loss))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, labels = _images(8), torch.arange(8) % 5
    with torch.no_grad():
        cached = model.teacher(x)  # the teacher is frozen: run it once
    losses = []
    for _ in range(10):
        # Queue losses: a queue refilled from one fixed batch would hold that batch's own keys, so the
        # loss is measured against a fixed bank.
        loss_value = model(x, teacher_embeddings=cached, pseudo_labels=labels, update_queue=False).loss
        optimizer.zero_grad()
        loss_value.backward()
        optimizer.step()
        losses.append(loss_value.item())
    assert sum(losses[-3:]) / 3 < 0.8 * losses[0], losses


def test_teacher_is_outside_the_module_tree_and_stays_in_eval_mode():
    teacher = MoCoModel(tiny_moco_v2())
    model = StudentForDistillation(tiny_student())
    model.teacher = teacher  # routed to `set_teacher`, not registered as a submodule
    assert isinstance(model.teacher, TeacherAdapter) and model.teacher.model is teacher
    assert not any("teacher." in name or name.startswith("teacher") for name, _ in model.named_modules())
    assert not any(k.startswith(("teacher.", "_teacher")) for k in model.state_dict())
    model.train()
    assert model.training and not teacher.training and not model.teacher.training
    teacher.train()  # even when the wrapped model itself is switched, the forward runs it in eval mode
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model(_images()).loss.backward()
    optimizer.step()
    assert not teacher.training
    for key, value in teacher.state_dict().items():  # frozen weights and BN statistics
        assert torch.equal(value, teacher_state[key]), key
    model.to(torch.float64)  # `.to()` reaches the teacher
    assert all(p.dtype == torch.float64 for p in teacher.parameters())
    model.teacher = None
    assert model.teacher is None


def test_precomputed_teacher_embeddings_replace_the_teacher():
    model = StudentForDistillation(tiny_student(), teacher=tiny_teacher()).eval()
    x = _images()
    with torch.no_grad():
        with_teacher = model(x)
        cached = model.teacher(x)
        model.set_teacher(None)
        torch.testing.assert_close(model(x, teacher_embeddings=cached).loss, with_teacher.loss)
        with pytest.raises(ValueError, match="needs the teacher's embeddings"):
            model(x)
        with pytest.raises(ValueError, match="teacher_dim=16"):
            model(x, teacher_embeddings=torch.randn(4, 8))


def test_teacher_pixel_values_are_what_the_teacher_sees():
    model = StudentForDistillation(tiny_student(), teacher=tiny_teacher()).eval()
    x, x_teacher = _images(), _images()
    with torch.no_grad():
        output = model(x, teacher_pixel_values=x_teacher)
        expected = F.normalize(model.teacher(x_teacher), dim=1)
    torch.testing.assert_close(output.teacher_embeddings, expected)


def test_cluster_loss_needs_pseudo_labels():
    model = StudentForDistillation(tiny_student("cluster"))
    with pytest.raises(ValueError, match="pseudo_labels"):
        model(_images())
    assert model(_images(), pseudo_labels=torch.tensor([0, 1, 2, 4])).logits.shape == (4, 5)


@pytest.mark.parametrize("loss", ["seed", "compress_2q"])
def test_queues_receive_the_embeddings_in_fifo_order(loss):
    model = StudentForDistillation(tiny_student(loss, queue_size=12), teacher=tiny_teacher())
    teacher_before = model.teacher_queue.clone()
    output = model(_images())
    torch.testing.assert_close(model.teacher_queue[:4], output.teacher_embeddings)
    assert torch.equal(model.teacher_queue[4:], teacher_before[4:])
    if loss == "compress_2q":
        torch.testing.assert_close(model.student_queue[:4], output.student_embeddings.detach())
    assert model.queue_ptr.item() == 4
    for _ in range(2):
        model(_images())
    assert model.queue_ptr.item() == 0  # 3 x 4 embeddings fill 12 slots and wrap
    model.eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model(_images())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_mse_target_batch_norm_normalizes_the_teacher_target():
    model = StudentForDistillation(tiny_student("mse"), teacher=tiny_teacher())
    x = _images(8)
    output = model(x)
    target = F.batch_norm(output.teacher_embeddings, None, None, training=True)
    student = model.student(x).projection
    torch.testing.assert_close(output.loss, F.mse_loss(student, target))
    assert model.target_norm.num_batches_tracked.item() == 1


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match=r"loss must be one of \['kl', 'mse', 'seed'"):
        tiny_student("simclr")
    with pytest.raises(ValueError, match="queue_size"):
        tiny_student("kl", queue_size=8)
    with pytest.raises(ValueError, match="projector_num_layers >= 1"):
        StudentForDistillation(tiny_student(projector_num_layers=0))
    config = StudentConfig(backbone="test_resnet", loss="compress_2q")
    assert (config.temperature, config.teacher_temperature, config.queue_size) == (0.04, 0.04, 128000)
    config = StudentConfig(backbone="test_resnet", loss="seed")
    assert (config.temperature, config.teacher_temperature, config.queue_size) == (0.2, 1e-4, 65536)


def test_distillation_folder_loads_as_student_and_back(tmp_path):
    distillation = StudentForDistillation(tiny_student("compress_2q"), teacher=tiny_teacher()).eval()
    distillation.save_pretrained(tmp_path / "distill")
    student, info = StudentModel.from_pretrained(tmp_path / "distill", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    x = _images(2)
    with torch.no_grad():
        expected = distillation.student(x).projection
        torch.testing.assert_close(student.eval()(x).projection, expected)
    for key, value in student.state_dict().items():
        assert torch.equal(value, distillation.state_dict()[f"student.{key}"]), key
    student.save_pretrained(tmp_path / "student")
    teacher = tiny_teacher()
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    resumed = StudentForDistillation.from_pretrained(tmp_path / "student", teacher=teacher)
    assert resumed.teacher is teacher
    assert all(torch.equal(v, teacher_state[k]) for k, v in teacher.state_dict().items())
    torch.testing.assert_close(resumed.teacher_queue.norm(dim=1), torch.ones(32))
    torch.testing.assert_close(resumed.student_queue.norm(dim=1), torch.ones(32))
    assert resumed.queue_ptr.item() == 0


def test_load_teacher_from_timm_sslhub_and_transformers(tmp_path):
    from transformers import ViTConfig, ViTModel

    x = _images(2)
    timm_teacher = load_teacher("timm:test_resnet", pretrained=False)
    assert not timm_teacher.training and not any(p.requires_grad for p in timm_teacher.parameters())
    assert timm_teacher(x).shape == (2, timm_teacher.embedding_dim) and timm_teacher.image_mean is not None

    moco = MoCoModel(tiny_moco_v2(image_mean=[0.5, 0.4, 0.3])).eval()
    moco.save_pretrained(tmp_path / "moco")
    projection, pooled = load_teacher(str(tmp_path / "moco")), load_teacher(str(tmp_path / "moco"), "pooled")
    assert (projection.embedding_dim, pooled.embedding_dim) == (16, moco.num_features)
    assert projection.image_mean == (0.5, 0.4, 0.3) and projection.image_size == 32
    with torch.no_grad():
        torch.testing.assert_close(projection(x), moco(x).projection, rtol=0, atol=0)
        torch.testing.assert_close(pooled(x), moco(x).pooler_output, rtol=0, atol=0)
    # Logits need a trained head: a MoCo encoder has none (transformers would add a random one).
    with pytest.raises(ValueError, match="no trained classification head .*classifier.weight"):
        load_teacher(str(tmp_path / "moco"), "logits")
    classifier = MoCoForImageClassification(tiny_moco_v2(num_labels=5)).eval()
    classifier.save_pretrained(tmp_path / "classifier")
    logits = load_teacher(str(tmp_path / "classifier"), "logits")
    with torch.no_grad():
        torch.testing.assert_close(logits(x), classifier(x).logits, rtol=0, atol=0)

    vit = ViTModel(
        ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2)
    ).eval()
    vit.save_pretrained(tmp_path / "vit")
    with torch.no_grad():
        tokens = vit(x).last_hidden_state  # (2, 17, 32)
        for output, expected in [
            ("auto", vit(x).pooler_output),
            ("cls", tokens[:, 0]),
            ("mean", tokens.mean(dim=1)),
        ]:
            teacher = load_teacher(str(tmp_path / "vit"), output)
            assert teacher.embedding_dim == 32
            torch.testing.assert_close(teacher(x), expected, rtol=0, atol=0)


def test_output_embedding_reads_every_layout():
    pooled_map = torch.randn(3, 8, 1, 1)  # transformers CNNs return (N, C, 1, 1) pooler outputs
    assert torch.equal(output_embedding({"pooler_output": pooled_map}), pooled_map.flatten(1))
    assert torch.equal(output_embedding((torch.ones(3, 4), None)), torch.ones(3, 4))
    with pytest.raises(ValueError, match="logits"):
        output_embedding({"pooler_output": torch.ones(3, 4)}, "logits")


BACKENDS = [
    "torch",
    pytest.param("faiss", marks=pytest.mark.skipif(not faiss_available(), reason="no faiss")),
]


@pytest.mark.parametrize("backend", BACKENDS)
def test_kmeans_matches_sklearn_on_separated_blobs(backend):
    from sklearn.cluster import KMeans
    from sklearn.datasets import make_blobs
    from sklearn.metrics import adjusted_rand_score

    points, truth = make_blobs(n_samples=300, centers=6, n_features=5, cluster_std=0.5, random_state=0)
    centroids, labels = kmeans(torch.from_numpy(points), 6, seed=0, backend=backend)
    reference = KMeans(n_clusters=6, n_init=4, random_state=0).fit(points)
    assert adjusted_rand_score(reference.labels_, labels.numpy()) == 1.0
    assert adjusted_rand_score(truth, labels.numpy()) == 1.0
    for index in range(6):  # every centre is the mean of its members
        torch.testing.assert_close(
            centroids[index], torch.from_numpy(points)[labels == index].mean(dim=0), rtol=1e-5, atol=1e-5
        )


def test_kmeans_parallel_initialization_passes_over_the_data_a_few_times_whatever_k(monkeypatch):
    module = importlib.import_module("sslhub.training.kmeans")

    passes = []
    original = module._squared_distances

    def counted(x, centroids, chunk_size):
        passes.append(len(x))
        return original(x, centroids, chunk_size)

    monkeypatch.setattr(module, "_squared_distances", counted)
    features = torch.randn(2000, 8, generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(0)
    counts = {}
    for k in (4, 64):
        passes.clear()
        centres = module.kmeans_parallel_init(features, k, generator, rounds=5)
        counts[k] = sum(n == len(features) for n in passes)  # full passes over the 2,000 vectors
        assert centres.shape == (k, 8) and len({tuple(c.tolist()) for c in centres}) == k
    assert counts[4] == counts[64] <= 1 + 5 + 1  # the first centre, the rounds, the weights


def test_assign_clusters_is_the_nearest_centroid():
    features, centroids = torch.randn(50, 4), torch.randn(7, 4)
    labels, distances = assign_clusters(features, centroids, chunk_size=16)
    brute = torch.cdist(features, centroids)
    assert torch.equal(labels, brute.argmin(dim=1))
    torch.testing.assert_close(distances, brute.min(dim=1).values ** 2, rtol=1e-4, atol=1e-5)


def test_kmeans_handles_duplicates_and_empty_clusters():
    # 3 distinct points repeated, k = 3: k-means|| must find all three; k = N gives singletons.
    points = torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]]).repeat(4, 1)
    centroids, labels = kmeans(points, 3, backend="torch")
    assert torch.isfinite(centroids).all() and len(set(labels.tolist())) == 3
    distinct = torch.randn(8, 3)
    _, labels = kmeans(distinct, 8, backend="torch")
    assert sorted(labels.tolist()) == list(range(8))
    # More clusters than distinct points: empty clusters are re-seeded, the result stays valid.
    centroids, labels = kmeans(points, 5, iters=5, backend="torch")
    assert torch.isfinite(centroids).all() and labels.max() < 5
    with pytest.raises(ValueError, match="num_clusters"):
        kmeans(points, 13)

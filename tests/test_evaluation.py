"""Evaluation protocols: kNN against a naive reference, linear probe, feature extraction, cache, recipe."""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
from accelerate import Accelerator
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from sslhub import ColorizationConfig, ColorizationModel, MoCoModel
from sslhub.data import ImageDataset, collate, load_image_dataset
from sslhub.evaluation import (
    LinearClassifier,
    cached_features,
    card_eval_results,
    classifier_accuracy,
    confusion_matrix,
    extract_features,
    knn_accuracy,
    knn_predict,
    linear_probe,
    load_classifier,
    load_encoder,
    metric_name,
    nearest_neighbours,
    resolve_label_map,
    select_labels,
)

from .helpers import tiny_moco_v2

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------------------
# kNN
# ----------------------------------------------------------------------------------------------------------


def naive_knn_scores(train_x, train_y, test_x, num_classes, k, temperature):
    """InstDisc's weighted kNN written from the formula, one query and one bank item at a time."""
    scores = torch.zeros(len(test_x), num_classes, dtype=torch.float64)
    for i, query in enumerate(test_x.double()):
        similarities = []
        for j, item in enumerate(train_x.double()):
            cosine = float(query @ item) / (math.sqrt(float(query @ query)) * math.sqrt(float(item @ item)))
            similarities.append((cosine, j))
        similarities.sort(reverse=True)
        for cosine, j in similarities[: min(k, len(train_x))]:
            scores[i, int(train_y[j])] += math.exp(cosine / temperature)
    return scores


@pytest.mark.parametrize(("k", "temperature"), [(1, 0.1), (5, 0.07), (20, 0.5), (200, 0.1)])
def test_knn_matches_naive_reference(k, temperature):
    train_x, test_x = torch.randn(40, 6) * 3, torch.randn(15, 6)
    train_y = torch.randint(0, 4, (40,))
    scores = knn_predict(train_x, train_y, test_x, num_classes=4, k=k, temperature=temperature)
    reference = naive_knn_scores(train_x, train_y, test_x, 4, k, temperature)
    torch.testing.assert_close(scores.double(), reference, rtol=1e-4, atol=1e-6)


def test_knn_chunking_gives_the_same_scores():
    train_x, test_x, train_y = torch.randn(300, 16), torch.randn(101, 16), torch.randint(0, 10, (300,))
    whole = knn_predict(train_x, train_y, test_x, 10, k=20, chunk_size=10_000)
    for chunk_size in (1, 7, 64):  # matmul blocking may change the last bits only
        chunked = knn_predict(train_x, train_y, test_x, 10, k=20, chunk_size=chunk_size)
        torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-5)
        assert torch.equal(chunked.argmax(1), whole.argmax(1))


def test_knn_accuracy_on_clusters_and_chance():
    centres = torch.randn(5, 32) * 5
    train_y, test_y = torch.arange(5).repeat(40), torch.arange(5).repeat(10)
    train_x, test_x = centres[train_y] + torch.randn(200, 32), centres[test_y] + torch.randn(50, 32)
    assert knn_accuracy(train_x, train_y, test_x, test_y, k=20) == 1.0
    shuffled = train_y[torch.randperm(200)]
    assert knn_accuracy(train_x, shuffled, test_x, test_y, k=20) < 0.6


def test_nearest_neighbours_excludes_self():
    x = torch.randn(10, 4)
    assert (nearest_neighbours(x, x, k=1).squeeze(1) == torch.arange(10)).all()
    assert (nearest_neighbours(x, x[:3], k=2, exclude_self=True) != torch.arange(3)[:, None]).all()


# ----------------------------------------------------------------------------------------------------------
# Linear probe
# ----------------------------------------------------------------------------------------------------------


def test_linear_probe_separates_separable_features():
    # Linearly separable but not by any single dimension: random class directions in 64-d.
    directions = torch.randn(6, 64)
    train_y, test_y = torch.randint(0, 6, (600,)), torch.randint(0, 6, (300,))
    train_x = directions[train_y] * 2 + torch.randn(600, 64) * 0.5 + 3.0
    test_x = directions[test_y] * 2 + torch.randn(300, 64) * 0.5 + 3.0
    result = linear_probe(train_x, train_y, test_x, test_y, epochs=30, batch_size=64)
    assert result.accuracy >= 0.99 and result.train_accuracy >= 0.99
    adamw = linear_probe(
        train_x,
        train_y,
        test_x,
        test_y,
        epochs=30,
        batch_size=64,
        optimizer="adamw",
        learning_rate=1e-2,
        standardize=False,
    )
    assert adamw.accuracy >= 0.99


def test_linear_probe_predictions_give_its_accuracy():
    train_x, test_x = torch.randn(200, 8), torch.randn(50, 8)
    train_y, test_y = (train_x[:, 0] > 0).long(), (test_x[:, 0] > 0).long()
    result = linear_probe(train_x, train_y, test_x, test_y, epochs=5)
    assert result.predictions.shape == (50,)
    assert result.accuracy == pytest.approx((result.predictions == test_y).float().mean().item())


def test_linear_probe_is_at_chance_on_random_labels():
    train_x, test_x = torch.randn(400, 32), torch.randn(400, 32)
    result = linear_probe(
        train_x, torch.randint(0, 4, (400,)), test_x, torch.randint(0, 4, (400,)), epochs=20
    )
    assert result.accuracy < 0.4


# ----------------------------------------------------------------------------------------------------------
# Which labels: labelled fraction, coarse grouping, class subsets, confusion matrix
# ----------------------------------------------------------------------------------------------------------

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
VEHICLES = ("airplane", "automobile", "ship", "truck")


def test_label_fraction_is_class_balanced_seeded_and_nested_in_the_split():
    train_y = torch.cat([torch.full((n,), c) for c, n in enumerate([100, 200, 300])])[torch.randperm(600)]
    eval_y = torch.arange(3).repeat(5)
    chosen = select_labels(train_y, eval_y, None, 3, label_fraction=0.1, seed=1)
    counts = torch.bincount(train_y[chosen.train_rows], minlength=3)
    assert counts.tolist() == [10, 20, 30]  # the same fraction of every class
    assert chosen.description == "10% labels" and chosen.num_classes == 3
    assert torch.equal(chosen.eval_rows, torch.arange(15))  # the evaluation split is untouched
    again = select_labels(train_y, eval_y, None, 3, label_fraction=0.1, seed=1)
    other = select_labels(train_y, eval_y, None, 3, label_fraction=0.1, seed=2)
    assert torch.equal(again.train_rows, chosen.train_rows)
    assert not torch.equal(other.train_rows, chosen.train_rows)
    whole = select_labels(train_y, eval_y, None, 3)
    assert torch.equal(whole.train_rows, torch.arange(600)) and whole.description == ""
    tiny = select_labels(train_y, eval_y, None, 3, label_fraction=0.001)  # at least one image per class
    assert torch.bincount(train_y[tiny.train_rows], minlength=3).tolist() == [1, 1, 1]
    with pytest.raises(ValueError, match="label_fraction"):
        select_labels(train_y, eval_y, None, 3, label_fraction=0.0)


def test_label_map_forms_agree_and_check_every_class():
    named = resolve_label_map("cifar10-animals-vehicles", CIFAR10_NAMES, 10)
    assert named == ([0, 0, 1, 1, 1, 1, 1, 1, 0, 0], ["vehicle", "animal"])
    by_name = {name: "vehicle" if name in VEHICLES else "animal" for name in CIFAR10_NAMES}
    assert resolve_label_map(by_name, CIFAR10_NAMES, 10) == named
    by_id = {i: int(name not in VEHICLES) for i, name in enumerate(CIFAR10_NAMES)}
    table, names = resolve_label_map(by_id, CIFAR10_NAMES, 10)
    assert table == [0, 0, 1, 1, 1, 1, 1, 1, 0, 0]
    assert names == ["airplane+automobile+ship+truck", "bird+cat+deer+dog+frog+horse"]
    with pytest.raises(ValueError, match="unmapped"):
        resolve_label_map({"cat": "pet"}, CIFAR10_NAMES, 10)
    with pytest.raises(ValueError, match="unknown class"):
        resolve_label_map({"kitten": "pet"}, CIFAR10_NAMES, 10)
    with pytest.raises(ValueError, match="grouping"):
        resolve_label_map("cifar100-superclasses", CIFAR10_NAMES, 10)


def test_label_map_and_eval_classes_select_rows_and_relabel_features():
    train_y, eval_y = torch.arange(10).repeat(4), torch.arange(10).repeat(2)
    coarse = select_labels(train_y, eval_y, CIFAR10_NAMES, 10, label_map="cifar10-animals-vehicles")
    assert coarse.num_classes == 2 and coarse.names == ["vehicle", "animal"]
    assert coarse.relabel(torch.tensor([0, 3, 9])).tolist() == [0, 1, 0]
    assert coarse.description == "labels grouped as cifar10-animals-vehicles"

    animals = select_labels(train_y, eval_y, CIFAR10_NAMES, 10, eval_classes="cifar10-animals")
    assert animals.names == ["bird", "cat", "deer", "dog", "frog", "horse"] and animals.num_classes == 6
    assert len(animals.train_rows) == 24 and len(animals.eval_rows) == 12
    features, indices = torch.randn(20, 4), torch.arange(20)
    kept_x, kept_y, kept_index = animals.apply(features, eval_y, indices, "eval")
    assert torch.equal(kept_index, animals.eval_rows) and torch.equal(kept_x, features[animals.eval_rows])
    assert kept_y.tolist() == [0, 1, 2, 3, 4, 5] * 2  # renumbered in the given order
    picked = select_labels(train_y, eval_y, CIFAR10_NAMES, 10, eval_classes=["ship", "0"])
    assert picked.names == ["ship", "airplane"] and picked.relabel(torch.tensor([8, 0])).tolist() == [0, 1]
    with pytest.raises(ValueError, match="combined"):
        select_labels(
            train_y, eval_y, CIFAR10_NAMES, 10, label_map="cifar10-animals-vehicles", eval_classes="0,1"
        )
    # a fraction of the animals' labels: balanced over the six selected classes
    few = select_labels(
        train_y, eval_y, CIFAR10_NAMES, 10, label_fraction=0.5, eval_classes="cifar10-animals"
    )
    assert torch.bincount(animals.relabel(train_y[few.train_rows])).tolist() == [2] * 6
    assert few.description == "classes bird/cat/deer/dog/frog/horse, 50% labels"


def test_confusion_matrix_matches_counting():
    predictions, labels = torch.randint(0, 4, (50,)), torch.randint(0, 4, (50,))
    matrix = confusion_matrix(predictions, labels, 4)
    for true in range(4):
        for predicted in range(4):
            expected = int(((labels == true) & (predictions == predicted)).sum())
            assert matrix[true, predicted] == expected
    assert matrix.trace() == (predictions == labels).sum()
    assert metric_name("linear", qualifier="1% labels") == "linear probe top-1, 1% labels"


# ----------------------------------------------------------------------------------------------------------
# Feature extraction
# ----------------------------------------------------------------------------------------------------------


class Tensors(Dataset):
    def __init__(self, images, labels, with_index=True):
        self.images, self.labels, self.with_index = images, labels, with_index

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        item = {"pixel_values": self.images[i], "label": self.labels[i]}
        if self.with_index:
            item["index"] = i
        return item


def _net_with_batch_norm_and_dropout():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(8, 5),
    )


@pytest.mark.parametrize("with_index", [True, False], ids=["index", "gather_for_metrics"])
def test_extract_features_counts_each_sample_once_in_eval_mode(with_index):
    images, labels = torch.randn(10, 3, 8, 8), torch.arange(10) % 3
    model = _net_with_batch_norm_and_dropout()
    model[1].running_mean.normal_()  # statistics that differ from any batch's own
    model.train()
    accelerator = Accelerator(cpu=True)
    loader = accelerator.prepare(
        DataLoader(Tensors(images, labels, with_index), batch_size=4, collate_fn=collate)
    )
    out = extract_features(model, loader, accelerator, progress=False, return_indices=True)
    features, got_labels, indices = out
    assert model.training  # mode restored
    assert features.shape == (10, 5) and (got_labels == labels).all()
    assert (indices == torch.arange(10)).all() if with_index else indices is None
    with torch.no_grad():
        expected = model.eval()(images)
    torch.testing.assert_close(features, expected)


def test_extract_features_skips_unreadable_images():
    dataset = load_image_dataset("sample", "test").select(range(6))
    broken = dataset.to_list()
    broken[2]["image"] = {"bytes": b"not an image", "path": "broken.png"}
    dataset = datasets.Dataset.from_list(broken, features=dataset.features)
    encoder = load_encoder("timm:test_resnet", pretrained=False, image_size=32)
    loader = DataLoader(ImageDataset(dataset, encoder.transform), batch_size=4, collate_fn=collate)
    features, labels, indices = extract_features(encoder.model, loader, progress=False, return_indices=True)
    assert features.shape == (5, encoder.model.num_features)
    assert indices.tolist() == [0, 1, 3, 4, 5]


def _two_process_extraction():
    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    images, labels = torch.randn(11, 3, 8, 8), torch.arange(11)
    model = _net_with_batch_norm_and_dropout()

    class Unreadable(Tensors):  # items 3 and 6 fail to decode: the processes hold different numbers of rows
        def __getitem__(self, i):
            return None if i in (3, 6) else super().__getitem__(i)

    # 11 items in batches of 2 over 2 processes: the last batch is padded with repeated samples.
    loader = accelerator.prepare(DataLoader(Unreadable(images, labels), batch_size=2, collate_fn=collate))
    features, got_labels, indices = extract_features(
        model, loader, accelerator, progress=False, return_indices=True
    )
    kept = [i for i in range(11) if i not in (3, 6)]
    assert indices.tolist() == kept and got_labels.tolist() == kept, indices
    with torch.no_grad():
        torch.testing.assert_close(features, model.eval()(images[kept]))
    print("two-process extraction ok")


@pytest.mark.slow
@pytest.mark.distributed
def test_extract_features_across_two_processes():
    # torchrun rather than accelerate's fork-based debug_launcher, which hangs after torch has run here.
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "tests.test_evaluation",
    ]
    run = subprocess.run(
        command,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    assert run.stdout.count("two-process extraction ok") == 2


# ----------------------------------------------------------------------------------------------------------
# Models and cache
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def moco_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("moco")
    torch.manual_seed(1234)  # other weights than a fresh model drawn after the tests' seed 0
    MoCoModel(tiny_moco_v2()).save_pretrained(folder)
    return folder


def test_load_encoder_sslhub_timm_and_transformers(moco_folder, tmp_path):
    image = Image.new("RGB", (40, 48), (200, 10, 10))
    sslhub_encoder = load_encoder(str(moco_folder))
    assert sslhub_encoder.kind == "sslhub" and not sslhub_encoder.model.training
    assert sslhub_encoder.transform(image).shape == (3, 32, 32)
    assert "model.safetensors" in sslhub_encoder.fingerprint

    timm_encoder = load_encoder("timm:test_resnet", pretrained=False, image_size=32)
    assert timm_encoder.kind == "timm" and timm_encoder.mean == (0.5, 0.5, 0.5)
    assert timm_encoder.transform(image).shape == (3, 32, 32)

    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    vit = ViTModel(
        ViTConfig(
            image_size=16,
            patch_size=8,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
        )
    )
    vit.save_pretrained(tmp_path / "vit")
    ViTImageProcessor(
        size={"height": 16, "width": 16}, image_mean=[0.1, 0.2, 0.3], image_std=[0.5, 0.5, 0.5]
    ).save_pretrained(tmp_path / "vit")
    vit_encoder = load_encoder(str(tmp_path / "vit"))
    assert vit_encoder.kind == "transformers" and vit_encoder.image_size == 16
    assert vit_encoder.mean == (0.1, 0.2, 0.3)
    from sslhub.evaluation import embed

    assert embed(vit_encoder.model, vit_encoder.transform(image)[None]).shape == (1, 16)


def test_random_init_and_classifier(moco_folder, tmp_path):
    trained, fresh = load_encoder(str(moco_folder)), load_encoder(str(moco_folder), random_init=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(trained.model(x).pooler_output, fresh.model(x).pooler_output)
    assert trained.fingerprint != fresh.fingerprint
    classifier = load_classifier(str(moco_folder), num_labels=3)
    assert type(classifier).__name__ == "MoCoForImageClassification"
    torch.testing.assert_close(
        classifier.query_encoder.backbone.state_dict(), trained.model.backbone.state_dict()
    )
    timm_classifier = load_classifier("timm:test_resnet", num_labels=3, pretrained=False)
    assert timm_classifier(x).shape == (2, 3)
    # Every sslhub family registers a classification head (here colorization's); timm models get a
    # `LinearClassifier` on their pooled embedding.
    ColorizationModel(ColorizationConfig(backbone="test_resnet", image_size=32)).save_pretrained(
        tmp_path / "color"
    )
    color_classifier = load_classifier(str(tmp_path / "color"), num_labels=4)
    assert type(color_classifier).__name__ == "ColorizationForImageClassification"
    assert color_classifier(x).logits.shape == (2, 4)
    assert isinstance(timm_classifier, LinearClassifier)
    labelled = [{"pixel_values": x, "label": torch.tensor([0, 1])}]
    assert 0.0 <= classifier_accuracy(timm_classifier, labelled) <= 1.0


def test_feature_cache_hit_and_miss(tmp_path, moco_folder):
    calls = []

    def compute():
        calls.append(1)
        return torch.randn(5, 3), torch.arange(5), torch.arange(5)

    settings = {"model": load_encoder(str(moco_folder)).fingerprint, "dataset": "sample", "split": "test"}
    first, hit_1 = cached_features(tmp_path, settings, compute)
    second, hit_2 = cached_features(tmp_path, settings, compute)
    assert (hit_1, hit_2, len(calls)) == (False, True, 1)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
    _, hit_3 = cached_features(tmp_path, {**settings, "split": "train"}, compute)
    assert not hit_3 and len(calls) == 2
    # Re-saving the model changes its fingerprint: the cache misses.
    os.utime(moco_folder / "model.safetensors", ns=(1, 1))
    _, hit_4 = cached_features(
        tmp_path, {**settings, "model": load_encoder(str(moco_folder)).fingerprint}, compute
    )
    assert not hit_4 and len(calls) == 3
    _, hit_none = cached_features(None, settings, compute)
    assert not hit_none and len(calls) == 4


def test_card_eval_results_entries():
    (entry,) = card_eval_results(
        0.83456, "knn", "uoft-cs/cifar10", "uoft-cs/cifar10", "test", k=200, temperature=0.1
    )
    assert entry == {
        "task_type": "image-classification",
        "dataset_name": "uoft-cs/cifar10",
        "dataset_type": "uoft-cs/cifar10",
        "dataset_split": "test",
        "metric_type": "accuracy",
        "metric_name": "kNN top-1 (k=200, T=0.1)",
        "metric_value": 0.8346,
    }
    assert card_eval_results(0.5, "linear", "d", "d", "test")[0]["metric_name"] == "linear probe top-1"


# ----------------------------------------------------------------------------------------------------------
# The recipe
# ----------------------------------------------------------------------------------------------------------


def _recipe():
    spec = importlib.util.spec_from_file_location("evaluate_recipe", ROOT / "recipes" / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve the config's annotations through it
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("protocol", ["knn", "linear", "linear-fast", "finetune"])
def test_recipe_writes_results(protocol, moco_folder, tmp_path):
    recipe = _recipe()
    cfg = recipe.EvalArguments(
        model=str(moco_folder),
        dataset="sample",
        protocol=protocol,
        max_train_samples=200,
        max_eval_samples=100,
        batch_size=50,
        num_workers=0,
        epochs=2 if protocol == "finetune" else 20,
        linear_learning_rates=[0.03, 0.3],
        linear_weight_decays=[0.0, 1e-4],
        knn_k=20,
        mixed_precision="no",  # the process's Accelerator state is shared with the other tests
        output_dir=str(tmp_path / "out"),
        cache_dir=str(tmp_path / "cache"),
        plots=protocol == "finetune",
    )
    results = recipe.main(cfg)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["accuracy"] == results["accuracy"] and 0.0 <= saved["accuracy"] <= 1.0
    assert saved["protocol"] == protocol and saved["num_train"] == 200 and saved["num_eval"] == 100
    assert saved["eval_split"] == "test" and saved["num_classes"] == 10
    assert (
        saved["metric_name"]
        == {
            "knn": "kNN top-1 (k=20, T=0.1)",
            "linear": "linear probe top-1",
            "linear-fast": "linear probe top-1 (one setting)",
            "finetune": "fine-tuning top-1",
        }[protocol]
        + ", subsets: 200 training, 100 evaluation images"  # not to pass for the full split's result
    )
    # The result is merged into the model card's model-index, told apart by its metric name.
    assert saved["model_card_updated"]
    card = (moco_folder / "README.md").read_text()
    assert "model-index" in card and saved["metric_name"] in card
    assert [entry["metric_name"] for entry in saved["model_index"]] == [saved["metric_name"]]
    if protocol == "finetune":  # the fine-tuning logs give the training curves
        for name in (
            "confusion_matrix.png",
            "embedding_map.png",
            "retrieval_grid.png",
            "training_curves.png",
        ):
            assert (tmp_path / "out" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        # Where the fine-tuning step's time went, as in the pre-training recipes.
        times = saved["settings"]["step_time_ms"]
        assert times["data"] > 0 and times["forward_backward"] > 0 and times["optimizer"] > 0
        parts = sum(value for part, value in times.items() if part != "total")
        assert parts == pytest.approx(times["total"], rel=1e-3)
    if protocol == "knn":  # the same settings again: features come from the cache
        again = recipe.main(cfg)
        assert again["accuracy"] == results["accuracy"]
        assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 2


def test_recipe_selects_labels_writes_confusion_and_saves_the_classifier(moco_folder, tmp_path):
    from transformers import AutoModel, AutoModelForImageClassification

    recipe = _recipe()
    common = dict(
        dataset="sample",
        max_train_samples=300,
        max_eval_samples=100,
        num_workers=0,
        knn_k=20,
        mixed_precision="no",
        cache_dir=str(tmp_path / "cache"),
        update_card=False,
    )
    # The fine classes within one group: kNN on the animals only, features from the cache of whole splits.
    animals = recipe.main(
        recipe.EvalArguments(
            model=str(moco_folder),
            protocol="knn",
            eval_classes="cifar10-animals",
            output_dir=str(tmp_path / "animals"),
            **common,
        )
    )
    confusion = torch.tensor(animals["confusion_matrix"])
    assert animals["class_names"] == ["bird", "cat", "deer", "dog", "frog", "horse"]
    assert confusion.shape == (6, 6) and int(confusion.sum()) == animals["num_eval"] < 100
    assert animals["accuracy"] == pytest.approx(float(confusion.trace() / confusion.sum()), abs=1e-6)
    assert animals["metric_name"] == (
        "kNN top-1 (k=20, T=0.1), classes bird/cat/deer/dog/frog/horse, subsets: "
        f"{animals['num_train']} training, {animals['num_eval']} evaluation images"
    )

    # Supervised from random init on 10% of the coarse labels, kept as a model to evaluate again.
    cfg = recipe.EvalArguments(
        model=str(moco_folder),
        protocol="finetune",
        random_init=True,
        label_map="cifar10-animals-vehicles",
        label_fraction=0.1,
        save_model=True,
        batch_size=10,
        epochs=1,
        plots=True,
        output_dir=str(tmp_path / "coarse"),
        **common,
    )
    coarse = recipe.main(cfg)
    train_labels = torch.tensor(recipe.load_split(cfg, "sample", "train", 300)["label"])
    vehicles = int(torch.isin(train_labels, torch.tensor([0, 1, 8, 9])).sum())
    assert coarse["num_train"] == round(0.1 * vehicles) + round(0.1 * (300 - vehicles))
    assert coarse["num_classes"] == 2 and coarse["class_names"] == ["vehicle", "animal"]
    assert int(torch.tensor(coarse["confusion_matrix"]).sum()) == 100
    assert (tmp_path / "coarse" / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    final = Path(coarse["saved_model"])
    classifier = AutoModelForImageClassification.from_pretrained(final).eval()
    assert classifier.config.id2label == {0: "vehicle", 1: "animal"}
    x = torch.randn(2, 3, 32, 32)
    encoder = AutoModel.from_pretrained(final).eval()
    with torch.no_grad():
        assert classifier(x).logits.shape == (2, 2)
        torch.testing.assert_close(
            encoder(x).pooler_output, classifier.query_encoder(x).pooler_output
        )  # the encoder of the classifier loads for kNN / linear evaluation
    card = (final / "README.md").read_text()
    assert "fine-tuning top-1, labels grouped as cifar10-animals-vehicles, 10% labels" in card
    assert (
        f"| Labels | labels grouped as cifar10-animals-vehicles, 10% labels, {coarse['num_train']} training"
        in card
    )
    assert "| Optimizer | adamw, learning rate " in card and "step_time_ms" not in card
    with pytest.raises(ValueError, match="save_model"):
        recipe.EvalArguments(model=str(moco_folder), protocol="knn", save_model=True)


if __name__ == "__main__":  # the two-process test runs this module under torchrun
    _two_process_extraction()


@pytest.mark.slow
def test_demo_model_beats_random_init(tmp_path):
    """The README demo (MoCo v2 on the shipped CIFAR-10 sample, minutes on CPU) gains 8 points of kNN accuracy."""
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "recipes" / "pretrain_moco.py"),
            "--config",
            str(ROOT / "recipes/configs/demo.yaml"),
            "--output_dir",
            str(tmp_path / "demo"),
            "--knn_steps",
            "0",
            "--num_workers",
            "0",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    recipe = _recipe()
    accuracy = {}
    for random_init in (False, True):
        cfg = recipe.EvalArguments(
            model=str(tmp_path / "demo" / "final"),
            dataset="sample",
            protocol="knn",
            random_init=random_init,
            num_workers=0,
            update_card=False,
            mixed_precision="no",  # the process's Accelerator state is shared with the other tests
            output_dir=str(tmp_path / f"eval-{random_init}"),
        )
        accuracy[random_init] = recipe.main(cfg)["accuracy"]
    assert accuracy[False] >= accuracy[True] + 0.08, accuracy  # the README promises at least +8 points

"""Model cards: metadata and prose from the template, merging evaluation results, checking them."""

import shutil

import pytest
from huggingface_hub import ModelCard

from sslhub.hub import cards

KNN = dict(
    task_type="image-classification",
    dataset_name="CIFAR-10",
    dataset_type="uoft-cs/cifar10",
    dataset_split="test",
    metric_type="accuracy",
    metric_name="kNN top-1 (k=200, T=0.1)",
    metric_value=0.412,
)
LINEAR = {**KNN, "metric_name": "linear probe top-1", "metric_value": 0.503}


def test_write_model_card_metadata_and_prose(published, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(published["folder"], folder)
    path = cards.write_model_card(
        folder,
        model_name="resnet18-student",
        family="SEED distillation",
        paper="seed",
        base_model="sslhub/moco-v2-resnet50",
        datasets=["uoft-cs/cifar10"],
        reproduce_command="accelerate launch recipes/distill.py --config recipes/configs/seed.yaml",
        training_summary={"epochs": 200, "batch size": 256, "commit": "abc1234"},
        eval_results=[KNN, LINEAR],
    )
    card = ModelCard.load(path)
    data = card.data
    assert data.library_name == "transformers"
    assert data.license == "apache-2.0"
    assert data.pipeline_tag == "image-feature-extraction"
    assert data.base_model == "sslhub/moco-v2-resnet50"
    assert data.datasets == ["uoft-cs/cifar10"]
    assert {"sslhub", "self-supervised-learning", "seed"} <= set(data.tags)
    assert data.model_name == "resnet18-student"
    assert {r.metric_name: r.metric_value for r in data.eval_results} == {
        KNN["metric_name"]: 0.412,
        LINEAR["metric_name"]: 0.503,
    }
    text = card.text
    assert "accelerate launch recipes/distill.py --config recipes/configs/seed.yaml" in text
    assert "https://arxiv.org/abs/2101.04731" in text
    assert "trust_remote_code=True" in text and "image-feature-extraction" in text
    assert "| kNN top-1 (k=200, T=0.1) | 41.20% |" in text
    assert "| linear probe top-1 | 50.30% |" in text
    assert "| test_resnet |" not in text and "`test_resnet`" in text
    assert "| 96-d pooled" not in text and "96-d pooled backbone feature" in text
    assert "| batch size | 256 |" in text
    assert "Limitations" in text


def test_update_card_eval_results_creates_and_merges(published, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(published["folder"], folder)
    cards.update_card_eval_results(folder, [KNN])
    card = ModelCard.load(folder / "README.md")
    assert card.data.model_name == "model"
    assert "arxiv.org/abs/2003.04297" in card.text  # MoCo v2 paper, from the config
    cards.update_card_eval_results(folder, [{**KNN, "metric_value": 0.47}, LINEAR])
    card = ModelCard.load(folder / "README.md")
    results = {r.metric_name: r.metric_value for r in card.data.eval_results}
    assert results == {KNN["metric_name"]: 0.47, LINEAR["metric_name"]: 0.503}
    assert "47.00%" in card.text and "41.20%" not in card.text and "50.30%" in card.text
    assert card.text.count("<!-- sslhub:eval-results:start -->") == 1


def test_update_card_eval_results_appends_to_a_handwritten_card(published, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(published["folder"], folder)
    (folder / "README.md").write_text("---\nlicense: mit\n---\n# My model\n\nHand-written.\n")
    cards.update_card_eval_results(folder, [LINEAR])
    card = ModelCard.load(folder / "README.md")
    assert card.data.license == "mit" and "Hand-written." in card.text
    assert "| linear probe top-1 | 50.30% |" in card.text


@pytest.mark.parametrize(
    "result, message",
    [
        ({**KNN, "metric_value": 41.2}, "fraction in \\[0, 1\\]"),
        ({k: v for k, v in KNN.items() if k != "dataset_type"}, "missing keys \\['dataset_type'\\]"),
        ({**KNN, "top_k": 200}, "unknown keys \\['top_k'\\]"),
    ],
)
def test_eval_results_are_checked(published, tmp_path, result, message):
    with pytest.raises(ValueError, match=message):
        cards.merge_eval_results([], [result])

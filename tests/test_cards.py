"""Model cards: metadata and prose from the template, merging evaluation results, checking them."""

import shutil
import sys

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
    # A run folder's card renamed for publishing: title and model-index follow, the results stay.
    cards.update_card_eval_results(folder, [], model_name="moco-v2-cifar10")
    card = ModelCard.load(folder / "README.md")
    assert card.data.model_name == "moco-v2-cifar10" and "\n# moco-v2-cifar10\n" in card.text
    assert "\n# model\n" not in card.text and len(card.data.eval_results) == 2


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


# ------------------------------------------------------------------- base_model and its relation


def _student_folder(tmp_path, teacher_name=None):
    from sslhub import StudentConfig, StudentModel

    folder = tmp_path / "student"
    config = StudentConfig(
        backbone="test_resnet", loss="mse", teacher_dim=16, image_size=32, teacher_name=teacher_name
    )
    StudentModel(config).save_pretrained(folder)
    return folder


def _card(folder, **kwargs):
    path = cards.write_model_card(folder, model_name="m", family="f", paper=None, **kwargs)
    return ModelCard.load(path), path.read_text()


def test_student_of_a_hub_teacher_names_it_without_a_relation(tmp_path):
    card, raw = _card(_student_folder(tmp_path), base_model="sslhub/moco-v2-resnet50")
    assert card.data.base_model == "sslhub/moco-v2-resnet50"
    assert "base_model_relation" not in raw.split("---")[1]  # the Hub has no relation for distillation
    assert "| Teacher | [`sslhub/moco-v2-resnet50`](https://huggingface.co/sslhub/moco-v2-resnet50) |" in raw
    assert "no value for distillation" in card.text and "adapter, merge, quantized, finetune" in card.text


def test_student_of_a_local_teacher_names_it_in_the_text_only(tmp_path):
    teacher = tmp_path / "runs" / "teacher"
    teacher.mkdir(parents=True)
    card, raw = _card(_student_folder(tmp_path), base_model=str(teacher))
    assert card.data.base_model is None and "base_model" not in raw.split("---")[1]
    assert f"| Teacher | `{teacher}` |" in raw
    assert "not on the Hub" in card.text


def test_student_card_reads_the_teacher_from_its_config(tmp_path):
    card, raw = _card(_student_folder(tmp_path, teacher_name="timm:resnet50"))
    assert card.data.base_model is None
    assert (
        "| Teacher | `timm:resnet50` |" in raw and "distilled from the frozen teacher `timm:resnet50`" in raw
    )


def test_model_continued_from_a_hub_id_is_a_finetune(published, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(published["folder"], folder)
    card, raw = _card(folder, base_model="sslhub/moco-v2-resnet50")
    assert card.data.base_model == "sslhub/moco-v2-resnet50"
    assert card.data.base_model_relation == "finetune" and "base_model_relation: finetune" in raw
    assert "| Initialized from | [`sslhub/moco-v2-resnet50`]" in raw
    assert "Training continued from" in card.text


def test_model_continued_from_a_local_folder_has_no_base_model(published, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(published["folder"], folder)
    card, raw = _card(folder, base_model=str(published["folder"]))
    metadata = raw.split("---")[1]
    assert "base_model" not in metadata
    assert f"| Initialized from | `{published['folder']}` |" in raw and "not on the Hub" in card.text


def test_card_without_base_model_has_no_lineage(published, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(published["folder"], folder)
    card, raw = _card(folder)
    assert "base_model" not in raw.split("---")[1]
    assert "| Teacher |" not in raw and "| Initialized from |" not in raw


def test_explicit_relation_is_checked(published, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(published["folder"], folder)
    card, _ = _card(folder, base_model="org/base", base_model_relation="quantized")
    assert card.data.base_model_relation == "quantized"
    with pytest.raises(ValueError, match="base_model_relation must be one of"):
        _card(folder, base_model="org/base", base_model_relation="distillation")


@pytest.mark.parametrize(
    "name, expected",
    [
        ("sslhub/moco-v2-resnet50", True),
        ("facebook/dinov2-small", True),
        ("resnet50", False),
        ("timm:resnet50", False),
        ("hf-hub:org/name", False),
        ("../teacher", False),
        ("./teacher", False),
        ("/abs/teacher", False),
        ("runs/teacher/final", False),
        ("org--x/name", False),
        ("", False),
        (None, False),
    ],
)
def test_is_hub_id(name, expected):
    assert cards._is_hub_id(name) is expected


def test_existing_local_folder_is_not_a_hub_id(tmp_path, monkeypatch):
    (tmp_path / "runs" / "teacher").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert not cards._is_hub_id("runs/teacher")


# ------------------------------------------------------------------- paths a card's reader can use


def test_portable_path_hides_the_publishers_folders(tmp_path, monkeypatch):
    project, home = tmp_path / "home" / "ada" / "project", tmp_path / "home" / "ada"
    project.mkdir(parents=True)
    monkeypatch.chdir(project)
    monkeypatch.setenv("HOME", str(home))
    assert cards.portable_path(str(project / "outputs" / "run" / "final")) == "outputs/run/final"
    assert cards.portable_path(str(project)) == "."
    assert cards.portable_path(str(home / "data" / "cifar")) == "~/data/cifar"
    elsewhere = str(tmp_path / "scratch" / "teacher")
    assert cards.portable_path(elsewhere) == elsewhere
    for kept in ("sslhub/moco-v2-resnet50", "timm:resnet50", "runs/teacher"):
        assert cards.portable_path(kept) == kept


def test_reproduce_command_is_quoted_and_relative_to_the_project(tmp_path, monkeypatch):
    import shlex

    from sslhub.training.final import command_line

    monkeypatch.chdir(tmp_path)
    argv = [
        str(tmp_path / "recipes" / "distill.py"),
        "--teacher", str(tmp_path / "runs" / "teacher" / "final"),
        "--output_dir=" + str(tmp_path / "runs" / "student"),
        "--model.image_mean", "[0.4914, 0.4822, 0.4465]",
    ]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    assert shlex.split(command_line()) == [
        "accelerate", "launch", "recipes/distill.py", "--teacher", "runs/teacher/final",
        "--output_dir=runs/student", "--model.image_mean", "[0.4914, 0.4822, 0.4465]",
    ]  # fmt: skip


def test_card_names_a_local_teacher_inside_the_project_by_its_relative_path(tmp_path, monkeypatch):
    teacher = tmp_path / "runs" / "teacher"
    teacher.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    card, raw = _card(_student_folder(tmp_path), base_model=str(teacher))
    assert "| Teacher | `runs/teacher` |" in raw and str(tmp_path) not in raw

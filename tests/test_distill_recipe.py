"""recipes/distill.py: smoke runs of every loss on tiny images, the final folder, exact resume, the
teacher re-normalization helper and the shipped configs."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from huggingface_hub import ModelCard
from safetensors.torch import load_file
from torch import nn

from sslhub import MoCoModel, StudentConfig, StudentForDistillation, StudentModel
from sslhub.models.modeling_student import TeacherAdapter
from sslhub.training import Renormalize, parse_args, renormalize_for_teacher

from .helpers import tiny_moco_v2

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "distill.py"
TINY = [
    "--dataset",
    "sample",
    "--split",
    "test[:128]",
    "--student",
    "test_resnet",
    "--small_input_stem",
    "true",
    "--image_size",
    "32",
    "--batch_size",
    "16",
    "--num_workers",
    "0",
    "--log_steps",
    "1",
    "--learning_rate",
    "0.1",
    "--seed",
    "3",
]
FINAL_FILES = {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"}


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error"}
    result = subprocess.run(
        [sys.executable, str(RECIPE), *TINY, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    return result


@pytest.fixture(scope="module")
def moco_teacher(tmp_path_factory) -> str:
    """A random tiny MoCo model folder whose normalization differs from the student's (ImageNet)."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("teacher") / "moco"
    MoCoModel(tiny_moco_v2(image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.25, 0.25])).save_pretrained(folder)
    return str(folder)


def _check_final_folder(output_dir: Path, teacher: str) -> None:
    final = output_dir / "final"
    assert {p.name for p in final.iterdir()} >= FINAL_FILES

    # The saved student is a StudentModel; the teacher is named, never embedded.
    config = json.loads((final / "config.json").read_text())
    assert config["model_type"] == "sslhub_student" and config["architectures"] == ["StudentModel"]
    assert config["teacher_name"] == teacher
    assert not any(isinstance(value, dict) and "model_type" in value for value in config.values())
    student_config = StudentConfig.from_pretrained(final)
    weights = load_file(final / "model.safetensors")
    assert set(weights) == set(StudentModel(student_config).state_dict())
    assert not any(key.startswith("teacher") for key in weights)

    # The checkpoint holds the student and its loss state (queues, cluster head), nothing of the teacher.
    checkpoint = sorted((output_dir / "checkpoints").iterdir())[-1]
    checkpoint_keys = set(load_file(checkpoint / "model.safetensors"))
    assert checkpoint_keys <= set(StudentForDistillation(student_config).state_dict())

    # A local folder or a timm name is no Hub id: the card names the teacher in its text, not as base_model.
    card = ModelCard.load(final / "README.md")
    assert card.data.base_model is None and f"| Teacher | `{teacher}` |" in card.text
    assert f"| Teacher | `{teacher}`, its " in card.text  # and in the table of how it was made


@pytest.mark.parametrize(
    "loss, teacher_view, teacher",
    [
        ("kl", "same", "timm"),  # Hinton KD on a timm classifier's logits, resized 32 -> 160 for it
        ("mse", "other", "moco"),
        ("compress_1q", "same", "moco"),
        ("compress_2q", "eval", "moco"),  # teacher embeddings precomputed once and cached
    ],
)
def test_each_loss_trains_and_saves_a_student_without_the_teacher(
    tmp_path, moco_teacher, loss, teacher_view, teacher
):
    spec = moco_teacher if teacher == "moco" else "timm:test_efficientnet"
    args = ["--teacher", spec, "--loss", loss, "--teacher_view", teacher_view, "--max_steps", "2"]
    if teacher == "timm":
        args += ["--teacher_pretrained", "false"]  # loss kl: teacher_output auto gives the class logits
    if loss.startswith("compress"):
        args += ["--queue_size", "64"]
    result = _run(*args, "--output_dir", str(tmp_path))
    assert "re-normalized / resized for it" in result.stdout
    assert ("the teacher gives its class logits" in result.stdout) == (loss == "kl")
    _check_final_folder(tmp_path, spec)
    assert (tmp_path / "teacher_embeddings.safetensors").exists() == (teacher_view == "eval")
    assert StudentConfig.from_pretrained(tmp_path / "final").teacher_dim == (
        1000 if teacher == "timm" else 16
    )


@pytest.mark.parametrize("loss", ["seed", "cluster"])
def test_resumed_run_ends_with_the_same_weights_and_reuses_the_cache(tmp_path, moco_teacher, loss):
    args = ["--teacher", moco_teacher, "--loss", loss, "--max_steps", "4", "--save_steps", "2"]
    args += ["--save_total_limit", "null"]
    args += ["--queue_size", "64"] if loss == "seed" else ["--num_clusters", "8"]
    straight = tmp_path / "straight"
    _run(*args, "--output_dir", str(straight))
    _check_final_folder(straight, moco_teacher)

    # The same run stopped after step 2: its checkpoint (and for cluster its caches) is all that is left.
    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "final")
    shutil.rmtree(resumed / "checkpoints" / "step_4")
    result = _run(*args, "--output_dir", str(resumed), "--resume", "latest")
    assert "resumed from" in result.stdout and "step_2" in result.stdout
    if loss == "cluster":
        assert "reusing the teacher embeddings" in result.stdout
        assert "reusing the k-means pseudo-labels" in result.stdout
        labels = load_file(straight / "teacher_clusters.safetensors")["labels"]
        assert labels.shape == (128,) and labels.unique().numel() > 1

    for name in ("final/model.safetensors", "checkpoints/step_4/model.safetensors"):  # queues too
        first, second = load_file(straight / name), load_file(resumed / name)
        assert first.keys() == second.keys()
        for key in first:
            assert torch.equal(first[key], second[key]), (name, key)


# ----------------------------------------------------------------------------------------------------------
# The teacher's inputs
# ----------------------------------------------------------------------------------------------------------

STUDENT_MEAN, STUDENT_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
TEACHER_MEAN, TEACHER_STD = (0.5, 0.4, 0.3), (0.2, 0.3, 0.25)


def _normalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    return (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def test_renormalize_gives_the_images_normalized_as_the_teacher_expects():
    images = torch.rand(4, 3, 32, 32)
    renormalize = Renormalize(STUDENT_MEAN, STUDENT_STD, TEACHER_MEAN, TEACHER_STD)
    expected = _normalize(images, TEACHER_MEAN, TEACHER_STD)
    torch.testing.assert_close(renormalize(_normalize(images, STUDENT_MEAN, STUDENT_STD)), expected)

    resized = Renormalize(STUDENT_MEAN, STUDENT_STD, TEACHER_MEAN, TEACHER_STD, target_size=48)
    output = resized(_normalize(images, STUDENT_MEAN, STUDENT_STD))
    assert output.shape == (4, 3, 48, 48)
    torch.testing.assert_close(
        output, F.interpolate(expected, size=(48, 48), mode="bilinear", antialias=True)
    )


def test_renormalize_is_the_identity_when_the_settings_agree():
    images = torch.randn(2, 3, 8, 8)
    same = Renormalize(STUDENT_MEAN, STUDENT_STD, list(STUDENT_MEAN), STUDENT_STD)
    assert same.is_identity and same(images) is images
    assert not Renormalize(STUDENT_MEAN, STUDENT_STD, target_size=16).is_identity


def test_renormalize_for_teacher_reads_the_teachers_settings():
    described = TeacherAdapter(nn.Flatten(), image_mean=TEACHER_MEAN, image_std=TEACHER_STD, image_size=64)
    renormalize = renormalize_for_teacher(described, STUDENT_MEAN, STUDENT_STD, 32)
    assert renormalize.target_size == 64 and not renormalize.is_identity
    assert (
        renormalize_for_teacher(described, STUDENT_MEAN, STUDENT_STD, 32, teacher_image_size=32).target_size
        is None
    )
    # A teacher that states nothing is assumed to share the student's settings.
    assert renormalize_for_teacher(TeacherAdapter(nn.Flatten()), STUDENT_MEAN, STUDENT_STD, 32).is_identity


@pytest.mark.parametrize(
    "config", sorted((ROOT / "recipes" / "configs").glob("distill_*.yaml")), ids=lambda p: p.stem
)
def test_shipped_distillation_configs_parse(config):
    sys.path.insert(0, str(RECIPE.parent))
    try:
        from distill import DistillArguments, student_config
    finally:
        sys.path.pop(0)
    args = parse_args(DistillArguments, ["--config", str(config)])
    assert args.teacher == "outputs/moco_v2_resnet50_imagenet/final"
    teacher_dim = 2048 if args.teacher_output == "pooled" else 128
    student = student_config(args, teacher_dim)
    assert student.backbone == args.model["backbone"] and student.teacher_name == args.teacher
    assert student.loss in ("seed", "compress_2q") and student.queue_size >= 65536


def test_too_many_clusters_fail_before_the_teacher_embeds_anything(tmp_path):
    started = time.perf_counter()
    command = [
        sys.executable,
        str(RECIPE),
        *TINY,
        "--teacher",
        "timm:test_resnet",
        "--teacher_pretrained",
        "false",
    ]
    command += ["--model.loss", "cluster", "--model.num_clusters", "16000", "--output_dir", str(tmp_path)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "model.num_clusters=16000 is more than the 128 training images" in result.stderr
    assert "leave it unset" in result.stderr
    assert not (tmp_path / "teacher_embeddings.safetensors").exists()
    assert time.perf_counter() - started < 60


def test_unset_cluster_count_follows_the_dataset_size(tmp_path):
    result = _run(
        "--teacher",
        "timm:test_resnet",
        "--teacher_pretrained",
        "false",
        "--model.loss",
        "cluster",
        "--max_steps",
        "1",
        "--batched_augmentation",
        "true",
        "--output_dir",
        str(tmp_path),
    )
    # With the images decoded into memory (batched augmentation's default), the teacher still embeds the rows.
    assert "images decoded into memory" in result.stdout + result.stderr
    assert "cluster: 2 k-means clusters for 128 images" in result.stdout
    assert json.loads((tmp_path / "final" / "config.json").read_text())["num_clusters"] == 2


def test_a_teacher_inside_the_project_is_named_by_its_relative_path(tmp_path, monkeypatch):
    """The config (published with the student) names the teacher as a reader can use it, not by this
    machine's absolute path."""
    sys.path.insert(0, str(RECIPE.parent))
    try:
        from distill import DistillArguments, student_config
    finally:
        sys.path.pop(0)
    monkeypatch.chdir(tmp_path)
    teacher = tmp_path / "runs" / "teacher" / "final"
    args = parse_args(DistillArguments, ["--teacher", str(teacher), "--model.backbone", "test_resnet"])
    assert student_config(args, 128).teacher_name == "runs/teacher/final"

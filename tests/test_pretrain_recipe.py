"""Smoke runs of recipes/pretrain_moco.py: save, exact resume after a kill, NaN stop, the final folder."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "pretrain_moco.py"
TINY = [
    "--dataset",
    "sample",
    "--split",
    "test[:256]",
    "--backbone",
    "test_resnet",
    "--image_size",
    "32",
    "--queue_size",
    "64",
    "--batch_size",
    "32",
    "--num_workers",
    "0",
    "--log_steps",
    "1",
    "--learning_rate",
    "0.1",
    "--seed",
    "7",
]


def _env():
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error"}


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, str(RECIPE), *TINY, *args],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check:
        assert result.returncode == 0, result.stderr[-5000:]
    return result


def _same_tensors(a: Path, b: Path) -> None:
    first, second = load_file(a), load_file(b)
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


def _killed_and_resumed_equals_straight(tmp_path, steps: list[str], resumed_steps: list[str]) -> None:
    """A straight run with `steps`, and one with `resumed_steps` killed after its step-8 checkpoint and
    resumed, end with the same checkpoint and final model."""
    _run(*steps, "--output_dir", str(tmp_path / "straight"))
    interrupted = tmp_path / "interrupted"
    process = subprocess.Popen(
        [sys.executable, str(RECIPE), *TINY, *resumed_steps, "--output_dir", str(interrupted)],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 600
    while not (interrupted / "checkpoints" / "step_8").exists() and process.poll() is None:
        assert time.time() < deadline, "the run never reached step 8"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (interrupted / "final").exists(), "the run finished before it could be killed"

    result = _run(*resumed_steps, "--output_dir", str(interrupted), "--resume", "latest")
    assert "resumed from" in result.stdout
    _same_tensors(
        tmp_path / "straight" / "checkpoints" / "step_20" / "model.safetensors",
        interrupted / "checkpoints" / "step_20" / "model.safetensors",
    )  # key encoder and queue too
    _same_tensors(
        tmp_path / "straight" / "final" / "model.safetensors", interrupted / "final" / "model.safetensors"
    )


@pytest.mark.parametrize("augmentation", ["per-image", "batched", "batched-prefetch"])
def test_killed_and_resumed_run_ends_with_the_same_weights(tmp_path, augmentation):
    steps = ["--max_steps", "20", "--save_steps", "4"]  # 8 steps per epoch: the run crosses two epochs
    if augmentation.startswith("batched"):
        steps += ["--batched_augmentation", "true"]
    # With --prefetch (views made in a thread while the step runs) the interrupted run computes the same.
    resumed = steps + (["--prefetch", "true"] if augmentation.endswith("prefetch") else [])
    _killed_and_resumed_equals_straight(tmp_path, steps, resumed)


def test_images_decoded_once_into_memory_train_exactly_as_images_decoded_every_epoch(tmp_path):
    # 8 steps per epoch: the runs cross an epoch, the in-memory one reading its images a second time.
    steps = ["--max_steps", "10", "--save_steps", "100", "--batched_augmentation", "true"]
    for cache in ("true", "false"):
        result = _run(*steps, "--cache_images", cache, "--output_dir", str(tmp_path / cache))
        assert ("decoding images into memory" in result.stderr) == (cache == "true")
    _same_tensors(
        tmp_path / "true" / "final" / "model.safetensors", tmp_path / "false" / "final" / "model.safetensors"
    )


@pytest.mark.slow
def test_compiled_run_resumes_exactly(tmp_path):
    steps = ["--max_steps", "20", "--save_steps", "4", "--batched_augmentation", "true", "--compile", "true"]
    _killed_and_resumed_equals_straight(tmp_path, steps, steps)


def test_final_folder_is_hub_ready_and_loads_with_auto_classes(tmp_path):
    monitor = ["--knn_steps", "2", "--knn_eval_split", "test[256:384]"]  # before, at step 2 and at the end
    result = _run(
        "--max_steps",
        "3",
        "--save_steps",
        "100",
        "--output_dir",
        str(tmp_path),
        "--save_total_limit",
        "1",
        *monitor,
    )
    final = tmp_path / "final"
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= {
        p.name for p in final.iterdir()
    }
    assert (tmp_path / "config.yaml").exists() and (tmp_path / "logs").is_dir()
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_3"]

    from transformers import AutoImageProcessor, AutoModel

    import sslhub  # noqa: F401

    model = AutoModel.from_pretrained(final)
    assert type(model).__name__ == "MoCoModel" and model.config.backbone == "test_resnet"
    assert AutoImageProcessor.from_pretrained(final).crop_size == {"height": 32, "width": 32}
    card = (final / "README.md").read_text()
    assert "accelerate launch" in card
    # The card's table says how the model was made (settings a reader can judge), with the measured kNN.
    table = dict(re.findall(r"^\| (.+?) \| (.+?) \|$", card.split("## How it was made")[1], re.MULTILINE))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert table["Training data"] == "cifar10-sslhub-sample, split `test[:256]`"
    assert table["Length"] == f"3 steps ({metrics['epochs']} epochs) of 32 images"
    assert table["Optimizer"].startswith(
        "sgd (momentum 0.9), learning rate 0.0125 (0.1 x 32/256), weight decay 0.0001, cosine"
    )
    assert table["Augmentation"].startswith("MoCo v2 preset: crops of scale [0.2, 1]")
    assert table["Key encoder"] == "momentum 0.999, queue of 64 keys"
    held_out = "(cifar10-sslhub-sample, split `test[256:384]`)"
    assert table[f"kNN top-1 trained {held_out}"] == f"{metrics['knn_top1']:.4f}"
    assert str(tmp_path) not in "".join(table.values())
    # A training checkpoint is a from_pretrained folder too: the training model with its queue, or the encoder.
    from transformers import AutoModelForPreTraining

    checkpoint = tmp_path / "checkpoints" / "step_3"
    saved = load_file(checkpoint / "model.safetensors")
    resumed = AutoModelForPreTraining.from_pretrained(checkpoint)
    assert torch.equal(resumed.queue, saved["queue"]) and not any(
        p.requires_grad for p in resumed.key_encoder.parameters()
    )
    encoder = AutoModel.from_pretrained(checkpoint)
    name, tensor = next(iter(encoder.state_dict().items()))
    assert torch.equal(tensor, saved[f"query_encoder.{name}"])
    # Where a step's time went, in milliseconds per step: the parts add up to the wall time; the kNN monitor
    # and the checkpoint are parts of their own, not inside the logging step's time.
    times = json.loads((tmp_path / "metrics.json").read_text())["step_time_ms"]
    parts = ["data", "augmentation", "forward_backward", "optimizer", "momentum", "logging", "checkpoint"]
    parts += ["evaluation", "other"]
    assert list(times) == [*parts, "total"] and times["forward_backward"] > 0
    assert sum(times[p] for p in parts) == pytest.approx(times["total"], rel=1e-3)
    assert times["evaluation"] > times["logging"] and times["checkpoint"] > 0
    # The closing report says how much of the wall time the monitor and checkpoints took: the images/s
    # exclude them, so without it the two numbers disagree (3 steps "in 9 s at 80 images/s").
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    report = re.search(
        r"Trained 3 steps in (\d+) s \(([\d.]+) s of them kNN monitor and checkpoints\)", result.stdout
    )
    assert report, result.stdout[-2000:]
    # Their share of the timed steps, of this run's wall time (the printed 0.1 s rounds it).
    paused = (times["evaluation"] + times["checkpoint"]) / times["total"] * metrics["train_seconds"]
    assert int(report[1]) == round(metrics["train_seconds"]) and float(report[2]) == pytest.approx(
        paused, abs=0.06
    )


def test_nan_loss_stops_the_run_without_saving_it(tmp_path):
    result = _run(
        "--max_steps",
        "10",
        "--save_steps",
        "1",
        "--learning_rate",
        "1e30",
        "--output_dir",
        str(tmp_path),
        check=False,
    )
    assert result.returncode != 0
    assert "the loss became NaN or inf" in result.stderr
    for checkpoint in (tmp_path / "checkpoints").iterdir():
        assert not checkpoint.name.endswith(".tmp")
        weights = load_file(checkpoint / "model.safetensors")
        assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point()), checkpoint
    assert not (tmp_path / "final").exists()


def test_unknown_setting_is_refused():
    result = _run("--learning_rte", "0.1", check=False)
    assert result.returncode != 0 and "did you mean --learning_rate" in result.stderr


MOCO_CONFIGS = sorted(
    [*(ROOT / "recipes" / "configs").glob("moco_*.yaml"), ROOT / "recipes" / "configs" / "demo.yaml"]
)


@pytest.mark.parametrize("config", MOCO_CONFIGS, ids=lambda p: p.stem)
def test_shipped_configs_parse(config):
    sys.path.insert(0, str(RECIPE.parent))
    try:
        from pretrain_moco import MoCoArguments, moco_config

        from sslhub.training import parse_args
    finally:
        sys.path.pop(0)
    args = parse_args(MoCoArguments, ["--config", str(config)])
    assert args.batch_size > 0 and args.output_dir
    assert moco_config(args).version == args.version  # every model setting is valid


def test_moco_v3_with_lars_accumulation_and_momentum_schedule(tmp_path):
    result = _run(
        "--version",
        "v3",
        "--model.backbone",
        "test_vit",
        "--model.backbone_kwargs",
        "{img_size: 32, patch_size: 8}",
        "--model.queue_size",
        "0",
        "--model.projector_hidden_size",
        "64",
        "--model.predictor_hidden_size",
        "64",
        "--optimizer",
        "lars",
        "--learning_rate",
        "0.6",
        "--gradient_accumulation_steps",
        "2",
        "--batch_size",
        "16",
        "--final_momentum",
        "1.0",
        "--freeze_patch_embed",
        "true",
        "--augmentation",
        "v3",
        "--max_steps",
        "3",
        "--save_steps",
        "3",
        "--output_dir",
        str(tmp_path),
    )
    assert "Reloaded with AutoModel.from_pretrained: MoCoModel" in result.stdout
    config = json.loads((tmp_path / "final" / "config.json").read_text())
    assert config["version"] == "v3" and config["queue_size"] == 0 and config["predictor_num_layers"] == 2
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["steps"] == 3


def _moco_arguments():
    sys.path.insert(0, str(RECIPE.parent))
    try:
        from pretrain_moco import MoCoArguments

        from sslhub.training import parse_args
    finally:
        sys.path.pop(0)
    return lambda *argv: parse_args(MoCoArguments, list(argv))


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--version", "v1"], dict(optimizer="sgd", learning_rate=0.03, lr_schedule="step", epochs=200)),
        (
            ["--version", "v2"],
            dict(optimizer="sgd", learning_rate=0.03, lr_schedule="cosine", final_momentum=None),
        ),
        (
            ["--version", "v3"],
            dict(
                optimizer="lars", learning_rate=0.6, weight_decay=1e-6, warmup_epochs=10, final_momentum=1.0
            ),
        ),
        (
            ["--version", "v3", "--model.backbone", "vit_small_patch16_224"],
            dict(
                optimizer="adamw", learning_rate=1.5e-4, warmup_epochs=40, epochs=300, freeze_patch_embed=True
            ),
        ),
        (["--version", "v3", "--optimizer", "adamw", "--epochs", "5"], dict(optimizer="adamw", epochs=5)),
    ],
)
def test_the_version_brings_the_papers_training_recipe(argv, expected):
    args = _moco_arguments()(*argv)
    assert {name: getattr(args, name) for name in expected} == expected


def test_every_unreadable_file_is_named_and_counted(tmp_path):
    from PIL import Image

    folder = tmp_path / "photos"
    for label, colour in (("cat", (200, 0, 0)), ("dog", (0, 200, 0))):
        (folder / label).mkdir(parents=True)
        for i in range(12):
            Image.new("RGB", (40, 40), colour).save(folder / label / f"{i}.jpg")
    (folder / "cat" / "empty.png").write_bytes(b"")
    (folder / "dog" / "notes.jpg").write_text("not an image")
    jpeg = (folder / "dog" / "0.jpg").read_bytes()
    (folder / "dog" / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    result = _run(
        *("--dataset", str(folder), "--split", "train", "--batch_size", "16", "--max_steps", "3"),
        *("--output_dir", str(tmp_path / "run")),
    )
    for name in ("empty.png", "notes.jpg", "truncated.jpg"):
        assert name in result.stderr, name
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["skipped_images"] == 3
    assert sorted(Path(n.split(" (")[0]).name for n in metrics["unreadable_files"]) == [
        "empty.png",
        "notes.jpg",
        "truncated.jpg",
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--version", "v4"], "version must be one of"),
        (["--optimizer", "adam"], "optimizer must be one of"),
        (["--model.temperature", "0"], "model.temperature must be a positive number"),
        (["--model.backbone", "resnet_5o"], "model.backbone='resnet_5o' is not a timm model name"),
        (["--resume", "/no/such/checkpoint"], "resume='/no/such/checkpoint' is not a checkpoint folder"),
        (["--dataset", "/no/such/folder", "--streaming", "true"], "streamed dataset has no known length"),
        (["--init_from", "/no/such/model"], "init_from: '/no/such/model': no such file or folder"),
        (["--dataset", "/no/such/folder"], "dataset: '/no/such/folder': no such file or folder"),
        (["--model.queue_size", "100"], "queue_size=100 must be a multiple of the keys enqueued per step"),
    ],
)
def test_bad_settings_fail_before_any_data_is_read(argv, message, tmp_path):
    started = time.perf_counter()
    result = _run(*argv, "--output_dir", str(tmp_path), check=False)
    assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]
    assert time.perf_counter() - started < 60 and not (tmp_path / "logs").exists()


@pytest.mark.parametrize(
    "recipe", ["pretrain_moco.py", "distill.py", "pretrain_colorization.py", "evaluate.py"]
)
def test_help_works_anywhere_on_the_command_line(recipe):
    command = [sys.executable, str(ROOT / "recipes" / recipe), "--batch_size", "8", "--help"]
    result = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--batch_size" in result.stdout and "--output_dir" in result.stdout


@pytest.mark.parametrize("kind", ["inference folder", "training checkpoint"])
def test_pretraining_continues_from_a_saved_model(tmp_path, kind):
    from sslhub import MoCoForPreTraining

    from .helpers import tiny_moco_v2

    saved = tmp_path / "saved"
    model = MoCoForPreTraining(tiny_moco_v2(queue_size=64, shuffle_bn_splits=1))
    (model.query_encoder if kind == "inference folder" else model).save_pretrained(saved)
    result = _run(
        "--init_from",
        str(saved),
        "--max_steps",
        "2",
        "--batch_size",
        "16",
        "--output_dir",
        str(tmp_path / "run"),
    )
    assert "Reloaded with AutoModel.from_pretrained: MoCoModel" in result.stdout
    card = (tmp_path / "run" / "final" / "README.md").read_text()
    assert str(saved) in card
    config = json.loads((tmp_path / "run" / "final" / "config.json").read_text())
    assert config["projection_dim"] == 16 and config["queue_size"] == 64  # the saved architecture is kept

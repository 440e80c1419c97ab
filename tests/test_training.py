"""The shared training pieces: typed configs, schedules, checkpoints, the loss watch."""

import math
from dataclasses import dataclass

import pytest
import torch

from sslhub.training import (
    LossWatch,
    NonFiniteLossError,
    TrainingConfig,
    cosine_lr,
    list_checkpoints,
    parse_config,
    resolve_resume,
)


@dataclass
class RecipeConfig(TrainingConfig):
    backbone: str = "resnet18"
    temperature: float | None = None
    backbone_kwargs: dict | None = None
    image_mean: list[float] | None = None


def test_yaml_then_command_line_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("backbone: resnet50\nbatch_size: 64\nlearning_rate: 0.06\nmax_steps: 10\n")
    cfg = parse_config(
        RecipeConfig,
        [
            "--config",
            str(path),
            "--batch_size",
            "32",
            "--mixed_precision=bf16",
            "--temperature",
            "0.2",
            "--streaming",
            "--backbone_kwargs",
            "{drop_path_rate: 0.1}",
            "--image_mean",
            "[0.5, 0.5, 0.5]",
        ],
    )
    assert (cfg.backbone, cfg.batch_size, cfg.learning_rate, cfg.max_steps) == ("resnet50", 32, 0.06, 10)
    assert cfg.mixed_precision == "bf16" and cfg.temperature == 0.2 and cfg.streaming is True
    assert cfg.backbone_kwargs == {"drop_path_rate": 0.1} and cfg.image_mean == [0.5, 0.5, 0.5]
    assert parse_config(RecipeConfig, ["--resume", "null"]).resume is None
    assert parse_config(RecipeConfig, ["--resume", "latest"]).resume == "latest"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--batch_sise", "3"],
            "unknown setting 'batch_sise' in the command line; did you mean --batch_size",
        ),
        (["--batch_size", "big"], "--batch_size expects an integer"),
        (["--streaming", "maybe"], "--streaming expects true or false"),
        (["--learning_rate", "fast"], "--learning_rate expects a number"),
        (["positional"], "expected --field value"),
    ],
)
def test_bad_settings_end_with_a_clear_message(argv, message):
    with pytest.raises(SystemExit, match=message):
        parse_config(RecipeConfig, argv)


def test_unknown_field_in_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("lerning_rate: 0.1\n")
    with pytest.raises(SystemExit, match=r"unknown setting 'lerning_rate' in .*bad.yaml"):
        parse_config(RecipeConfig, ["--config", str(path)])


def test_help_lists_every_setting(capsys):
    with pytest.raises(SystemExit):
        parse_config(RecipeConfig, ["--help"])
    text = capsys.readouterr().out
    assert "--max_steps" in text and "--backbone" in text and "--resume" in text


def test_cosine_lr_with_warmup_is_a_pure_function_of_the_step():
    assert cosine_lr(0, 100, 1.0, warmup_steps=10) == pytest.approx(0.1)
    assert cosine_lr(9, 100, 1.0, warmup_steps=10) == pytest.approx(1.0)
    assert cosine_lr(55, 100, 1.0, warmup_steps=10) == pytest.approx(0.5)
    assert cosine_lr(100, 100, 1.0, warmup_steps=10) == pytest.approx(0.0, abs=1e-12)
    assert cosine_lr(25, 100, 2.0) == pytest.approx(1.0 + math.cos(math.pi / 4))


def test_half_written_checkpoints_are_never_the_latest(tmp_path):
    for name in ("step_2", "step_10", "step_12.tmp", "notes"):
        (tmp_path / "checkpoints" / name).mkdir(parents=True)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_2", "step_10"]
    assert resolve_resume("latest", tmp_path).name == "step_10"
    assert resolve_resume(None, tmp_path) is None
    assert resolve_resume("latest", tmp_path / "empty") is None
    with pytest.raises(FileNotFoundError, match="no such checkpoint folder"):
        resolve_resume(str(tmp_path / "missing"), tmp_path)


def test_loss_watch_raises_on_nan_and_names_the_steps(tmp_path):
    watch = LossWatch(torch.device("cpu"))
    for value in (1.0, 3.0):
        watch.update(torch.tensor(value))
    assert watch.check(2, None) == pytest.approx(2.0)
    watch.update(torch.tensor(1.0))
    watch.update(torch.tensor(float("nan")))
    with pytest.raises(NonFiniteLossError, match=r"between steps 3 and 4.*last good checkpoint is .*step_2"):
        watch.check(4, tmp_path / "step_2")

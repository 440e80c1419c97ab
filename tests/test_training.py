"""The shared training pieces: settings (YAML, command line, the model section), schedules, checkpoints,
the loss watch."""

import math
import re
from dataclasses import dataclass

import pytest
import torch

from sslhub import MoCoConfig
from sslhub.training import (
    LossWatch,
    NonFiniteLossError,
    TrainingArguments,
    cosine_lr,
    list_checkpoints,
    parse_args,
    resolve_resume,
    setting,
)


@dataclass
class RecipeArguments(TrainingArguments):
    """A test recipe."""

    model_config = MoCoConfig
    model_fields_set_by_recipe = ("batch_size",)
    legacy_model_names = {"student": "backbone"}

    augmentation: str | None = setting(None, "the augmentation preset")
    milestones: list[int] = setting([120, 160], "epochs of the step schedule")


def test_yaml_then_command_line_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "batch_size: 64\nlearning_rate: 0.06\nmax_steps: 10\nmodel:\n  backbone: resnet50\n  temperature: 0.5\n"
    )
    args = parse_args(
        RecipeArguments,
        [
            "--config",
            str(path),
            "--batch_size",
            "32",
            "--mixed_precision=bf16",
            "--model.temperature",
            "0.2",
            "--streaming",
            "--model.backbone_kwargs",
            "{drop_path_rate: 0.1}",
            "--model.image_mean=[0.5, 0.5, 0.5]",
            "--milestones",
            "[10, 20]",
        ],
    )
    assert (args.batch_size, args.learning_rate, args.max_steps) == (32, 0.06, 10)
    assert args.mixed_precision == "bf16" and args.streaming is True and args.milestones == [10, 20]
    assert args.model == {
        "backbone": "resnet50",
        "temperature": 0.2,
        "backbone_kwargs": {"drop_path_rate": 0.1},
        "image_mean": [0.5, 0.5, 0.5],
    }
    assert parse_args(RecipeArguments, ["--resume", "null"]).resume is None
    assert parse_args(RecipeArguments, ["--resume", "latest"]).resume == "latest"
    assert parse_args(RecipeArguments, ["--mixed_precision", "no"]).mixed_precision == "no"


def test_the_model_section_goes_to_the_config_preset_unchanged(tmp_path):
    args = parse_args(RecipeArguments, ["--model.queue_size", "4096", "--model.small_input_stem"])
    config = MoCoConfig.v2(**args.model)
    assert config.queue_size == 4096 and config.small_input_stem is True and config.temperature == 0.2


def test_flat_spellings_of_model_settings_still_work_and_warn(tmp_path, capsys):
    path = tmp_path / "old.yaml"
    path.write_text("temperature: 0.1\nbackbone: resnet18\n")
    args = parse_args(
        RecipeArguments, ["--config", str(path), "--queue_size", "1024", "--student=test_resnet"]
    )
    assert args.model == {"temperature": 0.1, "backbone": "test_resnet", "queue_size": 1024}
    warnings = capsys.readouterr().err
    assert "write --model.temperature" in warnings and "write --model.backbone" in warnings


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--batch_sise", "3"], "unknown setting --batch_sise; did you mean --batch_size"),
        (["--model.temprature", "3"], "unknown model setting 'temprature'.*did you mean --model.temperature"),
        (["--model.batch_size", "3"], "model.batch_size .* is set by the recipe"),
        (["--model.temperature", "hot"], "model.temperature expects a number"),
        (["--batch_size", "big"], "--batch_size expects an integer"),
        (["--streaming", "maybe"], "--streaming expects true or false"),
        (["--learning_rate", "fast"], "--learning_rate expects a number"),
        (["positional"], "not used .*positional"),
    ],
)
def test_bad_settings_end_with_a_clear_message(argv, message, capsys):
    with pytest.raises(SystemExit) as raised:
        parse_args(RecipeArguments, argv)
    said = str(raised.value.code) + capsys.readouterr().err
    assert raised.value.code != 0
    assert re.search(message, said), said


def test_unknown_field_in_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("lerning_rate: 0.1\n")
    with pytest.raises(SystemExit, match=r"unknown setting 'lerning_rate' in .*bad.yaml"):
        parse_args(RecipeArguments, ["--config", str(path)])


@pytest.mark.parametrize("where", [0, 3])
def test_help_anywhere_lists_every_setting_with_its_documentation(capsys, where):
    argv = ["--batch_size", "32", "--model.temperature", "0.1"]
    argv.insert(where, "--help")
    with pytest.raises(SystemExit) as raised:
        parse_args(RecipeArguments, argv)
    assert raised.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--max_steps" in text and "--resume" in text and "--config" in text
    assert "peak learning rate per 256 images" in text  # the field's own help line
    assert "--model.temperature softmax temperature T of InfoNCE" in text  # from MoCoConfig's docstring
    assert "--model.batch_size" not in text  # filled by the recipe


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

"""The shared training pieces: settings (YAML, command line, the model section), schedules, checkpoints,
the loss watch."""

import math
import pickle
import re
from dataclasses import dataclass

import pytest
import torch

from sslhub import MoCoConfig
from sslhub.training import (
    LARS,
    LossWatch,
    NonFiniteLossError,
    TrainingArguments,
    cosine_lr,
    create_optimizer,
    list_checkpoints,
    parse_args,
    resolve_resume,
    setting,
    step_lr,
)


@dataclass
class RecipeArguments(TrainingArguments):
    """A test recipe."""

    model_config = MoCoConfig
    model_fields_set_by_recipe = ("batch_size",)
    legacy_model_names = {"student": "backbone"}

    augmentation: str | None = setting(None, "the augmentation preset")
    min_crop_scale: float | None = setting(None, "RandomResizedCrop's lower scale bound")
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


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--config", "missing.yaml"], "--config missing.yaml: no such file"),
        (["--min_crop_scale", "2"], r"min_crop_scale is a fraction .* in \(0, 1\], got 2"),
        (["--dataset", "no/such/folder"], "dataset: 'no/such/folder': no such file or folder"),
        (["--dataset", "missing/*.parquet"], "dataset: no data file matches"),
        # The push comes after the whole run: its repo id and the Hub's reachability are checked first.
        (
            ["--push_to_hub", "true", "--hub_model_id", "a/b/c"],
            "push_to_hub: invalid Hub repository id 'a/b/c'",
        ),
        (["--push_to_hub", "true"], "push_to_hub: HF_HUB_OFFLINE=1 is set.*leave push_to_hub off"),
    ],
)
def test_settings_that_would_fail_later_fail_at_parsing(argv, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=message):
        parse_args(RecipeArguments, argv)


def test_a_new_run_refuses_an_output_dir_holding_an_earlier_runs_checkpoints(tmp_path):
    # Its checkpoints would mix with theirs, and `--resume latest` would pick theirs.
    (tmp_path / "checkpoints" / "step_30").mkdir(parents=True)
    out = ["--output_dir", str(tmp_path)]
    with pytest.raises(SystemExit, match=r"earlier run's checkpoints \(up to step_30\).*--resume latest"):
        parse_args(RecipeArguments, out)
    assert parse_args(RecipeArguments, [*out, "--resume", "latest"]).resume == "latest"
    assert parse_args(RecipeArguments, [*out, "--overwrite_output_dir", "true"]).overwrite_output_dir


def test_a_fresh_start_clears_the_earlier_checkpoints_and_retention_keeps_the_new_one(tmp_path, capsys):
    from accelerate import Accelerator

    from sslhub.training import Checkpointer

    (tmp_path / "checkpoints" / "step_30").mkdir(parents=True)
    checkpointer = Checkpointer(Accelerator(cpu=True), tmp_path, total_limit=2)
    assert checkpointer.resume(None) == 0 and list_checkpoints(tmp_path) == []
    assert "removing the earlier run's 1 checkpoint(s)" in capsys.readouterr().out
    (tmp_path / "checkpoints" / "step_30").mkdir()  # one of a higher step appears all the same
    for step in (3, 4):
        checkpointer.save(step)
        assert f"step_{step}" in [p.name for p in list_checkpoints(tmp_path)]
    assert len(list_checkpoints(tmp_path)) == 2


def test_resume_says_when_there_is_nothing_to_resume_and_refuses_a_longer_runs_checkpoint(tmp_path, capsys):
    from accelerate import Accelerator

    from sslhub.training import Checkpointer, LRSchedule

    checkpointer = Checkpointer(Accelerator(cpu=True), tmp_path)
    assert checkpointer.resume("latest", LRSchedule(total_steps=5, peak_lr=0.1)) == 0
    assert "no checkpoint in" in capsys.readouterr().out
    checkpointer.save(8)
    with pytest.raises(SystemExit, match="at step 8, past this run's 5 steps"):
        Checkpointer(Accelerator(cpu=True), tmp_path).resume("latest", LRSchedule(total_steps=5, peak_lr=0.1))
    assert Checkpointer(Accelerator(cpu=True), tmp_path).resume("latest", LRSchedule(8, 0.1)) == 8


def test_resume_on_another_learning_rate_schedule_says_how_the_rate_jumps(tmp_path, capsys):
    from accelerate import Accelerator

    from sslhub.training import Checkpointer, LRSchedule

    trained = LRSchedule(total_steps=100, peak_lr=0.4, warmup_steps=10)
    checkpointer = Checkpointer(Accelerator(cpu=True), tmp_path)
    checkpointer.resume(None, trained)
    checkpointer.save(50)

    # The same schedule: resumed silently, and the checkpoints keep saying which schedule they were on.
    assert Checkpointer(Accelerator(cpu=True), tmp_path).resume("latest", trained) == 50
    assert "learning-rate schedule" not in capsys.readouterr().err

    longer = LRSchedule(total_steps=200, peak_lr=0.4, warmup_steps=10)  # e.g. --max_steps 200 on resume
    resumed = Checkpointer(Accelerator(cpu=True), tmp_path)
    assert resumed.resume("latest", longer) == 50
    err = capsys.readouterr().err
    assert "trained on another learning-rate schedule (total_steps 100 -> 200)" in err
    assert (
        f"the learning rate is {longer(50):.4g}, where the checkpoint's run would use {trained(50):.4g}"
        in err
    )
    assert trained(50) == pytest.approx(0.2 * (1 + math.cos(math.pi * 40 / 90)))
    resumed.save(60)  # its checkpoints are on the new schedule: resuming them again is silent
    assert Checkpointer(Accelerator(cpu=True), tmp_path).resume("latest", longer) == 60
    assert "learning-rate schedule" not in capsys.readouterr().err


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


@pytest.mark.parametrize("readable", [True, False], ids=["restored", "unreadable"])
def test_resume_restores_the_random_states_or_says_it_could_not(tmp_path, monkeypatch, capsys, readable):
    from accelerate import Accelerator

    from sslhub.training import Checkpointer

    accelerator = Accelerator(cpu=True)
    checkpointer = Checkpointer(accelerator, tmp_path)
    torch.manual_seed(3)
    checkpointer.save(4)
    expected = torch.rand(3)  # what an uninterrupted run draws next
    if not readable:
        # As accelerate's safe unpickling fails where it lacks the numpy types the states hold (numpy < 1.25).
        torch_load = torch.load

        def load(f, *args, **kwargs):
            if "random_states" in str(f):
                raise pickle.UnpicklingError("Weights only load failed.")
            return torch_load(f, *args, **kwargs)

        monkeypatch.setattr(torch, "load", load)
    checkpointer.state.step = 0
    assert checkpointer.resume("latest") == 4
    drawn = torch.rand(3)
    warning = capsys.readouterr().err
    assert torch.equal(drawn, expected) == readable
    assert ("random states in" in warning and "will not be identical" in warning) == (not readable)


def test_loss_watch_raises_on_nan_and_names_the_steps(tmp_path):
    watch = LossWatch(torch.device("cpu"))
    for value in (1.0, 3.0):
        watch.update(torch.tensor(value))
    assert watch.check(2, None) == pytest.approx(2.0)
    watch.update(torch.tensor(1.0))
    watch.update(torch.tensor(float("nan")))
    with pytest.raises(NonFiniteLossError, match=r"between steps 3 and 4.*last good checkpoint is .*step_2"):
        watch.check(4, tmp_path / "step_2")


def _naive_lars_step(params, grads, momenta, lr, weight_decay, momentum, eta=0.001):
    """LARS of the MoCo v3 authors, written from the formula one tensor at a time."""
    for w, g, mu in zip(params, grads, momenta, strict=True):
        d = g.clone()
        if w.ndim > 1:
            d = d + weight_decay * w
            w_norm, d_norm = w.norm(), d.norm()
            if w_norm > 0 and d_norm > 0:
                d = d * (eta * w_norm / d_norm)
        mu.mul_(momentum).add_(d)
        w.sub_(lr * mu)


@pytest.mark.parametrize("weight_decay", [1e-6, 0.0])
def test_lars_follows_the_moco_v3_authors_formula(weight_decay):
    torch.manual_seed(0)
    shapes = [(8, 4), (8,), (3, 3, 2, 2), (5,)]
    params = [torch.randn(s, requires_grad=True) for s in shapes]
    reference = [p.detach().clone() for p in params]
    momenta = [torch.zeros(s) for s in shapes]
    optimizer = LARS(params, lr=0.6, weight_decay=weight_decay, momentum=0.9)
    for _ in range(3):
        grads = [torch.randn(s) for s in shapes]
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        optimizer.step()
        _naive_lars_step(reference, grads, momenta, 0.6, weight_decay, 0.9)
    for got, expected in zip(params, reference, strict=True):
        torch.testing.assert_close(got.detach(), expected, rtol=1e-6, atol=1e-7)


def test_lars_rescales_matrices_also_without_weight_decay():
    # the first step of a matrix moves it by lr * eta * ||w||, whatever the gradient's size (timm's Lars
    # skips the trust ratio when wd = 0); vectors take the plain momentum step
    weight, bias = torch.randn(16, 8, requires_grad=True), torch.randn(8, requires_grad=True)
    start_weight, start_bias = weight.detach().clone(), bias.detach().clone()
    weight.grad, bias.grad = 100 * torch.randn(16, 8), torch.randn(8)
    LARS([weight, bias], lr=0.5, weight_decay=0.0, momentum=0.9).step()
    moved = (weight.detach() - start_weight).norm()
    torch.testing.assert_close(moved, 0.5 * 0.001 * start_weight.norm())
    torch.testing.assert_close(bias.detach(), start_bias - 0.5 * bias.grad)


def test_step_schedule_drops_tenfold_at_each_milestone():
    # MoCo v1: epochs 120 and 160 of 200 are 0.6 and 0.8 of the run
    assert step_lr(0, 200, 0.03, [0.6, 0.8]) == pytest.approx(0.03)
    assert step_lr(119, 200, 0.03, [0.6, 0.8]) == pytest.approx(0.03)
    assert step_lr(120, 200, 0.03, [0.6, 0.8]) == pytest.approx(0.003)
    assert step_lr(160, 200, 0.03, [0.6, 0.8]) == pytest.approx(0.0003)
    assert step_lr(0, 200, 0.03, [0.6], warmup_steps=10) == pytest.approx(0.003)


def test_the_optimizers_decay_every_parameter_as_the_papers_code_unless_asked():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    args = RecipeArguments(optimizer="adamw")
    (group,) = create_optimizer(model, args).param_groups
    assert len(group["params"]) == 4 and group["weight_decay"] == args.weight_decay
    args = RecipeArguments(optimizer="adamw", no_decay_bias_and_norm=True)
    decayed, kept = create_optimizer(model, args).param_groups
    assert [p.ndim for p in decayed["params"]] == [2] and kept["weight_decay"] == 0.0
    assert isinstance(create_optimizer(model, RecipeArguments(optimizer="lars")), LARS)


def test_a_queue_longer_than_an_epoch_is_warned_about(capsys):
    from types import SimpleNamespace

    from sslhub.training import check_queue_fits_data

    class Loader(SimpleNamespace):
        def __len__(self):
            return 5  # batches per process

    accelerator = SimpleNamespace(print=print)
    check_queue_fits_data(accelerator, 4096, Loader(total_batch_size=1024))  # 5,120 images an epoch
    assert capsys.readouterr().out == ""
    check_queue_fits_data(accelerator, 65536, Loader(total_batch_size=1024))
    assert "queue of 65,536 embeddings is longer than the 5,120 images" in capsys.readouterr().out
    check_queue_fits_data(accelerator, 65536, SimpleNamespace())  # streamed: no length, no warning
    assert capsys.readouterr().out == ""


def test_resuming_with_other_model_settings_names_them(tmp_path):
    from accelerate import Accelerator

    from sslhub import MoCoForPreTraining
    from sslhub.training import Checkpointer

    from .helpers import tiny_moco_v2

    def checkpointer(queue_size: int) -> Checkpointer:
        accelerator = Accelerator(cpu=True)
        accelerator.prepare(MoCoForPreTraining(tiny_moco_v2(queue_size=queue_size)))
        return Checkpointer(accelerator, tmp_path)

    checkpointer(64).save(2)
    assert (tmp_path / "checkpoints" / "step_2" / "config.json").exists()  # a from_pretrained folder too
    with pytest.raises(SystemExit, match=r"size mismatch for queue.*queue_size=64 \(this run: 32\)"):
        checkpointer(32).resume("latest")
    assert checkpointer(64).resume("latest") == 2


def test_the_knn_monitor_warns_when_a_split_holds_one_class(tmp_path, capsys):
    # The shipped sample is sorted by class: its first 64 images are all of class 0, and a kNN on them is
    # always right.
    from accelerate import Accelerator

    from sslhub.training import KNNMonitor

    config = MoCoConfig.v2(backbone="test_resnet", image_size=32)
    out = [
        "--output_dir",
        str(tmp_path),
        "--dataset",
        "sample",
        "--split",
        "train[:64]",
        "--num_workers",
        "0",
    ]
    KNNMonitor(
        parse_args(RecipeArguments, [*out, "--knn_eval_split", "test[:64]"]), Accelerator(cpu=True), config
    )
    err = capsys.readouterr().err
    assert "bank (training split) holds 1 class(es) in 64 images" in err
    assert "evaluation split holds 1 class(es) in 64 images" in err
    both = ["--split", "train[:64]+train[-64:]", "--knn_eval_split", "test[:64]+test[-64:]"]
    KNNMonitor(parse_args(RecipeArguments, [*out, *both]), Accelerator(cpu=True), config)
    assert "class(es)" not in capsys.readouterr().err

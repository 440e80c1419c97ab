"""Two CPU processes over gloo: MoCo's queue, key gathering, shuffle-BN, sharding, the recipe end to end, the
shipped two-process launch config, and the stop of a launch that does not distribute."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sslhub.training.accelerator import check_processes

ROOT = Path(__file__).resolve().parents[1]
TWO_PROCESSES = (
    "--multi_gpu",
    "--num_processes",
    "2",
    "--num_machines",
    "1",
    "--mixed_precision",
    "no",
    "--dynamo_backend",
    "no",
)


TWO_PROCESS_CONFIG = ROOT / "recipes" / "accelerate" / "cpu_2proc.yaml"


def _run(
    *args: str, launcher: tuple[str, ...] = TWO_PROCESSES, use_cpu: bool = True, timeout: int = 300
) -> subprocess.CompletedProcess:
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    if not use_cpu:
        del env["ACCELERATE_USE_CPU"]
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        *launcher,
        "--main_process_port",
        "0",
        *args,
    ]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _launch(*args: str, **options) -> subprocess.CompletedProcess:
    result = _run(*args, **options)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def _short_run(output_dir: Path, images: int = 64, steps: int = 2) -> list[str]:
    """A tiny MoCo pretraining of `steps` steps that saves a checkpoint every 2 steps."""
    recipe = str(ROOT / "recipes" / "pretrain_moco.py")
    model = ["--backbone", "test_resnet", "--image_size", "32", "--queue_size", "64"]
    run = ["--batch_size", "16", "--max_steps", str(steps), "--save_steps", "2", "--num_workers", "0"]
    return [recipe, "--dataset", "sample", "--split", f"test[:{images}]", *model, *run] + [
        "--report_to",
        "none",
        "--output_dir",
        str(output_dir),
    ]


def _lines(result: subprocess.CompletedProcess, start: str) -> int:
    return sum(line.startswith(start) for line in (result.stdout + result.stderr).splitlines())


@pytest.mark.distributed
def test_queue_gathering_shuffle_bn_and_sharding_across_two_processes():
    result = _launch(str(ROOT / "tests" / "distributed_check.py"))
    assert "distributed check passed" in result.stdout


@pytest.mark.distributed
def test_recipe_runs_on_two_processes(tmp_path):
    _launch(*_short_run(tmp_path, images=128, steps=4))
    assert (tmp_path / "final" / "model.safetensors").exists()
    assert (tmp_path / "checkpoints" / "step_4").is_dir()


@pytest.mark.slow
@pytest.mark.distributed
def test_shipped_two_process_config_distributes(tmp_path):
    """`recipes/accelerate/cpu_2proc.yaml` as its comment says to launch it: one run of two processes (one
    `precision:` line, each process's RNG state in the checkpoint), not two runs of one."""
    result = _launch(*_short_run(tmp_path), launcher=("--config_file", str(TWO_PROCESS_CONFIG)))
    checkpoint = tmp_path / "checkpoints" / "step_2"
    assert (checkpoint / "random_states_0.pkl").exists() and (checkpoint / "random_states_1.pkl").exists()
    assert _lines(result, "precision:") == 1, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.skipif(torch.cuda.is_available(), reason="with GPUs the config runs over NCCL")
def test_two_process_config_without_use_cpu_distributes_or_stops_first(tmp_path):
    """The same launch without ACCELERATE_USE_CPU=1, on a machine without GPUs: accelerate 1.9 joins the two
    processes over gloo, newer versions make each a run of its own, which must stop before any work (not two
    runs writing the same checkpoint folder) and say so once."""
    result = _run(
        *_short_run(tmp_path / "run"), launcher=("--config_file", str(TWO_PROCESS_CONFIG)), use_cpu=False
    )
    if result.returncode == 0:
        assert (tmp_path / "run" / "checkpoints" / "step_2" / "random_states_1.pkl").exists()
        assert _lines(result, "precision:") == 1
    else:
        assert _lines(result, "error: the launcher started 2 processes") == 1, result.stderr[-5000:]
        assert "ACCELERATE_USE_CPU=1 accelerate launch --config_file" in result.stderr
        assert _lines(result, "precision:") == 0
        assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("variable", ["WORLD_SIZE", "PMI_SIZE"])
def test_a_launch_that_does_not_distribute_stops_with_the_cause(monkeypatch, variable):
    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "RANK", "PMI_RANK"):
        monkeypatch.delenv(name, raising=False)
    check_processes(1)  # no launcher: one process
    monkeypatch.setenv(variable, "2")
    check_processes(2)  # two processes, joined into one run
    with pytest.raises(SystemExit) as stop:
        check_processes(1)  # two processes, each a run of its own
    message = str(stop.value.code)
    assert message.startswith("error: the launcher started 2 processes")
    assert "ACCELERATE_USE_CPU=1 accelerate launch --config_file recipes/accelerate/cpu_2proc.yaml" in message
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(SystemExit) as stop:
        check_processes(1)  # the other processes stop without repeating the message
    assert stop.value.code == 1

"""Two CPU processes over gloo: MoCo's queue, key gathering, shuffle-BN, sharding, and the recipe end to end."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.distributed


def _launch(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        "0",
        *args,
    ]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def test_queue_gathering_shuffle_bn_and_sharding_across_two_processes():
    result = _launch(str(ROOT / "tests" / "distributed_check.py"))
    assert "distributed check passed" in result.stdout


def test_recipe_runs_on_two_processes(tmp_path):
    _launch(
        str(ROOT / "recipes" / "pretrain_moco.py"),
        "--dataset",
        "sample",
        "--split",
        "test[:128]",
        "--backbone",
        "test_resnet",
        "--image_size",
        "32",
        "--queue_size",
        "64",
        "--batch_size",
        "16",
        "--max_steps",
        "4",
        "--save_steps",
        "2",
        "--num_workers",
        "0",
        "--output_dir",
        str(tmp_path),
    )
    assert (tmp_path / "final" / "model.safetensors").exists()
    assert (tmp_path / "checkpoints" / "step_4").is_dir()

"""Experiment trackers: `report_to` as in transformers, handed to Accelerate's trackers."""

import os
import subprocess
import sys
from pathlib import Path

import accelerate.utils
import pytest

from sslhub.training.accelerator import TRACKERS, resolve_report_to

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def installed(monkeypatch):
    """Simulate which tracker packages are installed."""

    def simulate(*names):
        for name in TRACKERS:
            monkeypatch.setattr(accelerate.utils, f"is_{name}_available", lambda name=name: name in names)

    return simulate


def test_default_is_the_installed_local_trackers(installed):
    installed("tensorboard", "trackio", "wandb")
    assert resolve_report_to(None) == ["tensorboard", "trackio"]
    installed("trackio")
    assert resolve_report_to(None) == ["trackio"]
    installed()
    assert resolve_report_to(None) == []  # TensorBoard is an optional extra: no tracker, no error


def test_explicit_all_and_none(installed):
    installed("tensorboard", "mlflow", "aim")
    assert resolve_report_to("mlflow, tensorboard") == ["mlflow", "tensorboard"]
    assert resolve_report_to("all") == ["tensorboard", "mlflow", "aim"]
    assert resolve_report_to("none") == []
    with pytest.raises(ValueError, match="wandb is not installed"):
        resolve_report_to("wandb")
    with pytest.raises(ValueError, match="unknown tracker 'tensorbord'"):
        resolve_report_to("tensorbord")


@pytest.mark.parametrize("report_to", ["tensorboard,trackio", "none"])
def test_a_run_logs_to_the_chosen_trackers(tmp_path, report_to):
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "TRACKIO_DIR": str(tmp_path / "trackio"),
    }
    command = [sys.executable, str(ROOT / "recipes" / "pretrain_moco.py"), "--dataset", "sample"]
    command += ["--split", "test[:64]", "--model.backbone", "test_resnet", "--model.image_size", "32"]
    command += ["--model.queue_size", "32", "--batch_size", "16", "--max_steps", "2", "--log_steps", "1"]
    command += ["--num_workers", "0", "--report_to", report_to, "--output_dir", str(tmp_path / "run")]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    events = list((tmp_path / "run").rglob("events.out.tfevents.*"))
    databases = list((tmp_path / "trackio").rglob("*.db"))
    if report_to == "none":
        assert not events and not databases
    else:
        assert events and databases
        # the trackio run is finished once, not again by trackio's exit hook
        assert (result.stdout + result.stderr).count("Run finished") <= 1

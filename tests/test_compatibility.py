"""Folders saved by sslhub 0.1, before the redesign, load and compute the same (with and without sslhub)."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel

from sslhub import MoCoForPreTraining

SAVED = Path(__file__).parent / "data" / "saved_by_sslhub_0_1"
FOLDERS = sorted(p.name for p in SAVED.iterdir() if p.is_dir())


def _encoder(model):
    return model.query_encoder if isinstance(model, MoCoForPreTraining) else model


@pytest.mark.parametrize("name", FOLDERS)
def test_old_folders_load_with_sslhub_and_compute_the_same(name):
    expected = load_file(SAVED / name / "expected.safetensors")
    model = AutoModel.from_pretrained(SAVED / name).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(expected["probe"]).pooler_output, expected["pooler_output"])


@pytest.mark.parametrize("name", [n for n in FOLDERS if n.startswith("moco")])
def test_old_training_checkpoints_continue_with_their_key_encoder_and_queue(name):
    saved = load_file(SAVED / name / "model.safetensors")
    model = MoCoForPreTraining.from_pretrained(SAVED / name)
    for key, value in model.key_encoder.state_dict().items():
        torch.testing.assert_close(value, saved[f"key_encoder.{key}"], rtol=0, atol=0)
    assert not any(p.requires_grad for p in model.key_encoder.parameters())
    if model.queue is not None:
        torch.testing.assert_close(model.queue, saved["queue"], rtol=0, atol=0)
    assert model.config.mlp_bias is True  # saved before the field existed: the tensors it has


SCRIPT = textwrap.dedent(
    """
    import sys

    class BlockSslhub:
        def find_spec(self, name, path=None, target=None):
            if name == "sslhub" or name.startswith("sslhub."):
                raise ModuleNotFoundError(name)

    sys.meta_path.insert(0, BlockSslhub())
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModel

    folder = sys.argv[1]
    expected = load_file(f"{folder}/expected.safetensors")
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    assert "transformers_modules" in type(model).__module__
    with torch.no_grad():
        torch.testing.assert_close(model(expected["probe"]).pooler_output, expected["pooler_output"])
    """
)


def test_old_folders_still_load_with_their_own_remote_code(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "PYTHON"))}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    for name in FOLDERS:
        run = subprocess.run(
            [sys.executable, "-I", "-c", SCRIPT, str(SAVED / name)],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, name + run.stderr[-3000:]

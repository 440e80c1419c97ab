"""Smoke runs of recipes/pretrain_colorization.py: final folder, sample grids, class weights, exact resume."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from sslhub.data import crop_flip_transform, decode_image, eval_transform, load_image_dataset
from sslhub.models.color import estimate_ab_prior, rebalancing_weights, rgb_to_lab
from sslhub.training import parse_args

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "pretrain_colorization.py"
SEED, PRIOR_IMAGES, SPLIT = 7, 64, "test[:128]"
TINY = [
    *("--dataset", "sample", "--split", SPLIT, "--seed", str(SEED)),
    *("--backbone", "test_resnet", "--image_size", "32", "--decoder_hidden_size", "16"),
    *("--batch_size", "32", "--num_workers", "0", "--log_steps", "1", "--learning_rate", "1e-3"),
    *("--prior_images", str(PRIOR_IMAGES), "--sample_images", "8"),
    *("--max_steps", "8", "--save_steps", "2", "--sample_steps", "4"),  # 4 steps per epoch: two epochs
]


def _env():
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error"}


def _command(output_dir: Path, *args: str) -> list[str]:
    return [sys.executable, str(RECIPE), *TINY, "--output_dir", str(output_dir), *args]


def _run(output_dir: Path, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        _command(output_dir, *args), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-5000:]
    return result


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    output_dir = tmp_path_factory.mktemp("straight")
    _run(output_dir)
    return output_dir


def test_final_folder_loads_as_the_colorization_encoder(straight):
    final = straight / "final"
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= {
        p.name for p in final.iterdir()
    }
    from transformers import AutoModel

    import sslhub  # noqa: F401

    model = AutoModel.from_pretrained(final)
    assert type(model).__name__ == "ColorizationModel" and model.config.backbone == "test_resnet"
    assert not any(name.startswith("decoder") for name in load_file(final / "model.safetensors"))
    card = (final / "README.md").read_text()
    assert "Colorful Image Colorization" in card
    assert "| Colour classes | 313 ab bins, 5-neighbour soft encoding" in card


def test_sample_grids_at_the_configured_steps(straight):
    grids = sorted((straight / "samples").iterdir(), key=lambda p: int(p.stem.split("_")[1]))
    assert [p.name for p in grids] == ["step_0.png", "step_4.png", "step_8.png"]
    cell = 32 * 3 + 2  # 32x32 images enlarged 3x, 2-pixel padding
    with Image.open(grids[-1]) as grid:
        assert grid.size == (8 * cell + 2, 3 * cell + 2)  # 8 images; grey, prediction, ground truth
        rows = torch.tensor(list(grid.convert("RGB").getdata()), dtype=torch.float32)
    rows = rows.reshape(3 * cell + 2, 8 * cell + 2, 3).permute(2, 0, 1)[None] / 255
    chroma = rgb_to_lab(rows)[0, 1:].abs().amax(0)  # (H, W)
    grey_row, truth_row = chroma[2 : cell + 2 - 2], chroma[2 * cell + 2 : 3 * cell]
    assert grey_row.max() < 1.0 and truth_row.max() > 10.0  # the first row has no colour, the last has


def test_checkpoint_holds_the_estimated_class_weights(straight):
    # The recipe's prior: a seeded subset of the training split, unaugmented, at the pixels the loss's
    # targets are subsampled to (every 4th pixel of the 32x32 image), with the model's grey mask.
    subset = load_image_dataset("sample", SPLIT).shuffle(seed=SEED).select(range(PRIOR_IMAGES))
    to_rgb = eval_transform(32, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 1.0)
    rgb = torch.stack([to_rgb(decode_image(row["image"])) for row in subset])[..., ::4, ::4]
    expected = rebalancing_weights(estimate_ab_prior([rgb], grey_mask="image"), mix=0.5, sigma=5.0).float()
    assert expected.max() > 2 * expected.min()  # far from uniform
    for checkpoint in ("step_6", "step_8"):
        weights = load_file(straight / "checkpoints" / checkpoint / "model.safetensors")["class_weights"]
        torch.testing.assert_close(weights, expected, rtol=1e-5, atol=1e-6)


def test_killed_and_resumed_run_ends_with_the_same_weights(straight, tmp_path):
    interrupted = tmp_path / "interrupted"
    process = subprocess.Popen(
        _command(interrupted), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while not (interrupted / "checkpoints" / "step_2").exists() and process.poll() is None:
        assert time.time() < deadline, "the run never reached step 2"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (interrupted / "final").exists(), "the run finished before it could be killed"

    result = _run(interrupted, "--resume", "latest")
    assert "resumed from" in result.stdout
    assert "ab prior from" not in result.stdout + result.stderr  # the weights come from the checkpoint
    for path in ("checkpoints/step_8/model.safetensors", "final/model.safetensors"):
        first, second = load_file(straight / path), load_file(interrupted / path)
        assert first.keys() == second.keys()
        for key in first:
            assert torch.equal(first[key], second[key]), (path, key)


def test_crop_flip_view_keeps_the_colours():
    image = Image.new("RGB", (40, 40), (200, 30, 90))
    view = crop_flip_transform(32, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), min_scale=0.2)
    first, again = view(image, seed=3), view(image, seed=3)
    assert first.shape == (3, 32, 32) and torch.equal(first, again)
    expected = torch.tensor([200, 30, 90]) / 255
    torch.testing.assert_close(first, expected[:, None, None].expand(3, 32, 32), atol=1 / 255, rtol=0)


@pytest.mark.parametrize("config", sorted((ROOT / "recipes" / "configs").glob("colorization_*.yaml")))
def test_shipped_configs_parse(config):
    sys.path.insert(0, str(RECIPE.parent))
    try:
        from pretrain_colorization import ColorizationArguments, colorization_config
    finally:
        sys.path.pop(0)
    args = parse_args(ColorizationArguments, ["--config", str(config)])
    assert args.batch_size > 0 and args.output_dir and args.optimizer in ("sgd", "lars", "adamw")
    config = colorization_config(args)  # every model setting is valid
    assert config.backbone == args.model["backbone"]


def test_command_line_no_is_a_string_for_string_settings():
    sys.path.insert(0, str(RECIPE.parent))
    try:
        from pretrain_colorization import ColorizationArguments
    finally:
        sys.path.pop(0)
    args = parse_args(ColorizationArguments, ["--mixed_precision", "no", "--channels_last", "false"])
    assert args.mixed_precision == "no" and args.channels_last is False


def test_sample_grids_fall_back_to_training_images_without_a_held_out_split(capsys):
    sys.path.insert(0, str(RECIPE.parent))
    try:
        from pretrain_colorization import ColorizationArguments, colorization_config, held_out_images
    finally:
        sys.path.pop(0)
    single_file = str(ROOT / "sslhub" / "sample" / "test.parquet")  # one parquet file: a "train" split only
    args = parse_args(
        ColorizationArguments, ["--dataset", single_file, "--model.image_size", "32", "--sample_images", "3"]
    )
    images = held_out_images(args, colorization_config(args))
    assert images.shape == (3, 3, 32, 32)
    assert "no held-out split" in capsys.readouterr().out

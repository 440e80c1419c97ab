"""The `sslhub` command, run in-process through `sslhub.cli.main` (and once through the entry point)."""

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image

import sslhub
from sslhub import MoCoModel
from sslhub.cli import main
from sslhub.embed import load_embeddings

from .helpers import tiny_moco_v2

COMMANDS = ("convert", "push", "card", "embed", "info", "zoo", "export-timm")
RESULT = dict(
    task_type="image-classification",
    dataset_name="CIFAR-10",
    dataset_type="uoft-cs/cifar10",
    dataset_split="test",
    metric_type="accuracy",
    metric_name="linear probe top-1",
    metric_value=0.61,
)


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli") / "tiny-moco"
    MoCoModel(tiny_moco_v2()).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_examples(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: sslhub {command}" in out and "examples:" in out and f"sslhub {command} " in out


def test_entry_point_is_declared():
    from importlib.metadata import entry_points

    import sslhub_cli

    (script,) = entry_points(group="console_scripts", name="sslhub")
    assert script.value == "sslhub_cli:main" and script.load() is sslhub_cli.main


@pytest.mark.parametrize(
    "argv", [["--help"], ["--version"], ["embed", "--help"], ["export", "onnx", "--help"]]
)
def test_help_and_version_answer_without_importing_torch(argv):
    code = f"import sys, sslhub_cli\ntry:\n    sslhub_cli.main({argv!r})\nexcept SystemExit as e:\n    assert e.code == 0\n"
    code += "assert 'torch' not in sys.modules, 'torch was imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    if argv == ["--version"]:
        assert result.stdout.strip() == f"sslhub {sslhub.__version__}"


def _folder_of_images(root):
    rng = np.random.default_rng(0)
    names = ["a.png", "b.jpg", "sub/c.png", "sub/d.webp", "e.JPEG"]
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (36, 40, 3), dtype=np.uint8)).save(root / name)
    # modes a plain convert("RGB") gets wrong: transparency (training puts it on white) and 16-bit grey
    rgba = rng.integers(0, 255, (32, 32, 4), dtype=np.uint8)
    rgba[..., 3] = 0
    Image.fromarray(rgba, "RGBA").save(root / "transparent.png")
    Image.fromarray(rng.integers(0, 65535, (32, 32), dtype=np.uint16)).save(root / "grey16.png")
    (root / "broken.jpg").write_bytes(b"not an image")
    (root / "empty.png").write_bytes(b"")
    return [*names, "transparent.png", "grey16.png"]


def test_embed_a_folder_of_images_as_training_decodes_them(model_folder, tmp_path, capsys):
    from sslhub.data import decode_image, eval_transform

    images = tmp_path / "images"
    names = _folder_of_images(images)
    output = tmp_path / "emb.safetensors"
    assert main(["embed", str(model_folder), str(images), "-o", str(output), "--batch-size", "3", "-q"]) == 0
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "empty.png" in err  # every unreadable file is named
    embeddings, ids = load_embeddings(output)
    assert sorted(ids) == sorted(names) and embeddings.shape == (len(names), 96)

    model = MoCoModel.from_pretrained(model_folder).eval()
    view = eval_transform(32, model.config.image_mean, model.config.image_std, model.config.crop_pct)
    for name in ("sub/c.png", "transparent.png", "grey16.png"):
        with torch.no_grad():
            expected = model(view(decode_image(str(images / name)))[None]).pooler_output[0]
        torch.testing.assert_close(embeddings[ids.index(name)], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("suffix", [".safetensors", ".parquet", ".npz"])
def test_embed_shards_resume_and_formats(model_folder, tmp_path, suffix):
    images = tmp_path / "images"
    names = _folder_of_images(images)
    whole = tmp_path / f"whole{suffix}"
    assert main(["embed", str(model_folder), str(images), "-o", str(whole), "-q", "--num-workers", "0"]) == 0
    sharded = tmp_path / f"sharded{suffix}"
    args = ["embed", str(model_folder), str(images), "-o", str(sharded), "-q", "--shard-size", "3"]
    assert main([*args, "--num-workers", "0"]) == 0
    files = sorted(tmp_path.glob(f"sharded-*{suffix}"))
    assert [f.name for f in files] == [f"sharded-{k:05d}-of-00003{suffix}" for k in range(3)]  # 9 rows
    expected, expected_ids = load_embeddings(whole)
    got, got_ids = load_embeddings(sharded)
    assert got_ids == expected_ids and sorted(got_ids) == sorted(names)
    torch.testing.assert_close(got, expected)

    # an interrupted run: the last file is missing, the second half-written; --resume rewrites only those
    kept = {files[0]: files[0].stat().st_mtime_ns}
    files[1].write_bytes(files[1].read_bytes()[:100])
    files[2].unlink()
    assert main([*args, "--num-workers", "0", "--resume"]) == 0
    assert all(f.stat().st_mtime_ns == mtime for f, mtime in kept.items())
    again, again_ids = load_embeddings(sharded)
    assert again_ids == expected_ids
    torch.testing.assert_close(again, expected)


def test_embed_reads_datasets_by_id_and_split(model_folder, tmp_path):
    output = tmp_path / "sample.parquet"
    args = ["embed", str(model_folder), "sample", "--split", "test[:10]", "-o", str(output), "-q"]
    assert main([*args, "--output-key", "projection", "--num-workers", "0"]) == 0
    embeddings, ids = load_embeddings(output)
    assert embeddings.shape == (10, 16)
    assert ids[0] == "train_airplane_0024.jpg" and len(set(ids)) == 10  # the file names the parquet stores


def test_card_then_info(model_folder, tmp_path, capsys):
    folder = tmp_path / "model"
    shutil.copytree(model_folder, folder)
    results = tmp_path / "results.json"
    results.write_text(json.dumps([RESULT]))
    copy = tmp_path / "model_cards" / "tiny-moco.md"
    args = ["card", str(folder), "--name", "tiny-moco", "--family", "MoCo v2", "--paper", "moco-v2"]
    args += ["--dataset", "uoft-cs/cifar10", "--reproduce", "make demo", "--results", str(results)]
    assert main([*args, "--copy-to", str(copy)]) == 0
    card = ModelCard.load(folder / "README.md")
    assert card.data.datasets == ["uoft-cs/cifar10"] and "make demo" in card.text
    assert copy.read_text() == (folder / "README.md").read_text()

    results.write_text(json.dumps([{**RESULT, "metric_value": 0.65}]))
    assert main(["card", str(folder), "--results", str(results)]) == 0
    assert ModelCard.load(folder / "README.md").data.eval_results[0].metric_value == 0.65
    assert main(["card", str(folder), "--name", "renamed", "--family", "MoCo v2"]) == 0
    card = ModelCard.load(folder / "README.md")
    assert card.data.model_name == "renamed" and card.data.eval_results[0].metric_value == 0.65
    # A rename keeps how the model was made: datasets, the reproduce command (and a recipe's table, below).
    assert card.data.datasets == ["uoft-cs/cifar10"] and "make demo" in card.text
    capsys.readouterr()

    assert main(["info", str(folder)]) == 0
    out = capsys.readouterr().out
    for expected in ("MoCoModel", "sslhub_moco", "test_resnet", "model.safetensors"):
        assert expected in out
    assert re.search(r"embedding size:\s+96\n", out)
    assert "CIFAR-10 [test] linear probe top-1: 0.65" in out
    assert main(["info", str(folder), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["num_parameters"] == sum(p.numel() for p in MoCoModel(tiny_moco_v2()).parameters())


def test_card_without_name_for_a_new_card_is_an_error(model_folder, tmp_path, capsys):
    folder = tmp_path / "model"
    shutil.copytree(model_folder, folder)
    assert main(["card", str(folder)]) == 1
    assert "--name and --family" in capsys.readouterr().err


def test_push_dry_run_and_offline_failure(model_folder, capsys):
    assert main(["push", str(model_folder), "--repo-id", "me/tiny", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would upload to" in out and "me/tiny:" in out and "model.safetensors" in out
    assert "modeling_moco.py" in out
    assert main(["push", str(model_folder), "--repo-id", "me/tiny"]) == 1  # the suite runs offline
    assert "unset HF_HUB_OFFLINE" in capsys.readouterr().err


def test_export_timm_refuses_small_stem_and_convert_reports_bad_files(tmp_path, capsys):
    folder = tmp_path / "cifar"
    MoCoModel(tiny_moco_v2(backbone="resnet18", small_input_stem=True)).save_pretrained(folder)
    assert main(["export-timm", str(folder), str(tmp_path / "timm")]) == 1
    assert "small_input_stem=True" in capsys.readouterr().err
    bad = tmp_path / "bad.pth.tar"
    bad.write_bytes(b"\x00" * 16)
    assert main(["convert", str(bad), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("sslhub convert: error:") and "weights_only=True" in err


def test_convert_and_export_timm_commands(tmp_path, capsys):
    import torchvision

    encoder = torchvision.models.resnet18(num_classes=16)
    torch.save(
        {
            "arch": "resnet18",
            "state_dict": {f"module.encoder_q.{k}": v for k, v in encoder.state_dict().items()},
        },
        tmp_path / "c.pth.tar",
    )
    assert (
        main(["convert", str(tmp_path / "c.pth.tar"), str(tmp_path / "moco-v1"), "--name", "MoCo v1 R18"])
        == 0
    )
    assert ModelCard.load(tmp_path / "moco-v1" / "README.md").data.model_name == "MoCo v1 R18"
    assert main(["export-timm", str(tmp_path / "moco-v1"), str(tmp_path / "timm")]) == 0
    config = json.loads((tmp_path / "timm" / "config.json").read_text())
    assert config["architecture"] == "resnet18" and config["num_features"] == 512


def test_card_rename_keeps_a_recipes_provenance_and_reads_evaluate_results(model_folder, tmp_path, capsys):
    from sslhub.hub import write_model_card

    folder = tmp_path / "model"
    shutil.copytree(model_folder, folder)
    table = {
        "Training data": "cifar10-sslhub-sample, split `train`",
        "Length": "475 steps (2.0 epochs) of 256 images",
    }
    write_model_card(
        folder,
        model_name="demo",
        family="MoCo v2",
        paper="moco-v2",
        base_model="my-org/teacher",
        reproduce_command="accelerate launch recipes/pretrain_moco.py --config recipes/configs/demo.yaml",
        training_summary=table,
    )
    assert (
        main(["card", str(folder), "--name", "moco-v2-demo", "--family", "MoCo v2", "--paper", "moco-v2"])
        == 0
    )
    card = ModelCard.load(folder / "README.md")
    assert card.data.model_name == "moco-v2-demo" and card.data.base_model == "my-org/teacher"
    assert "accelerate launch recipes/pretrain_moco.py --config recipes/configs/demo.yaml" in card.text
    for key, value in table.items():
        assert f"| {key} | {value} |" in card.text

    # recipes/evaluate.py's results.json merges as it is; any other JSON is refused with the expected format.
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"accuracy": 0.5, "model_index": [RESULT]}))
    assert main(["card", str(folder), "--results", str(results)]) == 0
    assert ModelCard.load(folder / "README.md").data.eval_results[0].metric_value == RESULT["metric_value"]
    results.write_text(json.dumps({"accuracy": 0.5}))
    assert main(["card", str(folder), "--results", str(results)]) == 1
    assert "expected a JSON list of results" in capsys.readouterr().err

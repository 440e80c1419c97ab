"""Publishing: loading a published folder every way (offline), remote code, timm export, describing a folder.

Model cards are tested in `test_cards.py`, pushing in `test_publish.py`.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import timm
import torch
from huggingface_hub import ModelCard
from huggingface_hub import constants as hf_constants
from PIL import Image
from transformers import AutoImageProcessor, AutoModel, pipeline

from sslhub import MoCoModel, hub
from sslhub.hub import folders, remote_code, timm_export

from .helpers import REPO_ID, fill_hub_cache, tiny_moco_v2, tiny_moco_v3


def test_loads_with_sslhub_installed(published):
    for cls in (MoCoModel, AutoModel):
        model = cls.from_pretrained(published["folder"]).eval()
        assert type(model) is MoCoModel  # the installed class, not the copied remote code
        with torch.no_grad():
            output = model(published["pixel_values"])
        torch.testing.assert_close(output.pooler_output, published["reference"].pooler_output)
        torch.testing.assert_close(output.projection, published["reference"].projection)


def test_remote_code_files_and_auto_map(published):
    config = json.loads((published["folder"] / "config.json").read_text())
    assert config["auto_map"]["AutoConfig"] == "configuration_moco.MoCoConfig"
    assert config["auto_map"]["AutoModel"] == "modeling_moco.MoCoModel"
    assert config["auto_map"]["AutoModelForPreTraining"] == "modeling_moco.MoCoForPreTraining"
    for name in (
        "modeling_moco.py",
        "configuration_moco.py",
        "backbones.py",
        "modeling_common.py",
        "heads.py",
    ):
        assert (published["folder"] / name).is_file(), name


def test_pipeline_returns_pooled_embedding(published):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8))
    extractor = pipeline("image-feature-extraction", model=str(published["folder"]))
    processor = AutoImageProcessor.from_pretrained(published["folder"])
    model = MoCoModel.from_pretrained(published["folder"]).eval()
    with torch.no_grad():
        output = model(**processor(images=image, return_tensors="pt"))
    # pool=True: the pooled embedding; without it, last_hidden_state, as for transformers' own models.
    for kwargs, expected in (({"pool": True}, output.pooler_output), ({}, output.last_hidden_state)):
        features = extractor(image, return_tensors=True, **kwargs)
        torch.testing.assert_close(features.reshape(expected.shape), expected)


def test_timm_export_loads_in_timm_and_transformers(published):
    config = json.loads((published["timm"] / "config.json").read_text())
    assert config["architecture"] == "test_resnet"
    assert "num_classes" not in config.get("model_args", {})  # would break transformers' TimmWrapper
    assert config["pretrained_cfg"]["mean"] == pytest.approx(list(tiny_moco_v2().image_mean))
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32]
    assert not list(published["timm"].glob("*.bin"))
    expected = published["reference"].pooler_output
    backbone = timm.create_model(f"local-dir:{published['timm']}", pretrained=True).eval()
    wrapper = AutoModel.from_pretrained(published["timm"]).eval()
    with torch.no_grad():
        torch.testing.assert_close(backbone(published["pixel_values"]), expected)
        torch.testing.assert_close(wrapper(published["pixel_values"]).pooler_output, expected)
    assert ModelCard.load(published["timm"] / "README.md").data.library_name == "timm"


def test_timm_export_of_a_vit_keeps_its_arguments(tmp_path):
    model = MoCoModel(tiny_moco_v3()).eval()
    timm_export.export_timm(model, tmp_path)
    x = torch.randn(2, 3, 32, 32)
    backbone = timm.create_model(f"local-dir:{tmp_path}", pretrained=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), model(x).pooler_output)


def test_timm_export_refuses_small_input_stem(tmp_path):
    model = MoCoModel(tiny_moco_v2(backbone="resnet18", small_input_stem=True))
    with pytest.raises(ValueError, match="small_input_stem=True.*timm.create_model cannot rebuild"):
        timm_export.export_timm(model, tmp_path / "timm")
    assert not (tmp_path / "timm").exists()


def test_hub_id_from_offline_cache_with_sslhub(published, tmp_path):
    assert hf_constants.HF_HUB_OFFLINE, "the suite runs with HF_HUB_OFFLINE=1 (tests/conftest.py)"
    fill_hub_cache(tmp_path, REPO_ID, published["folder"])
    for cls in (MoCoModel, AutoModel):
        model = cls.from_pretrained(REPO_ID, cache_dir=tmp_path).eval()
        assert type(model) is MoCoModel
        with torch.no_grad():
            pooled = model(published["pixel_values"]).pooler_output
        torch.testing.assert_close(pooled, published["reference"].pooler_output)


REMOTE_SCRIPT = textwrap.dedent(
    """
    import sys

    class BlockSslhub:  # the package is installed editable in the venv: make it unimportable
        def find_spec(self, name, path=None, target=None):
            if name == "sslhub" or name.startswith("sslhub."):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")

    sys.meta_path.insert(0, BlockSslhub())
    import timm, torch
    from transformers import AutoModel, pipeline

    try:
        import sslhub  # noqa: F401
        raise SystemExit("sslhub is importable")
    except ModuleNotFoundError:
        pass
    folder, repo_id, out = sys.argv[1:4]
    x = torch.load(f"{out}/pixel_values.pt")
    results = {}
    with torch.no_grad():
        for key, source in (("folder", folder), ("hub_id", repo_id)):
            model = AutoModel.from_pretrained(source, trust_remote_code=True).eval()
            assert type(model).__name__ == "MoCoModel" and "transformers_modules" in type(model).__module__
            results[key] = model(x).pooler_output
        results["timm_hub_id"] = timm.create_model(f"hf-hub:{repo_id}-timm", pretrained=True).eval()(x)
        results["timm_wrapper_hub_id"] = AutoModel.from_pretrained(f"{repo_id}-timm").eval()(x).pooler_output
    extractor = pipeline("image-feature-extraction", model=repo_id, trust_remote_code=True)
    assert extractor.model.__class__.__name__ == "MoCoModel"
    torch.save(results, f"{out}/results.pt")
    assert not any(name == "sslhub" or name.startswith("sslhub.") for name in sys.modules)
    """
)


def test_loads_without_sslhub_from_folder_and_offline_hub_ids(published, tmp_path):
    cache = tmp_path / "hub"
    fill_hub_cache(cache, REPO_ID, published["folder"])
    fill_hub_cache(cache, f"{REPO_ID}-timm", published["timm"])
    shutil.copyfile(published["root"] / "pixel_values.pt", tmp_path / "pixel_values.pt")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "PYTHON"))}
    env.update(HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    run = subprocess.run(
        [sys.executable, "-I", "-c", REMOTE_SCRIPT, str(published["folder"]), REPO_ID, str(tmp_path)],
        env=env,
        cwd=tmp_path,  # not the repository root, whose sslhub/ folder would be importable
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    results = torch.load(tmp_path / "results.pt")
    assert set(results) == {"folder", "hub_id", "timm_hub_id", "timm_wrapper_hub_id"}
    for value in results.values():
        torch.testing.assert_close(value, published["reference"].pooler_output)


def test_describe_model_of_a_hub_id_and_a_timm_folder(published, tmp_path, monkeypatch):
    fill_hub_cache(tmp_path, REPO_ID, published["folder"])
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    info = folders.describe_model(REPO_ID)
    assert info["model_class"] == "MoCoModel" and info["backbone"] == "test_resnet"
    assert info["embedding_size"] == 96 and info["outputs"]["projection"] == (16,)
    assert info["num_parameters"] == sum(p.numel() for p in MoCoModel(tiny_moco_v2()).parameters())
    assert info["remote_code"] is True
    timm_info = folders.describe_model(published["timm"])
    assert timm_info["format"] == "timm" and timm_info["embedding_size"] == 96


def test_timm_export_refuses_non_rgb_backbones(tmp_path):
    from sslhub import ColorizationConfig, ColorizationModel

    model = ColorizationModel(ColorizationConfig(backbone="test_resnet", image_size=32))
    with pytest.raises(ValueError, match="1-channel inputs"):
        timm_export.export_timm(model, tmp_path / "timm")


def test_every_registered_family_can_ship_remote_code():
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    families = [CONFIG_MAPPING[name] for name in CONFIG_MAPPING if name.startswith("sslhub_")]
    assert len(families) >= 1
    for config_class in families:
        files, auto_map = remote_code.remote_code_files(config_class)  # raises on a `sslhub` / `..` import
        assert auto_map["AutoConfig"].endswith(config_class.__name__) and "AutoModel" in auto_map
        assert {"backbones.py", "modeling_common.py", "configuration_common.py"} <= set(files)


def test_public_names_stay_importable_from_sslhub_hub():
    for name in hub.__all__:
        assert getattr(hub, name) is not None, name
    with pytest.raises(AttributeError):
        hub.IMAGE_SUFFIXES  # noqa: B018  (one extension list: `sslhub.data.IMAGE_EXTENSIONS`)

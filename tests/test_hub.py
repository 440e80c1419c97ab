"""Publishing: loading a published folder every way (offline), model cards, pushing, timm export."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from huggingface_hub import ModelCard
from huggingface_hub import constants as hf_constants
from PIL import Image
from transformers import AutoImageProcessor, AutoModel, pipeline

from sslhub import MoCoModel, hub

from .helpers import fill_hub_cache, tiny_moco_v2, tiny_moco_v3

REPO_ID = "sslhub-test/tiny-moco"

KNN = dict(
    task_type="image-classification",
    dataset_name="CIFAR-10",
    dataset_type="uoft-cs/cifar10",
    dataset_split="test",
    metric_type="accuracy",
    metric_name="kNN top-1 (k=200, T=0.1)",
    metric_value=0.412,
)
LINEAR = {**KNN, "metric_name": "linear probe top-1", "metric_value": 0.503}


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A tiny MoCo v2 model saved with remote code, its timm export, and reference embeddings."""
    root = tmp_path_factory.mktemp("published")
    model = MoCoModel(tiny_moco_v2()).eval()
    # Non-trivial BN statistics, so that a wrong eval/train mode or a dropped buffer shows.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    folder = root / "model"
    model.save_pretrained(folder)
    hub.add_remote_code(folder)
    hub.export_timm(model, root / "timm", source_repo_id=REPO_ID)
    pixel_values = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = model(pixel_values)
    torch.save(pixel_values, root / "pixel_values.pt")
    return dict(root=root, folder=folder, timm=root / "timm", pixel_values=pixel_values, reference=reference)


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
        expected = model(**processor(images=image, return_tensors="pt")).pooler_output
    for kwargs in ({}, {"pool": True}):
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
    hub.export_timm(model, tmp_path)
    x = torch.randn(2, 3, 32, 32)
    backbone = timm.create_model(f"local-dir:{tmp_path}", pretrained=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), model(x).pooler_output)


def test_timm_export_refuses_small_input_stem(tmp_path):
    model = MoCoModel(tiny_moco_v2(backbone="resnet18", small_input_stem=True))
    with pytest.raises(ValueError, match="small_input_stem=True.*timm.create_model cannot rebuild"):
        hub.export_timm(model, tmp_path / "timm")
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


# ----------------------------------------------------------------------------------------- cards


def test_write_model_card_metadata_and_prose(published, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(published["folder"], folder)
    path = hub.write_model_card(
        folder,
        model_name="resnet18-student",
        family="SEED distillation",
        paper="seed",
        base_model="sslhub/moco-v2-resnet50",
        datasets=["uoft-cs/cifar10"],
        reproduce_command="accelerate launch recipes/distill.py --config recipes/configs/seed.yaml",
        training_summary={"epochs": 200, "batch size": 256, "commit": "abc1234"},
        eval_results=[KNN, LINEAR],
    )
    card = ModelCard.load(path)
    data = card.data
    assert data.library_name == "transformers"
    assert data.license == "apache-2.0"
    assert data.pipeline_tag == "image-feature-extraction"
    assert data.base_model == "sslhub/moco-v2-resnet50"
    assert data.datasets == ["uoft-cs/cifar10"]
    assert {"sslhub", "self-supervised-learning", "seed"} <= set(data.tags)
    assert data.model_name == "resnet18-student"
    assert {r.metric_name: r.metric_value for r in data.eval_results} == {
        KNN["metric_name"]: 0.412,
        LINEAR["metric_name"]: 0.503,
    }
    text = card.text
    assert "accelerate launch recipes/distill.py --config recipes/configs/seed.yaml" in text
    assert "https://arxiv.org/abs/2101.04731" in text
    assert "trust_remote_code=True" in text and "image-feature-extraction" in text
    assert "| kNN top-1 (k=200, T=0.1) | 41.20% |" in text
    assert "| linear probe top-1 | 50.30% |" in text
    assert "| test_resnet |" not in text and "`test_resnet`" in text
    assert "| 96-d pooled" not in text and "96-d pooled backbone feature" in text
    assert "| batch size | 256 |" in text
    assert "Limitations" in text


def test_update_card_eval_results_creates_and_merges(published, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(published["folder"], folder)
    hub.update_card_eval_results(folder, [KNN])
    card = ModelCard.load(folder / "README.md")
    assert card.data.model_name == "model"
    assert "arxiv.org/abs/2003.04297" in card.text  # MoCo v2 paper, from the config
    hub.update_card_eval_results(folder, [{**KNN, "metric_value": 0.47}, LINEAR])
    card = ModelCard.load(folder / "README.md")
    results = {r.metric_name: r.metric_value for r in card.data.eval_results}
    assert results == {KNN["metric_name"]: 0.47, LINEAR["metric_name"]: 0.503}
    assert "47.00%" in card.text and "41.20%" not in card.text and "50.30%" in card.text
    assert card.text.count("<!-- sslhub:eval-results:start -->") == 1


def test_update_card_eval_results_appends_to_a_handwritten_card(published, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(published["folder"], folder)
    (folder / "README.md").write_text("---\nlicense: mit\n---\n# My model\n\nHand-written.\n")
    hub.update_card_eval_results(folder, [LINEAR])
    card = ModelCard.load(folder / "README.md")
    assert card.data.license == "mit" and "Hand-written." in card.text
    assert "| linear probe top-1 | 50.30% |" in card.text


@pytest.mark.parametrize(
    "result, message",
    [
        ({**KNN, "metric_value": 41.2}, "fraction in \\[0, 1\\]"),
        ({k: v for k, v in KNN.items() if k != "dataset_type"}, "missing keys \\['dataset_type'\\]"),
        ({**KNN, "top_k": 200}, "unknown keys \\['top_k'\\]"),
    ],
)
def test_eval_results_are_checked(published, tmp_path, result, message):
    with pytest.raises(ValueError, match=message):
        hub.merge_eval_results([], [result])


# ----------------------------------------------------------------------------------------- push


class FakeHfApi:
    """Records what `push_to_hub` would send to the Hub."""

    calls: list = []

    def __init__(self, endpoint=None, token=None):
        FakeHfApi.calls.append(("init", endpoint, token))

    def whoami(self):
        return {"name": "me"}

    def create_repo(self, repo_id, private=False, exist_ok=False, repo_type=None):
        FakeHfApi.calls.append(("create_repo", repo_id, private))

    def create_commit(self, repo_id, operations, commit_message, repo_type=None):
        contents = {}
        for op in operations:
            source = op.path_or_fileobj
            contents[op.path_in_repo] = Path(source).read_bytes() if isinstance(source, str) else source
        FakeHfApi.calls.append(("create_commit", repo_id, contents))


def _folder_with_extras(published, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(published["folder"], folder, ignore=shutil.ignore_patterns("*.py"))
    config = json.loads((folder / "config.json").read_text())
    del config["auto_map"]
    (folder / "config.json").write_text(json.dumps(config))
    torch.save({"w": torch.zeros(1)}, folder / "pytorch_model.bin")
    (folder / "checkpoints").mkdir()
    return folder


def test_push_dry_run_lists_safetensors_only(published, tmp_path):
    folder = _folder_with_extras(published, tmp_path)
    before = sorted(p.name for p in folder.iterdir())
    plan = hub.push_to_hub(folder, "me/tiny", dry_run=True, include_timm=True)
    assert {
        "model.safetensors",
        "config.json",
        "preprocessor_config.json",
        "README.md",
        "modeling_moco.py",
    } <= set(plan["me/tiny"])
    assert not any(name.endswith((".bin", ".pt")) for name in plan["me/tiny"])
    assert plan["me/tiny-timm"] == ["README.md", "config.json", "model.safetensors"]
    assert any(line.startswith("pytorch_model.bin") for line in plan["skipped"])
    assert any(line.startswith("checkpoints/") for line in plan["skipped"])
    assert sorted(p.name for p in folder.iterdir()) == before  # the folder is not modified


def test_push_uploads_through_hf_endpoint(published, tmp_path, monkeypatch):
    import huggingface_hub

    folder = _folder_with_extras(published, tmp_path)
    hub.write_model_card(folder, model_name="tiny", family="MoCo v2", paper="moco-v2")
    FakeHfApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    monkeypatch.setattr(hub.publish, "check_can_push", lambda token=None: "hf_token")
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.example.com/")
    hub.push_to_hub(folder, "me/tiny", private=True, include_timm=True)
    assert FakeHfApi.calls[0] == ("init", "https://hub.example.com", "hf_token")
    assert ("create_repo", "me/tiny", True) in FakeHfApi.calls
    assert ("create_repo", "me/tiny-timm", True) in FakeHfApi.calls
    commits = {call[1]: call[2] for call in FakeHfApi.calls if call[0] == "create_commit"}
    model_files = commits["me/tiny"]
    assert "pytorch_model.bin" not in model_files
    assert json.loads(model_files["config.json"])["auto_map"]["AutoModel"] == "modeling_moco.MoCoModel"
    readme = model_files["README.md"].decode()
    assert hub.REPO_ID_PLACEHOLDER not in readme
    assert 'AutoModel.from_pretrained("me/tiny", trust_remote_code=True)' in readme
    assert 'timm.create_model("hf-hub:me/tiny-timm", pretrained=True)' in readme
    assert "num_classes" not in json.loads(commits["me/tiny-timm"]["config.json"])["model_args"]

    FakeHfApi.calls = []
    assert "me/bare" in hub.push_to_hub(folder, "bare")  # a bare name goes to the token owner's namespace
    assert ("create_repo", "me/bare", False) in FakeHfApi.calls


def test_push_fails_fast_offline(published):
    with pytest.raises(hub.HubError, match="HF_HUB_OFFLINE=1 is set.*unset HF_HUB_OFFLINE"):
        hub.push_to_hub(published["folder"], "me/tiny")


def test_push_fails_fast_without_token(published, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(hub.HubError, match="hf auth login.*HF_TOKEN"):
        hub.push_to_hub(published["folder"], "me/tiny")


def test_push_fails_fast_when_the_hub_is_unreachable(published, monkeypatch):
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    start = time.monotonic()
    with pytest.raises(hub.HubError, match="Cannot reach the Hub at http://127.0.0.1:9"):
        hub.push_to_hub(published["folder"], "me/tiny", token="hf_dummy")
    assert time.monotonic() - start < 10


def _live_hub_available() -> bool:
    from huggingface_hub import get_token

    if hf_constants.HF_HUB_OFFLINE or not get_token():
        return False
    try:
        hub.check_can_push(timeout=3)
        return True
    except hub.HubError:
        return False


@pytest.mark.hub
def test_push_to_the_live_hub_and_load_back(published):
    if not _live_hub_available():
        pytest.skip("needs the Hub, a write token and HF_HUB_OFFLINE unset")
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub.hub_endpoint())
    repo_id = f"{api.whoami()['name']}/sslhub-test-{uuid.uuid4().hex[:8]}"
    try:
        hub.push_to_hub(published["folder"], repo_id, private=True)
        model = AutoModel.from_pretrained(repo_id, trust_remote_code=True).eval()
        with torch.no_grad():
            pooled = model(published["pixel_values"]).pooler_output
        torch.testing.assert_close(pooled, published["reference"].pooler_output)
    finally:
        api.delete_repo(repo_id, missing_ok=True)


def test_describe_model_of_a_hub_id_and_a_timm_folder(published, tmp_path, monkeypatch):
    fill_hub_cache(tmp_path, REPO_ID, published["folder"])
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    info = hub.describe_model(REPO_ID)
    assert info["model_class"] == "MoCoModel" and info["backbone"] == "test_resnet"
    assert info["embedding_size"] == 96 and info["outputs"]["projection"] == (16,)
    assert info["num_parameters"] == sum(p.numel() for p in MoCoModel(tiny_moco_v2()).parameters())
    assert info["remote_code"] is True
    timm_info = hub.describe_model(published["timm"])
    assert timm_info["format"] == "timm" and timm_info["embedding_size"] == 96


def test_timm_export_refuses_non_rgb_backbones(tmp_path):
    from sslhub import ColorizationConfig, ColorizationModel

    model = ColorizationModel(ColorizationConfig(backbone="test_resnet", image_size=32))
    with pytest.raises(ValueError, match="1-channel inputs"):
        hub.export_timm(model, tmp_path / "timm")


def test_every_registered_family_can_ship_remote_code():
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    families = [CONFIG_MAPPING[name] for name in CONFIG_MAPPING if name.startswith("sslhub_")]
    assert len(families) >= 1
    for config_class in families:
        files, auto_map = hub.remote_code_files(config_class)  # raises on a `sslhub` / `..` import
        assert auto_map["AutoConfig"].endswith(config_class.__name__) and "AutoModel" in auto_map
        assert {"backbones.py", "modeling_common.py", "configuration_common.py"} <= set(files)

"""Pushing: the upload plan (safetensors only, remote code, card), HF_ENDPOINT, failing fast, the live Hub."""

import json
import shutil
import time
import uuid
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants as hf_constants
from transformers import AutoModel

from sslhub.hub import cards, publish


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
    plan = publish.push_to_hub(folder, "me/tiny", dry_run=True, include_timm=True)
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
    cards.write_model_card(folder, model_name="tiny", family="MoCo v2", paper="moco-v2")
    FakeHfApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    monkeypatch.setattr(publish, "check_can_push", lambda token=None: "hf_token")
    monkeypatch.setenv("HF_ENDPOINT", "https://publish.example.com/")
    publish.push_to_hub(folder, "me/tiny", private=True, include_timm=True)
    assert FakeHfApi.calls[0] == ("init", "https://publish.example.com", "hf_token")
    assert ("create_repo", "me/tiny", True) in FakeHfApi.calls
    assert ("create_repo", "me/tiny-timm", True) in FakeHfApi.calls
    commits = {call[1]: call[2] for call in FakeHfApi.calls if call[0] == "create_commit"}
    model_files = commits["me/tiny"]
    assert "pytorch_model.bin" not in model_files
    assert json.loads(model_files["config.json"])["auto_map"]["AutoModel"] == "modeling_moco.MoCoModel"
    readme = model_files["README.md"].decode()
    assert cards.REPO_ID_PLACEHOLDER not in readme
    assert 'AutoModel.from_pretrained("me/tiny", trust_remote_code=True)' in readme
    assert 'timm.create_model("hf-hub:me/tiny-timm", pretrained=True)' in readme
    assert "num_classes" not in json.loads(commits["me/tiny-timm"]["config.json"])["model_args"]

    FakeHfApi.calls = []
    assert "me/bare" in publish.push_to_hub(folder, "bare")  # a bare name goes to the token owner's namespace
    assert ("create_repo", "me/bare", False) in FakeHfApi.calls


@pytest.mark.parametrize(
    "repo_id, timm_repo_id, message",
    [
        ("a/b/c", None, "invalid Hub repository id 'a/b/c'"),
        ("me/bad name", None, "invalid Hub repository id 'me/bad name'"),
        ("me/x--y", None, "invalid Hub repository id"),
        # The main repository would be pushed, its card linking to a timm repository the Hub refuses.
        ("me/" + "x" * 92, None, "-timm.*maximum length is 96"),
        ("me/tiny", "me/tiny timm", "invalid Hub repository id 'me/tiny timm'"),
    ],
)
def test_invalid_repo_ids_are_refused_before_anything_even_in_a_dry_run(
    published, repo_id, timm_repo_id, message
):
    with pytest.raises(publish.HubError, match=message):
        publish.push_to_hub(
            published["folder"], repo_id, dry_run=True, include_timm=True, timm_repo_id=timm_repo_id
        )


def test_push_fails_fast_offline(published):
    with pytest.raises(publish.HubError, match="HF_HUB_OFFLINE=1 is set.*unset HF_HUB_OFFLINE"):
        publish.push_to_hub(published["folder"], "me/tiny")


def test_push_fails_fast_without_token(published, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(publish.HubError, match="hf auth login.*HF_TOKEN"):
        publish.push_to_hub(published["folder"], "me/tiny")


def test_push_fails_fast_when_the_hub_is_unreachable(published, monkeypatch):
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    start = time.monotonic()
    with pytest.raises(publish.HubError, match="Cannot reach the Hub at http://127.0.0.1:9"):
        publish.push_to_hub(published["folder"], "me/tiny", token="hf_dummy")
    assert time.monotonic() - start < 10


def test_push_fails_fast_when_the_hub_accepts_but_never_answers(published, monkeypatch):
    import socket

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # straight to the local server, whatever proxy is set
    with socket.socket() as silent:  # the kernel completes the handshake; nothing ever reads or answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
        start = time.monotonic()
        with pytest.raises(publish.HubError, match="accepted a connection but gave no answer within 1 s"):
            publish.check_can_push(token="hf_dummy", timeout=1)
        assert time.monotonic() - start < 10


def test_a_hub_that_answers_passes_the_check_even_with_an_error_status(monkeypatch):
    import http.server
    import threading

    class Unauthorized(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # what the Hub answers to a request without a token
            self.send_response(401)
            self.end_headers()

        def log_message(self, *args):
            pass

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with http.server.HTTPServer(("127.0.0.1", 0), Unauthorized) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
        assert publish.check_can_push(token="hf_dummy", timeout=5) == "hf_dummy"
        server.shutdown()


def _live_hub_available() -> bool:
    from huggingface_hub import get_token

    if hf_constants.HF_HUB_OFFLINE or not get_token():
        return False
    try:
        publish.check_can_push(timeout=3)
        return True
    except publish.HubError:
        return False


@pytest.mark.hub
def test_push_to_the_live_hub_and_load_back(published):
    if not _live_hub_available():
        pytest.skip("needs the Hub, a write token and HF_HUB_OFFLINE unset")
    from huggingface_hub import HfApi

    api = HfApi(endpoint=publish.hub_endpoint())
    repo_id = f"{api.whoami()['name']}/sslhub-test-{uuid.uuid4().hex[:8]}"
    try:
        publish.push_to_hub(published["folder"], repo_id, private=True)
        model = AutoModel.from_pretrained(repo_id, trust_remote_code=True).eval()
        with torch.no_grad():
            pooled = model(published["pixel_values"]).pooler_output
        torch.testing.assert_close(pooled, published["reference"].pooler_output)
    finally:
        api.delete_repo(repo_id, missing_ok=True)


def test_a_training_checkpoint_is_not_pushed(published, tmp_path):
    # A recipe's checkpoint loads with from_pretrained, but it is the training model with its optimizer state:
    # what a reader of the Hub wants is the final inference folder.
    checkpoint = tmp_path / "step_4"
    shutil.copytree(published["folder"], checkpoint)
    (checkpoint / "optimizer.bin").write_bytes(b"state")
    with pytest.raises(ValueError, match="is a training checkpoint.*output_dir/final"):
        publish.push_to_hub(checkpoint, "me/tiny", dry_run=True)

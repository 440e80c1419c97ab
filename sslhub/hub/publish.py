"""Publishing: checking that the Hub can be written to, planning an upload and pushing a model folder.

A push sends the weights (safetensors only), the config with `auto_map` and the modeling code, the image
processor and the card, and optionally the backbone in timm's format to a second repository.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from huggingface_hub import ModelCard
from huggingface_hub import constants as hf_constants
from transformers import AutoModel

from .cards import FAMILIES, REPO_ID_PLACEHOLDER, card_with_timm_section, default_paper, write_model_card
from .folders import load_sslhub_config
from .remote_code import config_with_auto_map, remote_code_files
from .timm_export import export_timm

_UPLOAD_SUFFIXES = (".json", ".safetensors", ".md", ".png", ".jpg", ".jpeg", ".svg", ".txt", ".yaml")
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".tar", ".pkl", ".pickle", ".npy", ".npz")


class HubError(RuntimeError):
    """Pushing cannot proceed (no token, offline, Hub unreachable); the message says what to do."""


def hub_endpoint() -> str:
    """The Hub URL in use: `HF_ENDPOINT` when set, else huggingface_hub's default."""
    return (os.environ.get("HF_ENDPOINT") or hf_constants.ENDPOINT).rstrip("/")


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def check_repo_id(repo_id: str) -> None:
    """Raise a `HubError` unless `repo_id` (`"org/name"` or a bare name) is one the Hub accepts."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)  # characters, form, and names of at most 96 characters
    except HFValidationError as error:
        raise HubError(f"invalid Hub repository id {repo_id!r}: {error}") from None


def check_can_push(
    token: str | None = None,
    timeout: float = 5.0,
    alternative: str = "add --dry-run to only list what would be uploaded",
) -> str:
    """Fail fast, with what to do, unless the Hub can be written to; return the token to use.

    Args:
        token: a write token; defaults to the logged-in one (`hf auth login` / `HF_TOKEN`).
        timeout: seconds to wait for the endpoint to accept a connection.
        alternative: what the messages offer instead of pushing now.

    Raises:
        HubError: offline mode is on, no token is found, or the endpoint does not answer within `timeout`.
    """
    if hf_constants.HF_HUB_OFFLINE or _env_true("HF_HUB_OFFLINE"):
        raise HubError(
            "HF_HUB_OFFLINE=1 is set, and pushing needs the network: run `unset HF_HUB_OFFLINE` (or set it "
            f"to 0) and try again, or {alternative}."
        )
    from huggingface_hub import get_token

    token = token or get_token()
    if not token:
        raise HubError(
            "No Hugging Face token found: log in with `hf auth login`, or set HF_TOKEN to a token with write "
            "access (https://huggingface.co/settings/tokens), or pass --token."
        )
    endpoint = hub_endpoint()
    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError as error:
        raise HubError(
            f"Cannot reach the Hub at {endpoint} ({error}). Check the network connection (and HF_ENDPOINT "
            f"if you use a mirror), or {alternative}."
        ) from error
    try:  # a connection that opens is not enough: a proxy or firewall may accept it and never answer
        urllib.request.urlopen(f"{endpoint}/api/whoami-v2", timeout=timeout).close()
    except urllib.error.HTTPError:
        pass  # it answered (401 without the token in this request): the Hub is there
    except OSError as error:  # a timeout, or no HTTP answer at all
        raise HubError(
            f"The Hub at {endpoint} accepted a connection but gave no answer within {timeout:g} s ({error}). "
            f"Check the network (a proxy or firewall?) and HF_ENDPOINT, or {alternative}."
        ) from error
    return token


def _plan_model_upload(folder: Path, repo_id: str) -> tuple[dict[str, Path | bytes], list[str]]:
    """Files to upload (path in repo -> local path or content) and the skipped files with the reason."""
    config = load_sslhub_config(folder)
    if not any(p.suffix == ".safetensors" for p in folder.iterdir()):
        raise ValueError(f"{folder} has no .safetensors weights: save the model with `save_pretrained` first")
    if (folder / "optimizer.bin").is_file() or (folder / "optimizer.safetensors").is_file():
        raise ValueError(
            f"{folder} is a training checkpoint (the training model, its optimizer and random states): push the "
            "run's final folder (output_dir/final), or save the inference model first "
            "(`AutoModel.from_pretrained(checkpoint).save_pretrained(folder)`)"
        )
    uploads: dict[str, Path | bytes] = {}
    skipped = []
    for path in sorted(folder.iterdir()):
        if path.is_dir():
            skipped.append(f"{path.name}/ (folder)")
        elif path.suffix in _PICKLE_SUFFIXES:
            skipped.append(f"{path.name} (pickle-based weights: only safetensors are uploaded)")
        elif path.suffix in _UPLOAD_SUFFIXES:
            uploads[path.name] = path
        elif path.suffix != ".py":  # the modeling code is taken from the installed package below
            skipped.append(f"{path.name} (not a model file)")
    files, auto_map = remote_code_files(config)
    uploads.update(files)
    uploads["config.json"] = config_with_auto_map(folder, auto_map).encode()
    if "README.md" not in uploads:
        family = FAMILIES.get(config.model_type, config.model_type)
        with tempfile.TemporaryDirectory() as tmp:
            for name in ("config.json", "preprocessor_config.json"):
                if (folder / name).is_file():
                    shutil.copyfile(folder / name, Path(tmp) / name)
            write_model_card(
                tmp, model_name=repo_id.split("/")[-1], family=family, paper=default_paper(config)
            )
            uploads["README.md"] = (Path(tmp) / "README.md").read_bytes()
    readme = uploads["README.md"]
    text = readme.decode() if isinstance(readme, bytes) else readme.read_text(encoding="utf-8")
    uploads["README.md"] = text.replace(REPO_ID_PLACEHOLDER, repo_id).encode()
    return uploads, skipped


def push_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    include_timm: bool = False,
    timm_repo_id: str | None = None,
    dry_run: bool = False,
    commit_message: str = "Upload sslhub model",
) -> dict[str, list[str]]:
    """Publish a saved model folder to the Hub: weights (safetensors only), config, image processor, card.

    The upload also carries the modeling code (`auto_map`), so `trust_remote_code=True` loads the
    repository without sslhub; a missing card is generated and the card's `<org>/<model-name>`
    placeholder becomes `repo_id`. The folder itself is not modified. `HF_ENDPOINT` is honoured.

    Args:
        folder: the model folder (`save_pretrained` output, optionally with a `README.md`).
        repo_id: `"org/name"` (a bare name goes to the token owner's namespace); created if missing.
        private: create the repository private.
        token: a write token; defaults to the logged-in one (`hf auth login` / `HF_TOKEN`).
        include_timm: also publish the backbone in timm's format as `timm_repo_id`.
        timm_repo_id: defaults to `f"{repo_id}-timm"`.
        dry_run: only return what would be uploaded; needs neither a token nor the network.
        commit_message: the commit message.

    Returns:
        Repository id -> paths uploaded (or that would be, with `dry_run`); skipped local files are listed
        under the key `"skipped"`.

    Raises:
        HubError: an invalid repository id, no token, offline mode or an unreachable Hub (checked before
            anything is built).
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    folder = Path(folder)
    check_repo_id(repo_id)  # both repositories' ids, before anything is built or sent
    if include_timm:
        check_repo_id(timm_repo_id or f"{repo_id}-timm")
    if not dry_run:
        token = check_can_push(token)
    api = HfApi(endpoint=hub_endpoint(), token=token)
    if "/" not in repo_id and not dry_run:  # a bare name goes to the token owner's namespace
        repo_id = f"{api.whoami()['name']}/{repo_id}"
    uploads, skipped = _plan_model_upload(folder, repo_id)
    plan = {repo_id: uploads}
    with tempfile.TemporaryDirectory() as tmp:
        if include_timm:
            timm_repo_id = timm_repo_id or f"{repo_id}-timm"
            card_text = plan[repo_id]["README.md"].decode()
            license = ModelCard(card_text).data.license or "apache-2.0"
            model = AutoModel.from_pretrained(folder)
            timm_dir = export_timm(
                model, Path(tmp) / "timm", license=license, source_repo_id=repo_id, repo_id=timm_repo_id
            )
            plan[timm_repo_id] = {p.name: p for p in sorted(timm_dir.iterdir())}
            with_timm = card_with_timm_section(card_text, timm_repo_id)
            if with_timm is not None:
                plan[repo_id]["README.md"] = with_timm.encode()
        summary = {repo: sorted(files) for repo, files in plan.items()} | {"skipped": skipped}
        if dry_run:
            return summary
        for repo, files in plan.items():
            api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
            operations = [
                CommitOperationAdd(
                    path_in_repo=name, path_or_fileobj=str(source) if isinstance(source, Path) else source
                )
                for name, source in files.items()
            ]
            api.create_commit(repo, operations=operations, commit_message=commit_message, repo_type="model")
    return summary

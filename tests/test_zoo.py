"""The model zoo: the catalogue's integrity, the download path (against a local HTTP server), the README table.

The server runs on 127.0.0.1 and serves tiny checkpoints in the official layouts (`tests/checkpoints.py`)
at the official URL paths; `SSLHUB_ZOO_MIRROR` points the zoo at it. It answers `Range` requests, and can
drop the connection half-way through a file or ignore `Range`.
"""

import dataclasses
import hashlib
import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import torch
from huggingface_hub import ModelCard
from huggingface_hub import constants as hf_constants

import sslhub
from sslhub import MoCoModel
from sslhub.cli import main
from sslhub.hub import DownloadError, download_file, zoo
from sslhub.hub.convert import read_checkpoint

from .checkpoints import TINY_BACKBONE_KWARGS, official_checkpoint
from .helpers import REPO_ID, fill_hub_cache

ROOT = Path(__file__).resolve().parents[1]
LAYOUTS = ("moco_v1", "moco_v2", "moco_v3_resnet", "moco_v3_vit")


class FileServer(ThreadingHTTPServer):
    """Serves `files` (URL path -> bytes); logs each request's path and Range header."""

    def __init__(self, files: dict[str, bytes]):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files = files
        self.requests: list[tuple[str, str | None]] = []
        self.drop_once: set[str] = set()  # send half of these files, then close the connection
        self.ignore_range = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output clean
        pass

    def do_GET(self):
        server: FileServer = self.server
        range_header = self.headers.get("Range")
        server.requests.append((self.path, range_header))
        data = server.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = 0
        if range_header and not server.ignore_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", range_header).group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        if self.path in server.drop_once:
            server.drop_once.discard(self.path)
            body = body[: len(body) // 2]
        self.wfile.write(body)
        self.close_connection = True


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    """One tiny official-layout checkpoint per layout: {layout: (bytes, encoder)}."""
    root = tmp_path_factory.mktemp("official")
    out = {}
    for layout in LAYOUTS:
        path = root / f"{layout}.pth.tar"
        encoder = official_checkpoint(layout, path)
        out[layout] = (path.read_bytes(), encoder)
    return out


@pytest.fixture(scope="module")
def server(fixtures):
    """Every official entry's URL path serves the tiny checkpoint of its layout."""
    files = {urlsplit(e.url).path: fixtures[e.layout][0] for e in zoo.MODELS if e.url}
    server = FileServer(files)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def online(monkeypatch, tmp_path, server):
    """The zoo online, its cache in `tmp_path`, its checkpoints taken from the local server."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("SSLHUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SSLHUB_ZOO_MIRROR", server.url)
    server.requests.clear()
    return server


def _md5_prefixes_of_fixtures(monkeypatch, fixtures):
    """The catalogue with the MD5 prefixes of the tiny fixtures in place of the official files' ones."""
    entries = tuple(
        dataclasses.replace(e, md5_prefix=hashlib.md5(fixtures[e.layout][0]).hexdigest()[:8])
        if e.md5_prefix
        else e
        for e in zoo.MODELS
    )
    monkeypatch.setattr(zoo, "MODELS", entries)


# --- the catalogue -----------------------------------------------------------------------------------------
def test_names_are_unique_and_every_entry_has_a_source():
    names = [e.name for e in zoo.MODELS]
    assert len(names) == len(set(names)) == 19
    for entry in zoo.MODELS:
        assert re.fullmatch(r"[a-z0-9][a-z0-9_.-]+", entry.name), entry.name
        assert entry.results and entry.epochs > 0 and entry.source
        assert (entry.url is None) != (entry.train_command is None), entry.name  # one source of weights
        for result in entry.results:
            assert 0 < result.value < 100 and result.source and result.source_url


def test_official_entries_point_at_the_authors_files():
    official = [e for e in zoo.MODELS if e.url]
    assert [e.name for e in official] == [
        "moco-v1-resnet50-200ep",
        "moco-v2-resnet50-200ep",
        "moco-v2-resnet50-800ep",
        "moco-v3-resnet50-100ep",
        "moco-v3-resnet50-300ep",
        "moco-v3-resnet50-1000ep",
        "moco-v3-vit-small-300ep",
        "moco-v3-vit-base-300ep",
    ]
    for entry in official:
        url = urlsplit(entry.url)
        assert url.scheme == "https" and url.netloc == "dl.fbaipublicfiles.com", entry.url
        assert entry.url.endswith("/" + entry.filename) and entry.filename.endswith(".pth.tar")
        assert entry.layout in LAYOUTS and entry.license == "cc-by-nc-4.0"
        assert entry.dataset_id == "ILSVRC/imagenet-1k" and f"-{entry.epochs}ep" in entry.name
        (result,) = entry.results
        assert result.metric == "linear probe top-1" and result.dataset == "ImageNet-1k"
        repo = "moco-v3" if entry.method == "MoCo v3" else "moco"
        assert result.source_url.startswith(f"https://github.com/facebookresearch/{repo}")
        assert result.source.startswith(f"facebookresearch/{repo} ")
    top1 = {e.name: e.results[0].value for e in official}
    assert top1["moco-v2-resnet50-800ep"] == 71.1 and top1["moco-v3-vit-base-300ep"] == 76.7


def test_numbers_of_the_models_trained_here_are_their_cards():
    trained = [e for e in zoo.MODELS if e.train_command]
    assert len(trained) == 11 and {e.card for e in trained} == {
        f"model_cards/{p.name}" for p in (ROOT / "model_cards").glob("*.md") if p.name != "TEMPLATE.md"
    }
    for entry in trained:
        card = ModelCard.load(ROOT / entry.card)
        assert card.data.model_name == entry.name
        measured = {r.metric_name: 100 * r.metric_value for r in card.data.eval_results}
        assert {r.metric: r.value for r in entry.results} == pytest.approx(measured, abs=0.005)
        assert all(r.source_url == entry.card and r.split for r in entry.results)


def test_filters_and_close_matches():
    assert {e.name for e in zoo.list_models(method="moco-v3", backbone="vit_*")} == {
        "moco-v3-vit-small-300ep",
        "moco-v3-vit-base-300ep",
    }
    assert len(zoo.list_models(method="MoCo v3")) == 5 and len(zoo.list_models(method="distillation")) == 6
    assert [e.name for e in zoo.list_models(backbone="resnet50", method="v1")] == ["moco-v1-resnet50-200ep"]
    assert zoo.list_models(backbone="convnext") == []
    with pytest.raises(ValueError, match="did you mean moco-v2-resnet50-800ep"):
        zoo.zoo_entry("moco-v2-r50-800ep")
    with pytest.raises(ValueError, match="`sslhub zoo` lists the models"):
        zoo.zoo_entry("simclr")


def test_checkpoint_url_maps_the_base_to_a_mirror(monkeypatch):
    entry = zoo.zoo_entry("moco-v3-resnet50-300ep")
    monkeypatch.delenv("SSLHUB_ZOO_MIRROR", raising=False)
    assert zoo.checkpoint_url(entry) == entry.url
    assert (
        zoo.checkpoint_url(entry, "http://mirror:8/files/")
        == "http://mirror:8/files" + urlsplit(entry.url).path
    )
    monkeypatch.setenv("SSLHUB_ZOO_MIRROR", "http://127.0.0.1:1")
    assert zoo.checkpoint_url(entry) == "http://127.0.0.1:1/moco-v3/r-50-300ep/r-50-300ep.pth.tar"


# --- from a name to a model --------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_downloads_converts_and_loads(layout, online, fixtures, monkeypatch, tmp_path):
    _md5_prefixes_of_fixtures(monkeypatch, fixtures)
    entry = next(e for e in zoo.MODELS if e.layout == layout)
    data, encoder = fixtures[layout]
    model = sslhub.from_zoo(entry.name, backbone_kwargs=TINY_BACKBONE_KWARGS[layout], progress=False)
    assert isinstance(model, MoCoModel) and not model.training
    assert online.requests == [(urlsplit(entry.url).path, None)]
    checkpoint = tmp_path / "cache" / "checkpoints" / entry.name / entry.filename
    assert checkpoint.read_bytes() == data
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x).projection, encoder(x), rtol=1e-4, atol=1e-5)

    folder = tmp_path / "cache" / "models" / entry.name
    card = ModelCard.load(folder / "README.md")
    (result,) = card.data.eval_results
    assert result.metric_value == pytest.approx(entry.results[0].value / 100)
    assert result.source_url == entry.results[0].source_url and "reported by the source" in result.metric_name
    assert card.data.license == "cc-by-nc-4.0" and card.data.datasets == ["ILSVRC/imagenet-1k"]
    assert entry.url in card.text and f"sslhub convert {entry.name}" in card.text
    assert "not measured by sslhub" in card.text

    # Already converted: the folder is reused, nothing is downloaded.
    assert sslhub.from_zoo(entry.name, return_folder=True) == folder
    assert len(online.requests) == 1


def test_published_checksum_rejects_another_file(online):
    entry = zoo.zoo_entry("moco-v1-resnet50-200ep")  # the official MD5 prefix: the tiny file does not match
    with pytest.raises(DownloadError, match="not the published one.*MD5 .* where the source states b251726a"):
        zoo.convert_zoo_model(entry.name, progress=False)
    assert not list((zoo.zoo_cache_dir() / "checkpoints").rglob("*.pth.tar*"))
    assert not (zoo.zoo_cache_dir() / "models").exists()


def test_dropped_connection_resumes_with_range(online, fixtures, tmp_path):
    entry = zoo.zoo_entry("moco-v3-resnet50-300ep")
    path = urlsplit(entry.url).path
    data = fixtures[entry.layout][0]
    online.drop_once.add(path)
    with pytest.raises(
        DownloadError, match=r"stopped after [\d,]+ of [\d,]+ bytes.*run the same command again"
    ):
        zoo.convert_zoo_model(entry.name, progress=False)
    part = zoo.zoo_cache_dir() / "checkpoints" / entry.name / (entry.filename + ".part")
    received = part.stat().st_size
    assert received == len(data) // 2

    out = zoo.convert_zoo_model(
        entry.name, tmp_path / "r50", backbone_kwargs=TINY_BACKBONE_KWARGS[entry.layout], progress=False
    )
    assert online.requests == [(path, None), (path, f"bytes={received}-")]
    assert not part.exists()
    assert (part.parent / entry.filename).read_bytes() == data
    assert MoCoModel.from_pretrained(out).config.version == "v3"


def test_a_server_that_ignores_range_restarts_the_file(online, fixtures, tmp_path):
    entry = zoo.zoo_entry("moco-v3-vit-small-300ep")
    data = fixtures[entry.layout][0]
    part = tmp_path / "vit.pth.tar.part"
    part.write_bytes(b"garbage that is not the start of the file")
    online.ignore_range = True
    try:
        download_file(zoo.checkpoint_url(entry), tmp_path / "vit.pth.tar", progress=False)
    finally:
        online.ignore_range = False
    assert online.requests[-1][1] == f"bytes={len(b'garbage that is not the start of the file')}-"
    assert (tmp_path / "vit.pth.tar").read_bytes() == data and not part.exists()


def test_a_complete_part_file_is_finished_without_a_body(online, fixtures, tmp_path):
    entry = zoo.zoo_entry("moco-v3-vit-base-300ep")
    data = fixtures[entry.layout][0]
    (tmp_path / "vit.pth.tar.part").write_bytes(data)
    download_file(zoo.checkpoint_url(entry), tmp_path / "vit.pth.tar", size=len(data), progress=False)
    assert online.requests == [(urlsplit(entry.url).path, f"bytes={len(data)}-")]  # answered 416
    assert (tmp_path / "vit.pth.tar").read_bytes() == data


def test_a_size_other_than_the_stated_one_is_refused(online, tmp_path):
    url = zoo.checkpoint_url(zoo.zoo_entry("moco-v3-vit-base-300ep"))
    with pytest.raises(DownloadError, match="not the published one .* bytes where the source states 1,000"):
        download_file(url, tmp_path / "vit.pth.tar", size=1000, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_of_another_layout_is_refused(online, fixtures):
    entry = zoo.zoo_entry("moco-v3-resnet50-100ep")
    path = urlsplit(entry.url).path
    online.files[path] = fixtures["moco_v3_vit"][0]
    try:
        with pytest.raises(
            zoo.CheckpointError, match="holds a moco_v3_vit checkpoint where .* is moco_v3_resnet"
        ):
            zoo.convert_zoo_model(entry.name, progress=False)
    finally:
        online.files[path] = fixtures[entry.layout][0]


def test_offline_fails_at_once_and_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SSLHUB_CACHE", str(tmp_path))
    entry = zoo.zoo_entry("moco-v2-resnet50-800ep")
    started = time.perf_counter()
    with pytest.raises(DownloadError) as error:
        sslhub.from_zoo(entry.name)
    assert time.perf_counter() - started < 2
    message = str(error.value)
    assert "HF_HUB_OFFLINE=1" in message and entry.url in message
    assert f"sslhub convert {entry.filename} {entry.name}" in message
    assert str(tmp_path / "checkpoints" / entry.name / entry.filename) in message


def test_unreachable_server_fails_fast(monkeypatch, tmp_path):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("SSLHUB_CACHE", str(tmp_path))
    entry = zoo.zoo_entry("moco-v3-resnet50-1000ep")
    started = time.perf_counter()
    with pytest.raises(
        DownloadError, match=f"cannot reach http://127.0.0.1:{port}/moco-v3/r-50-1000ep"
    ) as error:
        zoo.convert_zoo_model(entry.name, mirror=f"http://127.0.0.1:{port}", timeout=2)
    assert time.perf_counter() - started < 5
    assert f"download {entry.url}" in str(error.value) and "sslhub convert r-50-1000ep.pth.tar" in str(
        error.value
    )


def test_a_cached_checkpoint_converts_offline(monkeypatch, tmp_path, fixtures):
    monkeypatch.setenv("SSLHUB_CACHE", str(tmp_path))
    entry = zoo.zoo_entry("moco-v3-resnet50-100ep")
    path = tmp_path / "checkpoints" / entry.name / entry.filename
    path.parent.mkdir(parents=True)
    path.write_bytes(fixtures[entry.layout][0])  # a file fetched by hand, put where the message says
    folder = sslhub.from_zoo(
        entry.name, return_folder=True, backbone_kwargs=TINY_BACKBONE_KWARGS[entry.layout]
    )
    assert read_checkpoint(path)[1]["arch"] == "resnet50"
    assert MoCoModel.from_pretrained(folder).config.projector_batch_norm


def test_a_published_entry_comes_from_the_hub(online, published, monkeypatch, tmp_path):
    fill_hub_cache(tmp_path / "hub", REPO_ID, published["folder"])
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # resolved from the Hub cache
    entry = dataclasses.replace(zoo.zoo_entry("moco-v3-resnet50-300ep"), hub_id=REPO_ID)
    monkeypatch.setattr(zoo, "MODELS", (entry,))
    model = sslhub.from_zoo(entry.name)
    with torch.no_grad():
        torch.testing.assert_close(
            model(published["pixel_values"]).pooler_output, published["reference"].pooler_output
        )
    assert online.requests == []  # the checkpoint is not downloaded
    assert f"[{REPO_ID}](https://huggingface.co/{REPO_ID})" in zoo.markdown_table()


def test_models_trained_here_say_how_to_train_them():
    with pytest.raises(
        ValueError, match="not published yet: train it with `python bench/colorization_cifar10.py`"
    ):
        sslhub.from_zoo("colorization-resnet18-cifar10")


# --- the README table and the command line -----------------------------------------------------------------
def test_readme_table_is_the_generated_one(tmp_path):
    assert zoo.update_readme(ROOT / "README.md", check=True), "run `python scripts/write_zoo_table.py`"
    text = (ROOT / "README.md").read_text()
    assert text.index("## Model zoo") < text.index(zoo.ZOO_START) < text.index("## Training (recipes)")
    stale = tmp_path / "README.md"
    stale.write_text(f"# x\n\n{zoo.ZOO_START}\n| old |\n{zoo.ZOO_END}\n\nrest\n")
    assert not zoo.update_readme(stale) and zoo.update_readme(stale, check=True)
    assert "| `moco-v3-vit-base-300ep` | MoCo v3 |" in stale.read_text() and stale.read_text().endswith(
        "rest\n"
    )
    with pytest.raises(ValueError, match="no <!-- zoo:start -->"):
        zoo.update_readme(ROOT / "ARCHITECTURE.md", check=True)


def test_zoo_command_lists_filters_and_shows(capsys):
    assert main(["zoo"]) == 0
    out = capsys.readouterr().out
    assert all(e.name in out for e in zoo.MODELS) and "linear 71.1 (validation)" in out and "19 models" in out
    assert main(["zoo", "--method", "moco-v3", "--backbone", "vit", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [e["name"] for e in listed] == ["moco-v3-vit-small-300ep", "moco-v3-vit-base-300ep"]
    assert listed[0]["filename"] == "vit-s-300ep.pth.tar" and listed[0]["results"][0]["value"] == 73.2
    assert main(["zoo", "--markdown"]) == 0
    assert capsys.readouterr().out.strip() == zoo.markdown_table()

    assert main(["zoo", "show", "moco-v2-resnet50-800ep"]) == 0
    out = capsys.readouterr().out
    entry = zoo.zoo_entry("moco-v2-resnet50-800ep")
    assert entry.url in out and "71.1% on ImageNet-1k" in out and "facebookresearch/moco README.md" in out
    assert "sslhub convert moco-v2-resnet50-800ep" in out and "AutoModel.from_pretrained(" in out
    assert 'sslhub.from_zoo("moco-v2-resnet50-800ep")' in out
    assert main(["zoo", "show", "student-test_resnet-seed-cifar10"]) == 0
    assert "python bench/distill_cifar10.py --workdir" in capsys.readouterr().out
    assert main(["zoo", "show", "moco-v3-vit-small", "--json"]) == 1
    assert "did you mean moco-v3-vit-small-300ep" in capsys.readouterr().err


def test_convert_command_takes_a_zoo_name(online, tmp_path, capsys):
    kwargs = json.dumps(TINY_BACKBONE_KWARGS["moco_v3_vit"])
    out = tmp_path / "vit-s"
    assert main(["convert", "moco-v3-vit-small-300ep", str(out), "--backbone-kwargs", kwargs, "-q"]) == 0
    assert f"is ready in {out}" in capsys.readouterr().out
    assert MoCoModel.from_pretrained(out).config.backbone == "vit_small_patch16_224"
    assert main(["convert", "moco-v3-vit-smal", str(out)]) == 1
    assert "no file 'moco-v3-vit-smal', and no model called" in capsys.readouterr().err
    file = zoo.zoo_cache_dir() / "checkpoints" / "moco-v3-vit-small-300ep" / "vit-s-300ep.pth.tar"
    assert main(["convert", str(file)]) == 1  # a file needs an output folder
    assert "needs an OUTPUT_DIR" in capsys.readouterr().err

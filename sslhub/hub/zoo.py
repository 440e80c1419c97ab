"""The model zoo: every model sslhub knows, where its weights come from and what accuracy its source reports.

One table of frozen entries (`MODELS`), like timm's pretrained configs. An official entry names the
authors' checkpoint (URL, MD5 prefix where their README prints one) and the converter layout it must have;
an entry trained here names the command that trains it and its model card. Every reported number carries
its source: the authors' README or CONFIG table for the official checkpoints (ImageNet linear top-1, not
measured by sslhub), the model card written from the run for the models trained here.

`from_zoo(name)` (and `sslhub convert NAME`) downloads an official checkpoint into
`HF_HOME/sslhub/checkpoints` (resumable, see `download.py`), checks its size, MD5 and layout, converts it
with `convert_checkpoint` and caches the model folder in `HF_HOME/sslhub/models`. `SSLHUB_CACHE` moves
that cache; `SSLHUB_ZOO_MIRROR` (or `mirror=`) replaces the scheme and host of every checkpoint URL.
"""

from __future__ import annotations

import difflib
import fnmatch
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from huggingface_hub import constants as hf_constants
from transformers import PreTrainedModel

from .convert import CheckpointError, convert_checkpoint, detect_layout, read_checkpoint
from .download import download_file

ZOO_START, ZOO_END = "<!-- zoo:start -->", "<!-- zoo:end -->"
"""The markers around the generated table in README.md."""


@dataclass(frozen=True)
class ReportedResult:
    """An accuracy as its source reports it.

    Attributes:
        metric: what was measured, e.g. `"linear probe top-1"`.
        value: the accuracy in percent, as the source prints it.
        dataset: the evaluation data, e.g. `"ImageNet-1k"`.
        dataset_id: its Hub id.
        split: the evaluation split.
        source: where the number is printed, e.g. `"facebookresearch/moco README.md, table 'Models'"`.
        source_url: a link to it (https), or the repository path of the model card for models trained here.
    """

    metric: str
    value: float
    dataset: str
    dataset_id: str
    split: str
    source: str
    source_url: str


@dataclass(frozen=True)
class ZooEntry:
    """One model of the zoo.

    Attributes:
        name: the name users type (`sslhub convert NAME`, `from_zoo(NAME)`).
        method: the training method, e.g. `"MoCo v2"` or `"distillation (SEED)"`.
        paper: a key of `sslhub.hub.PAPERS` (None when the method has no paper there).
        backbone: the timm name of the backbone.
        data: the training data in words.
        dataset_id: the training data's Hub id.
        epochs: passes over the training data.
        results: the accuracies the source reports.
        url: the authors' checkpoint (official entries).
        layout: the converter layout the checkpoint must have (`detect_layout`).
        md5_prefix: the first hex digits of the checkpoint's MD5 as the source prints them.
        size_bytes: the checkpoint's size when the source states it.
        train_command: the command that trains the model here (entries trained by sslhub).
        card: the repository path of its model card (entries trained by sslhub).
        hub_id: the Hub repository holding the converted or trained model, once published.
        license: the license of the weights.
        notes: anything a user must know to load or compare it.
    """

    name: str
    method: str
    paper: str | None
    backbone: str
    data: str
    dataset_id: str
    epochs: float
    results: tuple[ReportedResult, ...]
    url: str | None = None
    layout: str | None = None
    md5_prefix: str | None = None
    size_bytes: int | None = None
    train_command: str | None = None
    card: str | None = None
    hub_id: str | None = None
    license: str = "apache-2.0"
    notes: str = ""

    @property
    def filename(self) -> str | None:
        """The checkpoint's file name (the last part of `url`)."""
        return self.url.rsplit("/", 1)[-1] if self.url else None

    @property
    def source(self) -> str:
        """Where the weights come from: the checkpoint URL, the Hub id or the training command."""
        return self.url or (f"hf.co/{self.hub_id}" if self.hub_id else None) or self.train_command or ""


# --- the table -------------------------------------------------------------------------------------------
_MOCO = "https://dl.fbaipublicfiles.com/moco/moco_checkpoints"
_MOCO_V3 = "https://dl.fbaipublicfiles.com/moco-v3"
_KNN, _LINEAR = "kNN top-1 (k=200, T=0.1)", "linear probe top-1"


def _official(
    name: str,
    method: str,
    backbone: str,
    *,
    epochs: int,
    url: str,
    layout: str,
    top1: float,
    source: tuple[str, str],
    md5_prefix: str | None = None,
    notes: str = "",
) -> ZooEntry:
    """An authors' checkpoint trained on ImageNet-1k, with the linear top-1 its source reports."""
    result = ReportedResult(_LINEAR, top1, "ImageNet-1k", "ILSVRC/imagenet-1k", "validation", *source)
    return ZooEntry(
        name=name,
        method=method,
        paper=method.lower().replace(" ", "-"),
        backbone=backbone,
        data="ImageNet-1k (1.28M training images)",
        dataset_id="ILSVRC/imagenet-1k",
        epochs=epochs,
        results=(result,),
        url=url,
        layout=layout,
        md5_prefix=md5_prefix,
        license="cc-by-nc-4.0",  # the license of both authors' repositories and of their weights
        notes=notes,
    )


def _trained_here(
    name: str,
    method: str,
    paper: str | None,
    backbone: str,
    *,
    data: str,
    epochs: float,
    command: str,
    evaluation: tuple[str, str],
    scores: dict[str, float],
    notes: str = "",
) -> ZooEntry:
    """A model trained by sslhub on CIFAR-10, with the numbers of its card in `model_cards/`."""
    card = f"model_cards/{name}.md"
    dataset, split = evaluation
    return ZooEntry(
        name=name,
        method=method,
        paper=paper,
        backbone=backbone,
        data=data,
        dataset_id="uoft-cs/cifar10",
        epochs=epochs,
        results=tuple(
            ReportedResult(metric, value, dataset, "uoft-cs/cifar10", split, f"{card} (measured here)", card)
            for metric, value in scores.items()
        ),
        train_command=command,
        card=card,
        notes=notes,
    )


_MOCO_README = (
    "facebookresearch/moco README.md, table 'Models'",
    "https://github.com/facebookresearch/moco#models",
)
_V3_URL = "https://github.com/facebookresearch/moco-v3/blob/main/CONFIG.md"
_V3_RESNET = ("facebookresearch/moco-v3 CONFIG.md, table of the pre-trained ResNet-50 models", _V3_URL)
_V3_VIT = ("facebookresearch/moco-v3 CONFIG.md, table of the pre-trained ViT models", _V3_URL)
_HELD_OUT_10K = ("CIFAR-10 (10,000 held-out images of the train split)", "train, held-out 10k")
_HELD_OUT_2K = ("CIFAR-10 (2,000 held-out images of the train split)", "train, held-out 2k")
_DISTILL_COMMAND = (
    "python bench/distill_cifar10.py --workdir outputs/bench_distill_cifar10_small --reuse --num_images 10000 "
    "--teacher_backbone resnet10t --teacher_steps 1000 --student_backbone test_resnet --student_steps 300 "
    "--batch_size 64"
)


def _student(loss: str, method: str, paper: str | None, knn: float) -> ZooEntry:
    """A `test_resnet` student of `bench/distill_cifar10.py` (teacher: `moco-v2-resnet10t-cifar10`)."""
    return _trained_here(
        f"student-test_resnet-{loss}-cifar10",
        f"distillation ({method})",
        paper,
        "test_resnet",
        data="CIFAR-10 (10,000 train images)",
        epochs=1.92,  # 300 steps of batch 64 over 10,000 images
        command=_DISTILL_COMMAND,
        evaluation=_HELD_OUT_2K,
        scores={_KNN: knn},
        notes="Teacher: moco-v2-resnet10t-cifar10 (bench/evaluate_cifar10.py, which --reuse links); "
        "bench/DISTILL_RESULTS.md has the settings and every loss.",
    )


MODELS: tuple[ZooEntry, ...] = (
    _official(
        "moco-v1-resnet50-200ep", "MoCo v1", "resnet50", epochs=200,
        url=f"{_MOCO}/moco_v1_200ep/moco_v1_200ep_pretrain.pth.tar", layout="moco_v1",
        top1=60.6, source=_MOCO_README, md5_prefix="b251726a",
    ),
    _official(
        "moco-v2-resnet50-200ep", "MoCo v2", "resnet50", epochs=200,
        url=f"{_MOCO}/moco_v2_200ep/moco_v2_200ep_pretrain.pth.tar", layout="moco_v2",
        top1=67.7, source=_MOCO_README, md5_prefix="59fd9945",
    ),
    _official(
        "moco-v2-resnet50-800ep", "MoCo v2", "resnet50", epochs=800,
        url=f"{_MOCO}/moco_v2_800ep/moco_v2_800ep_pretrain.pth.tar", layout="moco_v2",
        top1=71.1, source=_MOCO_README, md5_prefix="a04e12f8",
    ),
    _official(
        "moco-v3-resnet50-100ep", "MoCo v3", "resnet50", epochs=100,
        url=f"{_MOCO_V3}/r-50-100ep/r-50-100ep.pth.tar", layout="moco_v3_resnet", top1=68.9, source=_V3_RESNET,
    ),
    _official(
        "moco-v3-resnet50-300ep", "MoCo v3", "resnet50", epochs=300,
        url=f"{_MOCO_V3}/r-50-300ep/r-50-300ep.pth.tar", layout="moco_v3_resnet", top1=72.8, source=_V3_RESNET,
    ),
    _official(
        "moco-v3-resnet50-1000ep", "MoCo v3", "resnet50", epochs=1000,
        url=f"{_MOCO_V3}/r-50-1000ep/r-50-1000ep.pth.tar", layout="moco_v3_resnet", top1=74.6, source=_V3_RESNET,
    ),
    _official(
        "moco-v3-vit-small-300ep", "MoCo v3", "vit_small_patch16_224", epochs=300,
        url=f"{_MOCO_V3}/vit-s-300ep/vit-s-300ep.pth.tar", layout="moco_v3_vit", top1=73.2, source=_V3_VIT,
        notes="The authors' ViT-Small has 12 attention heads where timm's has 6: it loads as timm "
        "`vit_small_patch16_224` with `num_heads=12`.",
    ),
    _official(
        "moco-v3-vit-base-300ep", "MoCo v3", "vit_base_patch16_224", epochs=300,
        url=f"{_MOCO_V3}/vit-b-300ep/vit-b-300ep.pth.tar", layout="moco_v3_vit", top1=76.7, source=_V3_VIT,
    ),
    _trained_here(
        "moco-v2-resnet10t-cifar10", "MoCo v2", "moco-v2", "resnet10t",
        data="CIFAR-10 (40,000 train images)", epochs=6.41,
        command="python bench/evaluate_cifar10.py --steps 1000",
        evaluation=_HELD_OUT_10K, scores={_KNN: 44.2, _LINEAR: 51.94},
        notes="1,000 steps of batch 256 at 32x32 on 2 CPU cores (373 s); bench/EVALUATION_RESULTS.md.",
    ),
    _trained_here(
        "moco-v2-resnet10t-cifar10-sample-demo", "MoCo v2", "moco-v2", "resnet10t",
        data="CIFAR-10 sample shipped with sslhub (5,000 images)", epochs=25,
        command="HF_HUB_OFFLINE=1 python recipes/pretrain_moco.py --config recipes/configs/demo.yaml "
        "--model.backbone resnet10t",
        evaluation=("CIFAR-10 sample (sslhub/sample)", "sample test (1,000 images)"), scores={_KNN: 39.9},
        notes="475 steps on 2 CPU cores (169 s). Its card records `make demo`, whose config trained resnet10t "
        "then; the demo now trains test_resnet (bench/DEMO.md), and this command is the old demo.",
    ),
    _trained_here(
        "moco-v2-resnet10t-cifar10-claims", "MoCo v2", "moco-v2", "resnet10t",
        data="CIFAR-10 (40,000 train images)", epochs=6.4, command="python bench/claims/label_efficiency.py",
        evaluation=_HELD_OUT_10K,
        scores={
            _KNN: 43.88, _LINEAR: 51.59,
            f"{_KNN}, classes bird/cat/deer/dog/frog/horse": 42.37,
            f"{_LINEAR}, classes bird/cat/deer/dog/frog/horse": 50.07,
            "fine-tuning top-1, 1% labels (mean of 3 seeds)": 42.52,
            "fine-tuning top-1, 10% labels (mean of 3 seeds)": 47.91,
            "fine-tuning top-1, 100% labels (one seed)": 48.54,
            f"{_LINEAR}, 1% labels (mean of 3 seeds)": 35.47,
            f"{_LINEAR}, 10% labels (mean of 3 seeds)": 45.96,
            f"{_LINEAR}, 100% labels (one seed)": 51.59,
        },
        notes="The self-supervised model of the claim experiments (bench/claims/): 1,000 steps of batch 256 at "
        "32x32, bf16, 1,394 s on one CPU thread; label efficiency, new categories, compression's teacher.",
    ),
    _trained_here(
        "supervised-resnet10t-cifar10-animals-vehicles-claims", "supervised (2 coarse labels)", None,
        "resnet10t", data="CIFAR-10 (40,000 train images, labels animal / vehicle)", epochs=0.77,
        command="python bench/claims/new_categories.py", evaluation=_HELD_OUT_10K,
        scores={
            "fine-tuning top-1, labels grouped as cifar10-animals-vehicles": 88.48,
            _KNN: 38.97, _LINEAR: 47.06,
            f"{_KNN}, classes bird/cat/deer/dog/frog/horse": 36.83,
            f"{_LINEAR}, classes bird/cat/deer/dog/frog/horse": 46.09,
        },
        notes="Trained from random init on 2 coarse labels (120 steps of batch 256), the baseline of "
        "bench/claims/new_categories.md; kNN / linear scores are on the 10 (or 6 animal) fine classes.",
    ),
    _trained_here(
        "student-test_resnet-seed-cifar10-claims", "distillation (SEED)", "seed", "test_resnet",
        data="CIFAR-10 (40,000 train images)", epochs=1.28, command="python bench/claims/compression.py",
        evaluation=_HELD_OUT_10K,
        scores={_KNN: 41.69, _LINEAR: 43.07},
        notes="Seed 0 of the best label-free student of bench/claims/compression.md (teacher: "
        "moco-v2-resnet10t-cifar10-claims), 200 steps of batch 256; over 3 seeds: kNN 41.96%, linear 43.60%.",
    ),
    _student("seed", "SEED", "seed", 36.95),
    _student("compress-1q", "CompRess-1q", "compress", 36.55),
    _student("compress-2q", "CompRess-2q", "compress", 33.95),
    _student("cluster", "k-means pseudo-labels", None, 32.7),
    _student("mse", "MSE", None, 31.55),
    _trained_here(
        "colorization-resnet18-cifar10", "colorization", "colorization", "resnet18",
        data="CIFAR-10 (40,000 train images)", epochs=0.16, command="python bench/colorization_cifar10.py",
        evaluation=_HELD_OUT_2K, scores={_KNN: 24.6, f"{_LINEAR} (one setting)": 25.4},
        notes="Only 100 steps of batch 64 (97 s on one CPU thread in bf16); random init's features score "
        "kNN 20.65% and linear 26.15% here: +4 points of kNN, none of linear probe; bench/COLORIZATION_RESULTS.md.",
    ),
)  # fmt: skip
"""Every model sslhub knows, official checkpoints first."""


# --- finding entries -------------------------------------------------------------------------------------
def _normalized(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def list_models(method: str | None = None, backbone: str | None = None) -> list[ZooEntry]:
    """The zoo's entries, optionally filtered.

    Args:
        method: keep entries whose method contains this, ignoring case, spaces and dashes (`"moco"`,
            `"moco-v2"`, `"distillation"`, `"seed"`).
        backbone: keep entries whose timm backbone matches this `fnmatch` pattern (`"vit_*"`) or, without a
            wildcard, contains it (`"resnet50"`).
    """
    entries = list(MODELS)
    if method:
        entries = [e for e in entries if _normalized(method) in _normalized(e.method)]
    if backbone:
        pattern = backbone if any(c in backbone for c in "*?[") else f"*{backbone}*"
        entries = [e for e in entries if fnmatch.fnmatchcase(e.backbone, pattern)]
    return entries


def zoo_entry(name: str) -> ZooEntry:
    """The entry called `name`.

    Raises:
        ValueError: no entry has that name; the message lists the close ones.
    """
    names = [entry.name for entry in MODELS]
    if name in names:
        return MODELS[names.index(name)]
    close = difflib.get_close_matches(name, names, n=4, cutoff=0.5)
    close += [
        n for n in names if _normalized(name) and _normalized(name) in _normalized(n) and n not in close
    ]
    hint = f"did you mean {', '.join(close[:5])}?" if close else "`sslhub zoo` lists the models"
    raise ValueError(f"no model called {name!r} in the sslhub zoo: {hint}")


# --- from a name to a folder -----------------------------------------------------------------------------
def zoo_cache_dir() -> Path:
    """Where the zoo keeps checkpoints and converted folders: `SSLHUB_CACHE`, else `HF_HOME/sslhub`."""
    return Path(os.environ.get("SSLHUB_CACHE") or Path(hf_constants.HF_HOME) / "sslhub")


def checkpoint_url(entry: ZooEntry, mirror: str | None = None) -> str:
    """The URL to download `entry`'s checkpoint from: its own, or the same path on `mirror`
    (default: `SSLHUB_ZOO_MIRROR`), e.g. `http://127.0.0.1:8000` for a local copy of the files."""
    if entry.url is None:
        raise ValueError(f"{entry.name} has no checkpoint to download (source: {entry.source})")
    mirror = mirror or os.environ.get("SSLHUB_ZOO_MIRROR")
    if not mirror:
        return entry.url
    return mirror.rstrip("/") + urlsplit(entry.url).path


def _manual_steps(entry: ZooEntry, checkpoint: Path) -> str:
    """What to do by hand when the download cannot be done here."""
    return (
        f"To do it by hand, download {entry.url} to {checkpoint} (e.g. `curl -L -C - --create-dirs -o "
        f"{checkpoint} {entry.url}`) and run `sslhub convert {entry.name}` again; or convert a copy of the "
        f"file kept elsewhere with `sslhub convert {entry.filename} {entry.name} --license {entry.license}` "
        "(its card then lacks the reported accuracy)."
    )


def fetch_checkpoint(
    entry: ZooEntry,
    *,
    cache_dir: str | os.PathLike | None = None,
    mirror: str | None = None,
    timeout: float = 10.0,
    progress: bool = True,
) -> Path:
    """The checked checkpoint file of an official entry, downloaded into the cache unless already there.

    Checks: the size and MD5 prefix where the source states them, then the structure: the file must be a
    checkpoint (`read_checkpoint`) of the entry's layout (`detect_layout`).

    Raises:
        DownloadError: offline, unreachable, interrupted (run again to resume) or not the published file.
        CheckpointError: the file is not a checkpoint of the entry's layout.
    """
    path = Path(cache_dir or zoo_cache_dir()) / "checkpoints" / entry.name / entry.filename
    if not path.is_file():
        download_file(
            checkpoint_url(entry, mirror),
            path,
            size=entry.size_bytes,
            md5_prefix=entry.md5_prefix,
            timeout=timeout,
            progress=progress,
            hint=_manual_steps(entry, path),
        )
    layout = detect_layout(read_checkpoint(path)[0])
    if layout != entry.layout:
        raise CheckpointError(f"{path} holds a {layout} checkpoint where {entry.name} is {entry.layout}")
    return path


def _card_results(entry: ZooEntry) -> list[dict]:
    """The entry's reported results in the `write_model_card` format, attributed to their source."""
    return [
        dict(
            task_type="image-classification",
            dataset_name=r.dataset,
            dataset_type=r.dataset_id,
            dataset_split=r.split,
            metric_type="accuracy",
            metric_name=f"{r.metric}, reported by the source ({r.source})",
            metric_value=round(r.value / 100, 6),
            source_name=r.source,
            source_url=r.source_url,
        )
        for r in entry.results
    ]


def convert_zoo_model(
    name: str,
    output_dir: str | os.PathLike | None = None,
    *,
    force: bool = False,
    cache_dir: str | os.PathLike | None = None,
    mirror: str | None = None,
    timeout: float = 10.0,
    progress: bool = True,
    arch: str | None = None,
    backbone: str | None = None,
    backbone_kwargs: dict | None = None,
    image_size: int | None = None,
) -> Path:
    """The sslhub folder of a zoo model, ready for `AutoModel.from_pretrained` and `sslhub push`.

    A published entry (`hub_id`) is the Hub's snapshot folder (downloaded, or from the cache offline;
    `output_dir` and the conversion options do not apply). Otherwise an official checkpoint is fetched
    (`fetch_checkpoint`) and converted with `convert_checkpoint`, whose card names the source URL and
    carries the source's accuracy in its `model-index`, attributed to it. A folder already converted is
    reused.

    Args:
        name: the entry's name (`list_models`).
        output_dir: the folder to write; `<cache>/models/<name>` by default.
        force: convert again even if the folder exists.
        cache_dir: the zoo's cache (`zoo_cache_dir()` by default).
        mirror: another base URL for the checkpoints (see `checkpoint_url`).
        timeout: seconds to wait for the server to connect and for each read.
        progress: show a download progress bar.
        arch: see `convert_checkpoint`.
        backbone: see `convert_checkpoint`.
        backbone_kwargs: see `convert_checkpoint`.
        image_size: see `convert_checkpoint`.

    Raises:
        ValueError: the name is unknown, or the model is neither downloadable nor published.
        DownloadError: see `fetch_checkpoint`.
        CheckpointError: the checkpoint is not of the entry's layout or does not fit the derived model.
    """
    entry = zoo_entry(name)
    if entry.hub_id:  # published: the Hub's safetensors, no pickle to download and convert
        from .folders import resolve_model_dir

        return resolve_model_dir(entry.hub_id)
    if not entry.url:
        raise ValueError(
            f"{entry.name} is not published yet: train it with `{entry.train_command}` (its card: "
            f"{entry.card})"
        )
    cache = Path(cache_dir or zoo_cache_dir())
    output_dir = Path(output_dir or cache / "models" / entry.name)
    if (output_dir / "config.json").is_file() and (output_dir / "model.safetensors").is_file() and not force:
        return output_dir
    checkpoint = fetch_checkpoint(entry, cache_dir=cache, mirror=mirror, timeout=timeout, progress=progress)
    staging = output_dir.with_name(output_dir.name + ".converting")  # a failed conversion leaves no folder
    shutil.rmtree(staging, ignore_errors=True)
    convert_checkpoint(
        checkpoint,
        staging,
        arch=arch,
        backbone=backbone,
        backbone_kwargs=backbone_kwargs,
        image_size=image_size,
        model_name=entry.name,
        datasets=(entry.dataset_id,),
        source_url=entry.url,
        eval_results=_card_results(entry),
        reproduce_command=f"sslhub convert {entry.name}",
        license=entry.license,
    )
    shutil.rmtree(output_dir, ignore_errors=True)
    staging.rename(output_dir)
    return output_dir


def from_zoo(name: str, *, return_folder: bool = False, **kwargs: Any) -> PreTrainedModel | Path:
    """Load a model of the zoo by name, downloading and converting it on first use.

    Example:
        >>> model = sslhub.from_zoo("moco-v2-resnet50-800ep")  # MoCoModel, in eval mode

    Args:
        name: the entry's name (`sslhub zoo` lists them).
        return_folder: return the converted folder instead of the loaded model.
        **kwargs: the options of `convert_zoo_model` (`output_dir`, `force`, `cache_dir`, `mirror`, ...).

    Returns:
        The model (`AutoModel.from_pretrained` of the folder: a `MoCoModel` for the official checkpoints),
        in eval mode, or the folder's path with `return_folder=True`.
    """
    folder = convert_zoo_model(name, **kwargs)
    if return_folder:
        return folder
    from transformers import AutoModel

    return AutoModel.from_pretrained(folder).eval()


# --- the README table ------------------------------------------------------------------------------------
def reported_scores(entry: ZooEntry) -> str:
    """The entry's numbers in short: `linear 71.1 (validation)`, `kNN 44.2 / linear 51.94 (train, held-out 10k)`."""
    scores = " / ".join(f"{r.metric.split(' ')[0]} {r.value:g}" for r in entry.results)
    return f"{scores} ({entry.results[0].split})" if entry.results else ""


def markdown_table(entries: Sequence[ZooEntry] | None = None) -> str:
    """The zoo as a Markdown table (of `entries`, all by default): one row per entry, with the reported
    top-1 and its source."""
    rows = [
        "| model | method | backbone (timm) | training data | epochs | reported top-1, % (split) | source of the number | weights |",
        "|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for entry in MODELS if entries is None else entries:
        sources = dict.fromkeys(
            f"[{'its model card' if r.source_url == entry.card else r.source}]({r.source_url})"
            for r in entry.results
        )
        if entry.hub_id:
            weights = f"[{entry.hub_id}](https://huggingface.co/{entry.hub_id})"
        elif entry.url:
            weights = f"[{entry.filename}]({entry.url}), `sslhub convert {entry.name}`"
        else:
            weights = f"not published; trained by `{entry.train_command}`"
        rows.append(
            f"| `{entry.name}` | {entry.method} | `{entry.backbone}` | {entry.data} | {entry.epochs:g} | "
            f"{reported_scores(entry)} | {'; '.join(sources)} | {weights} |"
        )
    return "\n".join(rows)


def update_readme(path: str | os.PathLike, *, check: bool = False) -> bool:
    """Write `markdown_table()` between the zoo markers of a README; return whether it was up to date.

    Args:
        path: the README.
        check: only compare, write nothing.

    Raises:
        ValueError: the README has no `<!-- zoo:start -->` / `<!-- zoo:end -->` markers.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    start, end = text.find(ZOO_START), text.find(ZOO_END)
    if start < 0 or end < start:
        raise ValueError(f"{path} has no {ZOO_START} ... {ZOO_END} markers")
    updated = f"{text[: start + len(ZOO_START)]}\n{markdown_table()}\n{text[end:]}"
    if not check and updated != text:
        path.write_text(updated, encoding="utf-8")
    return updated == text

"""What the benchmarks share: the same MoCo v2 built in sslhub and in lightly, one training step of each,
timing and machine helpers.

Both models use one backbone definition (`sslhub.models.backbones.create_backbone`, a timm ResNet with the same
optional CIFAR stem) and start from the same weights and the same queue, so the comparison isolates each
library's MoCo machinery (heads, momentum update, queue, loss), not the network.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sslhub import MoCoConfig, MoCoForPreTraining
from sslhub.hub import portable_path
from sslhub.models.backbones import create_backbone

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


@dataclass
class Setting:
    """One benchmark configuration: model, input size, batch and numerics."""

    name: str
    backbone: str = "resnet18"
    small_input_stem: bool = True
    image_size: int = 32
    batch_size: int = 128
    queue_size: int = 4096
    temperature: float = 0.2
    momentum: float = 0.99
    lr: float = 0.06
    weight_decay: float = 5e-4
    precision: str = "fp32"  # "fp32" or "bf16" (autocast)
    channels_last: bool = False
    sgd: str = "default"  # torch.optim.SGD implementation: "default", "foreach" or "fused"
    projector_hidden: int | None = None  # hidden width of the 2-layer projector (None: the backbone's)

    @property
    def label(self) -> str:
        numerics = self.precision + (" + channels_last" if self.channels_last else "")
        numerics += "" if self.sgd == "default" else f" + {self.sgd} SGD"
        return f"{self.backbone} {self.image_size}x{self.image_size} b{self.batch_size}, {numerics}"


def sslhub_config(s: Setting) -> MoCoConfig:
    """The MoCo v2 config of a setting. Equal settings: no BatchNorm sub-batches in the key branch
    (`shuffle_bn_splits=1`; lightly's one-process `batch_shuffle` leaves the statistics of the whole batch)."""
    return MoCoConfig.v2(
        backbone=s.backbone,
        small_input_stem=s.small_input_stem,
        queue_size=s.queue_size,
        temperature=s.temperature,
        momentum=s.momentum,
        image_size=s.image_size,
        projector_hidden_size=s.projector_hidden,
        shuffle_bn_splits=1,
    )


class LightlyMoCo(nn.Module):
    """MoCo v2 as lightly's example writes it, on the same backbone definition as sslhub."""

    def __init__(self, s: Setting) -> None:
        from lightly.loss import NTXentLoss
        from lightly.models.modules import MoCoProjectionHead
        from lightly.models.utils import deactivate_requires_grad

        super().__init__()
        self.backbone = create_backbone(s.backbone, small_input_stem=s.small_input_stem)
        width = self.backbone.num_features
        self.projection_head = MoCoProjectionHead(width, s.projector_hidden or width, 128)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)
        self.criterion = NTXentLoss(temperature=s.temperature, memory_bank_size=(s.queue_size, 128))
        self.momentum = s.momentum

    def forward(self, x_query: torch.Tensor, x_key: torch.Tensor) -> torch.Tensor:
        from lightly.models.utils import batch_shuffle, batch_unshuffle, update_momentum

        update_momentum(self.backbone, self.backbone_momentum, m=self.momentum)
        update_momentum(self.projection_head, self.projection_head_momentum, m=self.momentum)
        query = self.projection_head(self.backbone(x_query).flatten(start_dim=1))
        with torch.no_grad():
            x_key, shuffle = batch_shuffle(x_key)
            key = self.projection_head_momentum(self.backbone_momentum(x_key).flatten(start_dim=1))
            key = batch_unshuffle(key, shuffle)
        return self.criterion(query, key)


def lightly_transform(image_size: int):
    """lightly's MoCo v2 views (`MoCoV2Transform`, PIL per image) as sslhub's v2 preset makes them: CIFAR-10
    normalization, no blur below 64 pixels."""
    from lightly.transforms import MoCoV2Transform

    blur = 0.0 if image_size < 64 else 0.5
    normalize = {"mean": list(CIFAR_MEAN), "std": list(CIFAR_STD)}
    return MoCoV2Transform(input_size=image_size, gaussian_blur=blur, normalize=normalize)


class LightlyViews(torch.utils.data.Dataset):
    """Dataset rows decoded as sslhub does, then lightly's two views (`lightly_transform`)."""

    def __init__(self, dataset, transform) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        from sslhub.data import decode_image

        views = self.transform(decode_image(self.dataset[index]["image"]))
        return views[0], views[1]


def copy_weights(ours: MoCoForPreTraining, theirs: LightlyMoCo) -> None:
    """Give lightly's model sslhub's initial weights and queue, so both start from the same state."""
    pairs = [
        (ours.query_encoder.backbone, theirs.backbone),
        (ours.query_encoder.projector, theirs.projection_head),
        (ours.key_encoder.backbone, theirs.backbone_momentum),
        (ours.key_encoder.projector, theirs.projection_head_momentum),
    ]
    with torch.no_grad():
        for source, target in pairs:
            for a, b in zip(source.state_dict().values(), target.state_dict().values(), strict=True):
                b.copy_(a)
        theirs.criterion.memory_bank.bank.copy_(ours.queue)
        theirs.criterion.memory_bank.bank_ptr.zero_()


def build_pair(s: Setting, device: torch.device, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """(sslhub model, lightly model) of a setting with identical initial state, in training mode."""
    torch.manual_seed(seed)
    ours = MoCoForPreTraining(sslhub_config(s))
    theirs = LightlyMoCo(s)
    copy_weights(ours, theirs)
    models = []
    for model in (ours, theirs):
        model = model.to(device)
        if s.channels_last:
            model = model.to(memory_format=torch.channels_last)
        models.append(model.train())
    return models[0], models[1]


def build_one(library: str, s: Setting, device: torch.device, seed: int = 0) -> nn.Module:
    """Only one library's model (for the memory measurement, where the other must not be in memory)."""
    torch.manual_seed(seed)
    model = MoCoForPreTraining(sslhub_config(s)) if library == "sslhub" else LightlyMoCo(s)
    model = model.to(device)
    if s.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model.train()


def build_sslhub(
    s: Setting, device: torch.device, shuffle_bn_splits: int = 1, compile: bool = False
) -> tuple[nn.Module, torch.optim.Optimizer]:
    """sslhub's model of a setting alone, with its optimizer: with `shuffle_bn_splits` > 1 the preset's
    one-process shuffle-BN (BatchNorm sub-batches of the key batch), with `compile` compiled in place."""
    model = build_one("sslhub", s, device)
    model.config.shuffle_bn_splits = shuffle_bn_splits  # read at each forward; the batch must divide it
    if compile:
        model.compile()
    return model, make_optimizer(model, s)


def make_optimizer(model: nn.Module, s: Setting) -> torch.optim.Optimizer:
    """The same SGD for both libraries (momentum 0.9, weight decay on every parameter, as MoCo v2).

    `s.sgd` picks torch's implementation; all three compute the same numbers. On CPU the default is the
    per-parameter loop (torch only defaults to foreach on GPUs).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    implementation = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}[s.sgd]
    return torch.optim.SGD(params, lr=s.lr, momentum=0.9, weight_decay=s.weight_decay, **implementation)


def autocast(s: Setting, device: torch.device):
    """bf16 autocast for `precision="bf16"`, nothing otherwise."""
    if s.precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_step(
    library: str, model: nn.Module, optimizer: torch.optim.Optimizer, x1, x2, s: Setting, device
) -> torch.Tensor:
    """One MoCo v2 step (momentum update, forward, loss, backward, SGD) of either library."""
    with autocast(s, device):
        loss = model(x1, x2).loss if library == "sslhub" else model(x1, x2)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss


def make_inputs(s: Setting, device: torch.device, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Two pre-made (N, 3, H, W) view batches, so that the step is timed without the data pipeline."""
    generator = torch.Generator().manual_seed(seed)
    shape = (s.batch_size, 3, s.image_size, s.image_size)
    x1, x2 = (torch.randn(shape, generator=generator).to(device) for _ in range(2))
    if s.channels_last:
        x1, x2 = (x.contiguous(memory_format=torch.channels_last) for x in (x1, x2))
    return x1, x2


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int = 1) -> float:
    """Seconds for `repeats` calls of `fn`, with the device synchronized around them."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    synchronize(device)
    return time.perf_counter() - start


def spread(values: list[float]) -> dict[str, float]:
    """min / median / max of repeated measurements."""
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def matmul_flops_per_second(
    device: torch.device, dtype: torch.dtype, n: int = 2048, repeats: int = 3
) -> float:
    """Best-of-`repeats` FLOP/s of an n x n x n matrix multiply (2 n^3 FLOPs) with the current threads."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b  # warm-up
    best = min(timed(lambda: a @ b, device) for _ in range(repeats))
    return 2 * n**3 / best


REPOSITORY = Path(__file__).resolve().parents[1]


def repository_relative(payload: Any, root: Path = REPOSITORY) -> Any:
    """A results payload (JSON values) with each absolute path inside `root` written relative to it (and
    one in the home folder as `~/...`: `sslhub.hub.portable_path`), so that the committed records name
    `recipes/...` and `outputs/...`, not the machine they ran on."""
    if isinstance(payload, dict):
        return {key: repository_relative(value, root) for key, value in payload.items()}
    if isinstance(payload, list | tuple):
        return [repository_relative(value, root) for value in payload]
    if isinstance(payload, str | os.PathLike):
        return portable_path(os.fspath(payload), root)
    return payload


def _cpuinfo(field: str) -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as lines:
        for line in lines:
            if line.startswith(field):
                return line.split(":", 1)[1].strip()
    return ""


def cpu_model() -> str:
    return _cpuinfo("model name") or platform.processor() or "unknown"


# The CPU flags that decide which kernels torch and oneDNN run (vector width, native bf16, AMX).
KERNEL_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def cpu_flags() -> dict:
    """The kernel-relevant flags of this CPU, and what torch and oneDNN were allowed to use: `--avx2`
    emulation caps them with `ATEN_CPU_CAPABILITY` / `ONEDNN_MAX_CPU_ISA` (the flags stay the machine's)."""
    flags = set(_cpuinfo("flags").split())
    return {
        "flags": [flag for flag in KERNEL_FLAGS if flag in flags],
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "ATEN_CPU_CAPABILITY": os.environ.get("ATEN_CPU_CAPABILITY"),
        "ONEDNN_MAX_CPU_ISA": os.environ.get("ONEDNN_MAX_CPU_ISA"),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
    }


def _old_flags(m: dict) -> str:
    """The flags of results written before `cpu_flags` existed (only the bf16 and AMX ones were kept)."""
    return f"AVX512-BF16 {m.get('avx512_bf16', '?')}, AMX {m.get('amx', '?')}"


def describe_machine(m: dict) -> str:
    """One line for a results file: CPU, cores, threads, flags, kernel caps, load."""
    flags = m.get("cpu_flags", {})
    caps = [f"{k}={flags[k]}" for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA") if flags.get(k)]
    policy = f"; OMP_WAIT_POLICY={flags['OMP_WAIT_POLICY']}" if flags.get("OMP_WAIT_POLICY") else ""
    return (
        f"{m['cpu']}, {m['cpu_count']} cores, {m['threads']} torch threads, device `{m['device']}`"
        + (f" ({m['gpu']})" if m.get("gpu") else "")
        + f"; CPU flags: {' '.join(flags.get('flags', [])) or _old_flags(m)}; torch kernels: "
        + f"{flags.get('torch_cpu_capability', '?')}"
        + (f" (capped: {', '.join(caps)}, an emulation)" if caps else "")
        + policy
        + f"; load average at start {m['load_average_at_start']:.1f}"
    )


def _version(distribution: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine_info(device: torch.device) -> dict:
    """What a reader needs to compare numbers across machines (lightly's version when it is installed)."""
    import timm

    try:
        import lightly
    except ImportError:  # the comparison needs it, the machine description does not
        lightly = None
    flags = _cpuinfo("flags").split()
    info = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "device": device.type,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "cpu_flags": cpu_flags(),
        "avx512_bf16": "avx512_bf16" in flags,
        "amx": "amx_tile" in flags,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        **{name: _version(name) for name in ("transformers", "accelerate", "datasets")},
        "lightly": getattr(lightly, "__version__", "not installed"),
        "load_average_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


class KNNProbe:
    """Weighted kNN top-1 of an encoder (InstDisc protocol: k=200, T=0.1), the same for every library.

    The bank is labelled training images, the queries held-out images, both resized to the setting's
    size without cropping and normalized with the CIFAR-10 statistics; `encoder` is sslhub's `MoCoModel`
    or a timm backbone (pooled features either way, through `sslhub.evaluation.extract_features`).
    """

    def __init__(self, bank, queries, device: torch.device, image_size: int = 32, k: int = 200) -> None:
        from torch.utils.data import DataLoader

        from sslhub.data import ImageDataset, collate, eval_transform

        transform = eval_transform(image_size, CIFAR_MEAN, CIFAR_STD, crop_pct=1.0)
        self.loaders = [
            DataLoader(ImageDataset(data, transform), batch_size=256, collate_fn=collate)
            for data in (bank, queries)
        ]
        self.device, self.k = device, k

    def __call__(self, encoder: nn.Module) -> float:
        from sslhub.evaluation import extract_features, knn_accuracy

        features = []
        for loader in self.loaders:
            moved = ({**b, "pixel_values": b["pixel_values"].to(self.device)} for b in loader)
            features.append(extract_features(encoder, moved, progress=False))
        (bank, bank_labels), (queries, query_labels) = features
        return knn_accuracy(bank, bank_labels, queries, query_labels, k=self.k, temperature=0.1)

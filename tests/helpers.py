"""What several test files share: tiny configurations (timm's `test_*` backbones, 32x32 images) and an
offline Hugging Face cache."""

import contextlib
import hashlib
import os
import shutil
from pathlib import Path

from sslhub import MoCoConfig

REPO_ID = "sslhub-test/tiny-moco"
"""The Hub id under which the tests publish their tiny MoCo model (offline, in a local cache)."""


def tiny_moco_v2(**overrides) -> MoCoConfig:
    settings = dict(
        backbone="test_resnet",
        image_size=32,
        queue_size=32,
        momentum=0.9,
        projection_dim=16,
        crop_pct=1.0,
        shuffle_bn_splits=2,  # the tests' batches of 4 (the preset's 8 needs batches of 8k)
    )
    return MoCoConfig.v2(**{**settings, **overrides})


def tiny_moco_v3(**overrides) -> MoCoConfig:
    settings = dict(
        backbone="test_vit",
        backbone_kwargs={"img_size": 32, "patch_size": 8},
        image_size=32,
        projector_hidden_size=32,
        predictor_hidden_size=32,
        projection_dim=16,
        crop_pct=1.0,
    )
    return MoCoConfig.v3(**{**settings, **overrides})


def fill_hub_cache(cache: Path, repo_id: str, folder: Path, repo_type: str = "model") -> None:
    """Lay out `folder` as the cached snapshot of `repo_id` (blobs, refs/main, snapshots/<commit>), so that
    the id resolves with `HF_HUB_OFFLINE=1` and `HF_HUB_CACHE=cache`."""
    repo = cache / f"{repo_type}s--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        blob = repo / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copyfile(file, blob)
        link = snapshot / file.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)


# ATen operators whose result size or value the host must read: on a GPU each waits for the device.
HOST_SYNC_OPS = frozenset(
    {"aten.nonzero", "aten._local_scalar_dense", "aten.is_nonzero", "aten.masked_select"}
)


@contextlib.contextmanager
def recorded_ops():
    """The names (`aten.nonzero`, ...) of the ATen operators called inside, as a set."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            names.add(f"aten.{func._schema.name.split('::')[1]}")
            return func(*args, **(kwargs or {}))

    names: set[str] = set()
    with Record():
        yield names

import os

# Hugging Face variables are read at import time: the suite never reaches the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from sslhub import MoCoModel  # noqa: E402
from sslhub.hub.remote_code import add_remote_code  # noqa: E402
from sslhub.hub.timm_export import export_timm  # noqa: E402

from .helpers import REPO_ID, tiny_moco_v2  # noqa: E402

# Test tensors are tiny: one intra-op thread is faster than two and leaves a core for data workers.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


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
    add_remote_code(folder)
    export_timm(model, root / "timm", source_repo_id=REPO_ID)
    pixel_values = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = model(pixel_values)
    torch.save(pixel_values, root / "pixel_values.pt")
    return dict(root=root, folder=folder, timm=root / "timm", pixel_values=pixel_values, reference=reference)

"""Sharing sslhub models: model cards, pushing to the Hub, timm export, remote code and checkpoint converters.

Everything here works on saved model folders (`save_pretrained` output), so it serves every
`SSLHubPreTrainedModel` family. A published folder loads four ways: `sslhub` + `AutoModel`,
`AutoModel(..., trust_remote_code=True)` without sslhub (see `add_remote_code`), timm for the backbone
(see `export_timm`) and `pipeline("image-feature-extraction")`.

One module per capability: `folders` (resolving and describing a folder), `remote_code`, `cards`,
`timm_export`, `publish` (pushing) and the checkpoint converters, `convert` (shared part and dispatch),
`convert_moco` (MoCo v1/v2) and `convert_moco_v3`, and the model zoo: `zoo` (the catalogue, and from a
name to a converted folder) over `download` (resumable HTTP downloads). The public names are re-exported
here.
"""

from .cards import (
    FAMILIES,
    PAPERS,
    REPO_ID_PLACEHOLDER,
    TEMPLATE_PATH,
    merge_eval_results,
    portable_path,
    update_card_eval_results,
    write_model_card,
)
from .convert import (
    CheckpointError,
    convert_checkpoint,
    detect_layout,
    moco_checkpoint_to_model,
    read_checkpoint,
)
from .download import DownloadError, download_file
from .folders import describe_model, resolve_model_dir
from .onnx_export import check_onnx, export_onnx
from .publish import HubError, check_can_push, hub_endpoint, push_to_hub
from .remote_code import add_remote_code, remote_code_files
from .timm_export import export_timm
from .zoo import (
    ReportedResult,
    ZooEntry,
    convert_zoo_model,
    from_zoo,
    list_models,
    markdown_table,
    zoo_entry,
)

__all__ = [
    "FAMILIES",
    "PAPERS",
    "REPO_ID_PLACEHOLDER",
    "TEMPLATE_PATH",
    "CheckpointError",
    "DownloadError",
    "HubError",
    "ReportedResult",
    "ZooEntry",
    "add_remote_code",
    "check_can_push",
    "check_onnx",
    "convert_checkpoint",
    "convert_zoo_model",
    "describe_model",
    "detect_layout",
    "download_file",
    "export_onnx",
    "export_timm",
    "from_zoo",
    "hub_endpoint",
    "list_models",
    "markdown_table",
    "merge_eval_results",
    "moco_checkpoint_to_model",
    "portable_path",
    "push_to_hub",
    "read_checkpoint",
    "remote_code_files",
    "resolve_model_dir",
    "update_card_eval_results",
    "write_model_card",
    "zoo_entry",
]

"""The `sslhub` command line: its parser and help, importable without torch (so that `sslhub --help` and
`sslhub --version` answer at once). Running a command imports `sslhub.cli`, where the work is done.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

_EXAMPLES = {
    "convert": """examples:
  sslhub convert moco-v2-resnet50-800ep                   # a model of `sslhub zoo`, by name
  sslhub convert moco-v3-vit-small-300ep outputs/moco-v3-vit-s
  sslhub convert moco_v2_800ep_pretrain.pth.tar moco-v2-r50
  sslhub convert r-50-300ep.pth.tar moco-v3-r50 --arch resnet50
  sslhub convert vit-s-300ep.pth.tar moco-v3-vit-s --arch vit_small
  sslhub convert ckpt.pth.tar out --backbone test_vit --backbone-kwargs '{"img_size": 32, "patch_size": 8}'

Reads official MoCo v1/v2 (`module.encoder_q.*`, `fc` or `fc.0/fc.2` head) and MoCo v3
(`module.base_encoder.*`, ResNet or ViT) checkpoints, with or without `module.`, using
torch.load(weights_only=True). Writes a MoCoModel folder with its image processor, remote code and card.

A zoo name (a CHECKPOINT that is not a file) downloads the authors' checkpoint into HF_HOME/sslhub
(progress bar; an interrupted download resumes; SSLHUB_ZOO_MIRROR=URL takes the files from a mirror),
checks its size, MD5 and layout, and converts it into OUTPUT_DIR (default HF_HOME/sslhub/models/NAME) with
a card that carries the accuracy the authors report. A folder already converted is reused.""",
    "push": """examples:
  sslhub push outputs/moco-v2-cifar10 --repo-id my-org/moco-v2-resnet18-cifar10 --dry-run
  sslhub push outputs/moco-v2-cifar10 --repo-id my-org/moco-v2-resnet18-cifar10 --include-timm
  HF_ENDPOINT=https://hub.example.com sslhub push FOLDER --repo-id org/name --private

Uploads safetensors weights (never .bin/.pt), config, image processor, model card and the modeling code
(so `trust_remote_code=True` works without sslhub). Needs a token: `hf auth login` or HF_TOKEN.""",
    "card": """examples:
  sslhub card outputs/moco --name moco-v2-resnet18-cifar10 --family "MoCo v2" --paper moco-v2 \\
      --dataset uoft-cs/cifar10 --reproduce "make demo" --results results.json
  sslhub card outputs/moco --results results.json          # merge results into the existing card
  sslhub card outputs/moco --name my-model --copy-to model_cards/my-model.md   # rewrite, keeping results

results.json holds a list of {task_type, dataset_name, dataset_type, dataset_split, metric_type,
metric_name, metric_value (accuracy as a fraction in [0, 1])}.""",
    "embed": """examples:
  sslhub embed my-org/moco-v2-resnet18-cifar10 photos/ -o photos.safetensors
  sslhub embed outputs/moco uoft-cs/cifar10 --split test -o cifar-test.parquet --num-workers 4
  sslhub embed outputs/moco 'shards/*.parquet' -o emb.safetensors --shard-size 100000 --resume
  sslhub embed outputs/moco photos/ -o photos.npz --output-key projection

DATA is anything the recipes read: a folder of images (recursive), parquet files or a glob, a Hub dataset
id, a save_to_disk folder, or `sample`. Images are decoded as in training and preprocessed as the model's
image processor says; unreadable files are skipped and named. .safetensors holds the tensor `embeddings`
and the metadata `ids` (JSON: file names relative to the folder, else row indices); .parquet the columns
`id` and `embedding`; .npz the arrays `embeddings` and `files`. With --shard-size the files are
STEM-00000-of-0000K.SUFFIX, each written atomically: --resume keeps the complete ones.""",
    "info": """examples:
  sslhub info outputs/moco
  sslhub info my-org/moco-v2-resnet18-cifar10      # from the Hub, or the cache with HF_HUB_OFFLINE=1
  sslhub info outputs/moco --json""",
    "zoo": """examples:
  sslhub zoo                                   # every model sslhub knows, with the accuracy its source reports
  sslhub zoo --method moco-v3 --backbone 'vit*'
  sslhub zoo --json
  sslhub zoo show moco-v2-resnet50-800ep       # one model: its source, its numbers, how to load it

Official checkpoints load with `sslhub convert NAME` (or `sslhub.from_zoo(NAME)` in Python); the models
trained here name the command that trains them. Reported accuracies are the sources' numbers.""",
    "export-timm": """examples:
  sslhub export-timm outputs/moco outputs/moco-timm
  python -c 'import timm; timm.create_model("local-dir:outputs/moco-timm", pretrained=True)'

Writes the backbone in timm's Hub format (config.json with architecture and pretrained_cfg,
model.safetensors, README.md). Small-input (CIFAR) stems cannot be exported: timm cannot rebuild them.""",
}


_EXPORT_EXAMPLES = {
    "export": """examples:
  sslhub export onnx outputs/moco/final moco.onnx
  sslhub export timm outputs/moco/final outputs/moco-timm

Run `sslhub export onnx --help` or `sslhub export timm --help` for the options of each format.""",
    "onnx": """examples:
  sslhub export onnx outputs/moco/final moco.onnx
  sslhub export onnx my-org/moco-v2-resnet18-cifar10 moco-projection.onnx --output projection
  python -c 'import onnxruntime; print(onnxruntime.InferenceSession("moco.onnx").get_inputs()[0].shape)'

The graph takes `pixel_values` (batch, 3, H, W), float32, normalized as the folder's image processor
(preprocessor_config.json) does, with a dynamic batch axis, and returns one model output (the pooled
embedding by default). It is then run with ONNX Runtime at another batch size and compared with PyTorch.
Needs the onnx extra: pip install 'sslhub[onnx]'.""",
    "timm": _EXAMPLES["export-timm"].replace("sslhub export-timm", "sslhub export timm"),
}


def _add_export_timm_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model folder or Hub id")
    p.add_argument("output_dir", help="the timm folder to write")
    p.add_argument("--license", default="apache-2.0")
    p.add_argument("--source-repo-id", help="Hub id of the full sslhub model, linked from the card")
    p.set_defaults(run="_export_timm")


def _subcommand(subparsers, name: str, help: str, examples: dict[str, str]) -> argparse.ArgumentParser:
    """A sub-command whose `--help` shows its help line and its examples."""
    return subparsers.add_parser(
        name,
        help=help,
        description=help,
        epilog=examples[name],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `sslhub` command (one subparser per subcommand)."""
    parser = argparse.ArgumentParser(
        prog="sslhub",
        description="Self-supervised vision models on the Hugging Face Hub: zoo, convert, card, push, embed, "
        "info, export.",
        epilog="Run `sslhub COMMAND --help` for the options and examples of each command.",
    )
    parser.add_argument("--version", action="version", version=f"sslhub {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help: str) -> argparse.ArgumentParser:
        return _subcommand(sub, name, help, _EXAMPLES)

    p = add(
        "convert", "Convert an official MoCo v1/v2/v3 checkpoint into an sslhub model folder with a card."
    )
    p.add_argument(
        "checkpoint", help="the .pth.tar checkpoint (or a .safetensors state dict), or a name of `sslhub zoo`"
    )
    p.add_argument(
        "output_dir",
        nargs="?",
        help="the sslhub folder to write (for a zoo name: HF_HOME/sslhub/models/NAME)",
    )
    p.add_argument("--arch", help="override the checkpoint's `arch` (resnet50, vit_small, ...)")
    p.add_argument("--backbone", help="timm model name to use instead of the derived one")
    p.add_argument("--backbone-kwargs", help="JSON of extra timm.create_model arguments")
    p.add_argument(
        "--image-size", type=int, help="input size of the image processor (default 224, 32 for CIFAR stems)"
    )
    p.add_argument("--name", help="model name in the card (default: the output folder name; files only)")
    p.add_argument("--license", default="apache-2.0", help="license id of the weights (files only)")
    p.add_argument("--force", action="store_true", help="zoo names: convert again even if already converted")
    p.add_argument("-q", "--quiet", action="store_true", help="no download progress bar")
    p.set_defaults(run="_convert")

    p = add("push", "Publish a saved model folder to the Hugging Face Hub.")
    p.add_argument("folder", help="the model folder (save_pretrained output)")
    p.add_argument("--repo-id", required=True, help="org/name of the model repository (created if missing)")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--token", help="a write token (default: `hf auth login` or HF_TOKEN)")
    p.add_argument("--include-timm", action="store_true", help="also publish the backbone in timm's format")
    p.add_argument("--timm-repo-id", help="repository of the timm backbone (default: REPO_ID-timm)")
    p.add_argument("--dry-run", action="store_true", help="only list what would be uploaded")
    p.add_argument("-m", "--message", default="Upload sslhub model", help="commit message")
    p.set_defaults(run="_push")

    p = add("card", "Write a model folder's card (README.md) or merge evaluation results into it.")
    p.add_argument("folder", help="the model folder")
    p.add_argument("--name", help="model name (title and model-index name)")
    p.add_argument("--family", help='the method, e.g. "MoCo v2"')
    p.add_argument("--paper", help="moco-v1, moco-v2, moco-v3, seed, compress, colorization, or a citation")
    p.add_argument(
        "--base-model",
        help="the model this one comes from: a teacher or an init_from model (metadata if a Hub id)",
    )
    p.add_argument("--dataset", action="append", default=[], help="Hub id of a training dataset (repeatable)")
    p.add_argument("--reproduce", help="the command that reproduces the model")
    p.add_argument("--training-summary", help="JSON file of training settings shown in a table")
    p.add_argument("--results", help="JSON file with a list of evaluation results")
    p.add_argument("--limitations", help="the limitations paragraph")
    p.add_argument("--license", default="apache-2.0", help="license id (default apache-2.0)")
    p.add_argument("--repo-id", help="Hub id used in the loading examples (filled in at push otherwise)")
    p.add_argument("--copy-to", help="also copy the card there (e.g. model_cards/NAME.md)")
    p.set_defaults(run="_card")

    p = add(
        "embed", "Embed a dataset (folder, parquet, Hub id, ...) into .safetensors, .parquet or .npz files."
    )
    p.add_argument("model", help="model folder or Hub id (or timm:NAME)")
    p.add_argument("data", help="folder of images, parquet file or glob, Hub dataset id, save_to_disk folder")
    p.add_argument("-o", "--output", required=True, help="output file: .safetensors, .parquet or .npz")
    p.add_argument("--split", default="train", help="the split to embed (default train)")
    p.add_argument("--image-column", help="the image column, when it cannot be found")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-workers", type=int, default=2, help="DataLoader workers decoding images")
    p.add_argument("--precision", default="auto", help="auto (bf16 where native), no, bf16 or fp16")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--shard-size", type=int, help="rows per output file (default: one file)")
    p.add_argument("--resume", action="store_true", help="keep the files an interrupted run completed")
    p.add_argument(
        "--output-key", default="pooler_output", help="model output to save (pooler_output, projection)"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run="_embed")

    p = add("info", "Show what a model folder or Hub id contains.")
    p.add_argument("model", help="model folder or Hub id")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run="_info")

    p = add("zoo", "List the models sslhub knows (the model zoo), or show one and how to load it.")
    p.add_argument(
        "--method", help="keep models whose method contains this (moco, moco-v2, distillation, ...)"
    )
    p.add_argument("--backbone", help="keep models whose timm backbone matches this (resnet50, 'vit_*')")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--markdown", action="store_true", help="print the README's Markdown table")
    p.set_defaults(run="_zoo", zoo_command=None)
    zoo_sub = p.add_subparsers(dest="zoo_command", metavar="show NAME")
    show = zoo_sub.add_parser("show", help="one model: its source, its reported accuracy, how to load it")
    show.add_argument("name", help="the model's name")
    show.add_argument("--json", action="store_true", help="print JSON")

    p = add("export-timm", "Write a model's backbone in timm's Hub format (alias of `sslhub export timm`).")
    _add_export_timm_arguments(p)

    p = sub.add_parser(
        "export",
        help="Export a model: its embedding to ONNX, or its backbone in timm's Hub format.",
        description="Export a model: its embedding to ONNX, or its backbone in timm's Hub format.",
        epilog=_EXPORT_EXAMPLES["export"],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    formats = p.add_subparsers(dest="format", required=True, metavar="FORMAT")

    def add_format(name: str, help: str) -> argparse.ArgumentParser:
        return _subcommand(formats, name, help, _EXPORT_EXAMPLES)

    p = add_format(
        "onnx", "Export a model's embedding to ONNX (dynamic batch axis, float32), checked with ONNX Runtime."
    )
    p.add_argument("model", help="model folder or Hub id of an sslhub model")
    p.add_argument("output_path", help="the .onnx file to write")
    p.add_argument(
        "--output",
        default="pooler_output",
        help="model output to export: pooler_output (default), projection",
    )
    p.add_argument("--opset", type=int, help="ONNX opset (default 18, the dynamo exporter's own)")
    p.add_argument(
        "--exporter",
        choices=("dynamo", "torchscript"),
        help="torch.onnx.export(dynamo=True), the default from torch 2.5, or the deprecated TorchScript "
        "exporter (the default before)",
    )
    p.add_argument("--atol", type=float, default=1e-4, help="largest difference the check accepts (1e-4)")
    p.add_argument("--no-check", action="store_true", help="skip the comparison with ONNX Runtime")
    p.set_defaults(run="_export_onnx")

    p = add_format("timm", "Write a model's backbone in timm's Hub format (also `sslhub export-timm`).")
    _add_export_timm_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `sslhub` command; returns the exit status (1 with a one-line message on a user error)."""
    args = build_parser().parse_args(argv)
    from sslhub import cli
    from sslhub.hub.convert import CheckpointError
    from sslhub.hub.download import DownloadError
    from sslhub.hub.publish import HubError

    try:
        return getattr(cli, args.run)(args)
    except (HubError, CheckpointError, DownloadError, ValueError, FileNotFoundError) as error:
        print(f"sslhub {args.command}: error: {error}", file=sys.stderr)
        return 1


def _version() -> str:
    try:
        return version("sslhub")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())

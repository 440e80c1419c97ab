"""ONNX export: a model's embedding as an ONNX graph with a dynamic batch axis, checked with ONNX Runtime.

The graph takes `pixel_values` (N, 3, S, S), float32 (N dynamic, S the model's `image_size`), normalized as
the model's image processor (`preprocessor_config.json` of the folder) does, and returns one output of the
model (`pooler_output` by default, or e.g. `projection`).

The exporter is torch's `torch.export`-based one (`torch.onnx.export(..., dynamo=True)`): it has been
torch's default since 2.9, while the TorchScript exporter (`dynamo=False`) is deprecated. It captures
the whole graph ahead of time instead of tracing one call, so a dynamic batch axis is a checked
constraint (`torch.export.Dim`) rather than a hope that nothing in the Python code baked the example's
batch size into the graph. Measured on timm ResNets (with and without the small-input stem), ViTs (with
MoCo v3's fixed sin-cos position embedding), EfficientNets and the colorization encoder's Lab conversion:
both exporters agree with PyTorch to about 1e-6; the TorchScript exporter stays available
(`exporter="torchscript"`) for a model that `torch.export` cannot capture, and is the default where torch
is older than 2.5 (its `torch.onnx.export` takes no `dynamic_shapes`).
"""

from __future__ import annotations

import importlib.util
import inspect
import os
from pathlib import Path

import torch
from torch import nn

DEFAULT_OPSET = 18
"""The lowest opset of the `torch.export`-based exporter: its operator library is written for it, so no
version conversion runs, and ONNX Runtime from 1.14 and TensorRT from 8.6 load the graph."""

EXPORTERS = ("dynamo", "torchscript")
_ONNX_EXTRA = "pip install 'sslhub[onnx]'"


def dynamo_exporter_available() -> bool:
    """Whether this torch's `torch.onnx.export` takes `dynamic_shapes` (torch 2.5 and newer)."""
    return "dynamic_shapes" in inspect.signature(torch.onnx.export).parameters


def default_exporter() -> str:
    """`"dynamo"` where this torch has it, else `"torchscript"`."""
    return "dynamo" if dynamo_exporter_available() else "torchscript"


def _require(*modules: str) -> None:
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(
            f"ONNX export needs {', '.join(missing)}, which is not installed: {_ONNX_EXTRA} "
            "(onnx, onnxscript, onnxruntime)"
        )


class _SelectOutput(nn.Module):
    """`model(pixel_values)[output]`: one tensor out, the form an exported graph has."""

    def __init__(self, model: nn.Module, output: str) -> None:
        super().__init__()
        self.model = model
        self.output = output

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values)[self.output]


def load_model(model: nn.Module | str | os.PathLike) -> nn.Module:
    """A model as given, or the inference model of a folder / Hub id (`AutoModel`)."""
    if isinstance(model, nn.Module):
        return model
    from transformers import AutoModel

    from .folders import resolve_model_dir

    return AutoModel.from_pretrained(resolve_model_dir(model))


def _probe(model: nn.Module, batch_size: int, seed: int = 0) -> torch.Tensor:
    size = model.config.image_size
    return torch.randn(batch_size, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _check_output(model: nn.Module, output: str) -> None:
    with torch.no_grad():
        outputs = model(pixel_values=_probe(model, 2))
    available = [key for key, value in outputs.items() if isinstance(value, torch.Tensor)]
    if output not in available:
        raise ValueError(f"{type(model).__name__} has no {output!r} output; it has {available}")


def export_onnx(
    model: nn.Module | str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    output: str = "pooler_output",
    opset: int = DEFAULT_OPSET,
    exporter: str | None = None,
) -> Path:
    """Export a model's embedding to ONNX: input `pixel_values` (batch, 3, S, S), one output, float32.

    The batch axis is dynamic (named `batch`); height and width are fixed at `config.image_size`. The
    model is exported in eval mode and float32, on the CPU; weights over 2 GB go to `OUTPUT.onnx.data`.

    Args:
        model: an sslhub model (any `SSLHubPreTrainedModel` inference class), or a folder / Hub id of one
            (loaded with `AutoModel`).
        output_path: the `.onnx` file to write.
        output: the model output the graph returns, named as in the model's output: `"pooler_output"`
            (the pooled embedding), `"projection"` (the projection head's, where the model has one).
        opset: the ONNX opset (default `DEFAULT_OPSET`, 18).
        exporter: `"dynamo"` (`torch.onnx.export(..., dynamo=True)`, torch's default; needs torch 2.5) or
            `"torchscript"` (the deprecated tracing exporter, for a model `torch.export` cannot capture);
            default (`None`): `default_exporter()`, the dynamo exporter where this torch has it.

    Returns:
        `output_path`.

    Raises:
        ImportError: onnx (or onnxscript, for the dynamo exporter) is not installed.
        ValueError: an unknown `exporter`, `"dynamo"` on torch < 2.5, or an `output` the model does not
            return.
    """
    exporter = exporter or default_exporter()
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {list(EXPORTERS)}, got {exporter!r}")
    if exporter == "dynamo" and not dynamo_exporter_available():
        raise ValueError(
            f"the dynamo exporter needs torch >= 2.5 (torch {torch.__version__}'s torch.onnx.export takes no "
            "dynamic_shapes): use exporter='torchscript' (`--exporter torchscript`), or upgrade torch"
        )
    _require("onnx", *(["onnxscript"] if exporter == "dynamo" else []))
    model = load_model(model)
    was_training, parameter = model.training, next(model.parameters())
    model.cpu().float().eval()
    _check_output(model, output)
    graph = _SelectOutput(model, output).eval()
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    example = (_probe(model, 2),)  # batch 2: torch.export specializes sizes 0 and 1
    names = dict(input_names=["pixel_values"], output_names=[output], opset_version=opset)
    try:
        if exporter == "dynamo":
            size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
            torch.onnx.export(
                graph,
                example,
                str(output_path),
                dynamic_shapes={"pixel_values": {0: torch.export.Dim("batch")}},
                external_data=size > 2**31 - 2**26,  # protobuf's 2 GB limit, with room for the graph
                dynamo=True,
                **names,
            )
        else:
            torch.onnx.export(
                graph,
                example,
                str(output_path),
                dynamic_axes={"pixel_values": {0: "batch"}, output: {0: "batch"}},
                dynamo=False,
                **names,
            )
    except Exception as error:
        if exporter == "dynamo":
            raise RuntimeError(
                f"torch.onnx.export(dynamo=True) failed for {type(model).__name__} "
                f"({type(error).__name__}: {error}); the TorchScript exporter may still work: "
                "exporter='torchscript' (`--exporter torchscript`)"
            ) from error
        raise
    finally:
        model.to(parameter.device, parameter.dtype).train(was_training)
    return output_path


def check_onnx(
    model: nn.Module | str | os.PathLike,
    onnx_path: str | os.PathLike,
    *,
    output: str = "pooler_output",
    batch_size: int = 3,
) -> float:
    """Run an exported graph with ONNX Runtime (CPU) and PyTorch on the same random batch.

    Args:
        model: the model that was exported, or its folder / Hub id.
        onnx_path: the exported `.onnx` file.
        output: the model output the graph returns.
        batch_size: the batch to run; choose one other than the export's (2) to exercise the dynamic axis.

    Returns:
        The largest absolute difference between the two outputs.

    Raises:
        ImportError: onnxruntime is not installed.
    """
    _require("onnxruntime")
    import onnxruntime

    model = load_model(model)
    was_training = model.training
    model.eval()
    pixel_values = _probe(model, batch_size, seed=1)
    device = next(model.parameters()).device
    with torch.no_grad():
        expected = model(pixel_values=pixel_values.to(device))[output].float().cpu()
    model.train(was_training)
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"pixel_values": pixel_values.numpy()})
    if got.shape != tuple(expected.shape):
        raise ValueError(f"the ONNX graph returned shape {got.shape}, PyTorch {tuple(expected.shape)}")
    return float((torch.from_numpy(got) - expected).abs().max())

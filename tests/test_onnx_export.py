"""ONNX export: the graph runs in ONNX Runtime at another batch size and matches PyTorch."""

import pytest
import torch

from sslhub import MoCoModel
from sslhub.cli import main
from sslhub.hub.onnx_export import check_onnx, export_onnx

from .helpers import tiny_moco_v2, tiny_moco_v3

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

MODELS = {
    "moco-resnet": tiny_moco_v2,
    "moco-vit-sincos": lambda: tiny_moco_v3(position_embedding="sincos"),
}


def _run(path, pixel_values):
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"pixel_values": pixel_values.numpy()})[0])


@pytest.mark.parametrize("make_config", MODELS.values(), ids=MODELS.keys())
def test_exported_graph_matches_pytorch_at_another_batch_size(make_config, tmp_path):
    model = MoCoModel(make_config()).eval()
    path = export_onnx(model, tmp_path / "model.onnx")
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    (graph_input,) = graph.graph.input
    (graph_output,) = graph.graph.output
    assert graph_input.name == "pixel_values" and graph_output.name == "pooler_output"
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # fp32
    batch_axis = graph_input.type.tensor_type.shape.dim[0]
    assert batch_axis.dim_param and not batch_axis.HasField("dim_value")  # dynamic
    assert {o.domain or "ai.onnx": o.version for o in graph.opset_import}["ai.onnx"] == 18
    assert not list(tmp_path.glob("*.data"))  # weights inside the one file
    for batch in (1, 5):  # the export ran at batch 2
        pixel_values = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            expected = model(pixel_values).pooler_output
        got = _run(path, pixel_values)
        assert got.shape == expected.shape
        assert (got - expected).abs().max().item() <= 1e-4
    assert check_onnx(model, path) <= 1e-4


def test_cli_exports_a_folder_and_its_projection(tmp_path, capsys):
    model = MoCoModel(tiny_moco_v2()).eval()
    model.save_pretrained(tmp_path / "model")
    out = tmp_path / "onnx" / "projection.onnx"
    assert main(["export", "onnx", str(tmp_path / "model"), str(out), "--output", "projection"]) == 0
    printed = capsys.readouterr().out
    assert "projection" in printed and "max abs difference" in printed
    pixel_values = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = model(pixel_values).projection
    assert (_run(out, pixel_values) - expected).abs().max().item() <= 1e-4


def test_torchscript_exporter_is_available(tmp_path):
    model = MoCoModel(tiny_moco_v2()).eval()
    path = export_onnx(model, tmp_path / "model.onnx", exporter="torchscript")
    assert check_onnx(model, path) <= 1e-4


def test_torch_from_2_5_exports_with_dynamo_by_default():
    from sslhub.hub.onnx_export import default_exporter

    major, minor = (int(part) for part in torch.__version__.split(".")[:2])
    assert default_exporter() == ("dynamo" if (major, minor) >= (2, 5) else "torchscript")


def test_torch_without_the_dynamo_exporter_defaults_to_torchscript(tmp_path, monkeypatch, capsys):
    # torch 2.4's torch.onnx.export has a `dynamo` flag but no `dynamic_shapes`.
    from sslhub.hub import onnx_export

    def torch_2_4_export(model, args, f=None, *, dynamic_axes=None, dynamo=False, **kwargs):
        assert not dynamo
        return torch_export(model, args, f, dynamic_axes=dynamic_axes, dynamo=False, **kwargs)

    torch_export = torch.onnx.export
    monkeypatch.setattr(torch.onnx, "export", torch_2_4_export)
    assert onnx_export.default_exporter() == "torchscript"
    model = MoCoModel(tiny_moco_v2()).eval()
    with pytest.raises(ValueError, match=r"dynamo exporter needs torch >= 2.5.*exporter='torchscript'"):
        export_onnx(model, tmp_path / "dynamo.onnx", exporter="dynamo")
    assert not (tmp_path / "dynamo.onnx").exists()
    model.save_pretrained(tmp_path / "model")
    assert main(["export", "onnx", str(tmp_path / "model"), str(tmp_path / "model.onnx")]) == 0
    assert "max abs difference" in capsys.readouterr().out


def test_unknown_output_and_exporter_are_refused(tmp_path):
    model = MoCoModel(tiny_moco_v2(projector_num_layers=0))
    with pytest.raises(ValueError, match="has no 'projection' output"):
        export_onnx(model, tmp_path / "model.onnx", output="projection")
    with pytest.raises(ValueError, match="exporter must be one of"):
        export_onnx(model, tmp_path / "model.onnx", exporter="tensorrt")


def test_missing_packages_name_the_extra(tmp_path, monkeypatch, capsys):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name.startswith("onnx") else find_spec(name, *a)
    )
    with pytest.raises(ImportError, match=r"onnxruntime.*sslhub\[onnx\]"):
        check_onnx(MoCoModel(tiny_moco_v2()), tmp_path / "missing.onnx")
    MoCoModel(tiny_moco_v2()).save_pretrained(tmp_path / "model")
    assert main(["export", "onnx", str(tmp_path / "model"), str(tmp_path / "model.onnx")]) == 1
    error = capsys.readouterr().err
    assert "onnx, onnxscript" in error and "sslhub[onnx]" in error
    assert not (tmp_path / "model.onnx").exists()


@pytest.mark.parametrize("command", [["export"], ["export", "onnx"], ["export", "timm"], ["export-timm"]])
def test_export_commands_have_help_with_examples(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: sslhub {' '.join(command)}" in out and "examples:" in out
    if command == ["export-timm"]:
        assert "alias of `sslhub export timm`" in out


def test_export_timm_and_its_alias_write_the_same_folder(tmp_path):
    from safetensors.torch import load_file

    MoCoModel(tiny_moco_v2()).save_pretrained(tmp_path / "model")
    assert main(["export", "timm", str(tmp_path / "model"), str(tmp_path / "a")]) == 0
    assert main(["export-timm", str(tmp_path / "model"), str(tmp_path / "b")]) == 0
    a, b = (load_file(tmp_path / name / "model.safetensors") for name in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

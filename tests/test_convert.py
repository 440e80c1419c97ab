"""Converters of the official MoCo checkpoint layouts, checked against the authors' way of loading them."""

import json

import pytest
import timm
import torch
import torchvision
from huggingface_hub import ModelCard
from torch import nn

from sslhub import MoCoModel
from sslhub.hub import convert, convert_moco_v3

from .checkpoints import TINY_RESNET50, build_mlp, official_checkpoint, randomize_batch_norm, write_checkpoint


def moco_v1_v2_encoder(version: str, dim: int = 32) -> nn.Module:
    """The query encoder of the authors' MoCo v1/v2 builder on a torchvision ResNet-18."""
    encoder = torchvision.models.resnet18(num_classes=dim)
    if version == "v2":
        dim_mlp = encoder.fc.weight.shape[1]
        encoder.fc = nn.Sequential(nn.Linear(dim_mlp, dim_mlp), nn.ReLU(), encoder.fc)
    randomize_batch_norm(encoder)
    return encoder.eval()


def authors_linear_eval_backbone(path, encoder_name: str) -> nn.Module:
    """Load a checkpoint the way the authors' main_lincls.py does: encoder minus `fc`, into torchvision."""
    state_dict = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    for key in list(state_dict):
        stripped = key.removeprefix("module.")
        if stripped.startswith(f"{encoder_name}.") and not stripped.startswith(f"{encoder_name}.fc"):
            state_dict[stripped[len(encoder_name) + 1 :]] = state_dict[key]
        del state_dict[key]
    model = torchvision.models.resnet18()
    message = model.load_state_dict(state_dict, strict=False)
    assert set(message.missing_keys) == {"fc.weight", "fc.bias"}
    model.fc = nn.Identity()
    return model.eval()


@pytest.mark.parametrize(
    "version, ddp, arch",
    [("v1", True, "resnet18"), ("v2", True, "resnet18"), ("v2", False, None)],
)
def test_moco_v1_v2_conversion_matches_the_authors_backbone(tmp_path, version, ddp, arch):
    encoder_q = moco_v1_v2_encoder(version)
    extra = {"queue": torch.randn(32, 64), "queue_ptr": torch.zeros(1, dtype=torch.long)}
    path = tmp_path / "checkpoint_0199.pth.tar"
    write_checkpoint(
        path, {"encoder_q": encoder_q, "encoder_k": moco_v1_v2_encoder(version)}, extra, ddp, arch
    )

    out = convert.convert_checkpoint(path, tmp_path / "converted")
    model = MoCoModel.from_pretrained(out).eval()
    assert model.config.version == version and model.config.backbone == "resnet18"
    assert model.config.queue_size == 64 and model.config.projection_dim == 32
    assert model.config.projector_num_layers == (1 if version == "v1" else 2)
    reference = authors_linear_eval_backbone(path, "encoder_q")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        output = model(x)
        torch.testing.assert_close(output.pooler_output, reference(x), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(output.projection, encoder_q(x), rtol=1e-4, atol=1e-5)


def test_moco_v3_resnet_conversion(tmp_path):
    base_encoder = torchvision.models.resnet18()
    base_encoder.fc = build_mlp(2, 512, 48, 32)
    momentum_encoder = torchvision.models.resnet18()
    momentum_encoder.fc = build_mlp(2, 512, 48, 32)
    randomize_batch_norm(base_encoder)
    predictor = build_mlp(2, 32, 48, 32, last_bn=False)
    base_encoder.eval()
    path = tmp_path / "r-18-300ep.pth.tar"
    extra = {f"predictor.{k}": v for k, v in predictor.state_dict().items()}
    write_checkpoint(
        path, {"base_encoder": base_encoder, "momentum_encoder": momentum_encoder}, extra, True, "resnet18"
    )

    model = MoCoModel.from_pretrained(convert.convert_checkpoint(path, tmp_path / "converted")).eval()
    config = model.config
    assert (config.version, config.projector_num_layers, config.projector_hidden_size) == ("v3", 2, 48)
    assert config.projector_batch_norm and config.projector_last_batch_norm
    assert (config.predictor_num_layers, config.predictor_last_batch_norm) == (2, False)
    reference = authors_linear_eval_backbone(path, "base_encoder")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        output = model(x)
        torch.testing.assert_close(output.pooler_output, reference(x), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(output.projection, base_encoder(x), rtol=1e-4, atol=1e-5)


def test_moco_v3_vit_conversion(tmp_path):
    # The authors' ViT is a timm VisionTransformer; its head is replaced by the 3-layer BN projector.
    vit = timm.create_model("test_vit", img_size=32, patch_size=8)
    vit.head = build_mlp(3, vit.embed_dim, 48, 32)
    randomize_batch_norm(vit)
    vit.eval()
    path = tmp_path / "vit-test.pth.tar"
    write_checkpoint(path, {"base_encoder": vit}, {}, False, "vit_test")

    out = convert.convert_checkpoint(path, tmp_path / "converted", backbone="test_vit")
    model = MoCoModel.from_pretrained(out).eval()
    assert model.config.backbone_kwargs == {"img_size": 32, "patch_size": 8}
    assert model.config.image_size == 32 and model.config.projector_num_layers == 3
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        pooled = vit.forward_head(vit.forward_features(x), pre_logits=True)
        output = model(x)
        torch.testing.assert_close(output.pooler_output, pooled, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(output.projection, vit(x), rtol=1e-4, atol=1e-5)


def test_moco_v3_vit_names():
    def shapes(width, patch=16, grid=14):
        return {
            "base_encoder.cls_token": torch.empty(1, 1, width),
            "base_encoder.patch_embed.proj.weight": torch.empty(width, 3, patch, patch),
            "base_encoder.pos_embed": torch.empty(1, grid * grid + 1, width),
        }

    # MoCo v3's vit_small has 12 heads where timm's has 6: the converter must keep the authors' 12.
    assert convert_moco_v3._vit_backbone(shapes(384), "base_encoder.", "vit_small") == (
        "vit_small_patch16_224",
        {"num_heads": 12, "img_size": 224, "patch_size": 16},
    )
    assert convert_moco_v3._vit_backbone(shapes(768), "base_encoder.", None)[0] == "vit_base_patch16_224"
    with pytest.raises(convert.CheckpointError, match="pass --backbone"):
        convert_moco_v3._vit_backbone(shapes(64), "base_encoder.", "vit_test")


def test_converted_folder_has_card_and_remote_code(tmp_path):
    path = tmp_path / "moco_v2.pth.tar"
    write_checkpoint(path, {"encoder_q": moco_v1_v2_encoder("v2")}, {}, True, None)
    out = convert.convert_checkpoint(path, tmp_path / "moco-v2-r18")
    card = ModelCard.load(out / "README.md")
    assert card.data.pipeline_tag == "image-feature-extraction"
    assert "sslhub convert moco_v2.pth.tar moco-v2-r18" in card.text
    assert "arxiv.org/abs/2003.04297" in card.text
    assert json.loads((out / "config.json").read_text())["auto_map"]["AutoModel"] == "modeling_moco.MoCoModel"
    assert (out / "modeling_moco.py").is_file() and (out / "model.safetensors").is_file()
    assert not list(out.glob("*.bin"))


def test_not_a_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "notes.pth.tar"
    path.write_text("not a checkpoint")
    with pytest.raises(
        convert.CheckpointError, match="torch.load\\(weights_only=True\\).*encoder_q.*base_encoder"
    ):
        convert.convert_checkpoint(path, tmp_path / "out")


def test_unsafe_pickle_is_refused(tmp_path):
    path = tmp_path / "args.pth.tar"
    torch.save({"state_dict": {}, "args": nn.Linear(2, 2)}, path)  # a module needs full unpickling
    with pytest.raises(convert.CheckpointError, match="weights_only=True"):
        convert.read_checkpoint(path)


def test_unknown_layout_names_the_expected_ones(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"state_dict": {"backbone.stem.weight": torch.zeros(1)}}, path)
    with pytest.raises(
        convert.CheckpointError, match="unknown checkpoint layout.*backbone.stem.weight.*encoder_q"
    ):
        convert.convert_checkpoint(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_wrong_backbone_is_a_clear_error(tmp_path):
    path = tmp_path / "ckpt.pth.tar"
    write_checkpoint(path, {"encoder_q": moco_v1_v2_encoder("v2")}, {}, True, None)
    with pytest.raises(convert.CheckpointError, match="does not fit resnet34"):
        convert.convert_checkpoint(path, tmp_path / "out", arch="resnet34")


def test_backbone_rescues_a_resnet_depth_no_table_lists(tmp_path):
    path = tmp_path / "tiny.pth.tar"
    encoder = official_checkpoint("moco_v2", path)
    state_dict, _ = convert.read_checkpoint(path)
    # Without an `arch`, bottleneck blocks (1, 1, 1, 1) match no known ResNet ...
    with pytest.raises(convert.CheckpointError, match="cannot tell which ResNet.*pass --arch or --backbone"):
        convert.moco_checkpoint_to_model(state_dict)
    # ... and --backbone names it, whatever `arch` says.
    for arch in (None, "vit_small"):
        model = convert.moco_checkpoint_to_model(
            state_dict, arch=arch, backbone="resnet50", backbone_kwargs=TINY_RESNET50
        )
        assert model.config.backbone == "resnet50"
        x = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(model(x).projection, encoder(x), rtol=1e-4, atol=1e-5)

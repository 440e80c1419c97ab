"""What every sslhub model shares: weight-init rules and post-load work under `from_pretrained`, the saved
image processor."""

from __future__ import annotations

import math
import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import BitImageProcessor, PreTrainedModel
from transformers import initialization as init
from transformers.dynamic_module_utils import get_relative_import_files
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutputWithNoAttention

from .backbones import backbone_features, has_fixed_position_embedding, reset_sincos_position_embedding
from .configuration_common import SSLHubConfig, check_choice

EMBEDDINGS = ("auto", "projection", "pooled", "logits", "cls", "mean")
# Fields of a model output tried in order, per choice of `output_embedding`.
_OUTPUT_FIELDS = {
    "auto": ("projection", "pooler_output", "logits", "last_hidden_state"),
    "projection": ("projection",),
    "pooled": ("pooler_output", "last_hidden_state"),
    "logits": ("logits",),
    "cls": ("last_hidden_state",),
    "mean": ("last_hidden_state",),
}


def _reduce_to_embedding(tensor: torch.Tensor, how: str) -> torch.Tensor:
    """(N, D) as is; tokens (N, L, D) -> first token (`"cls"`) or their mean; maps (N, C, h, w) -> spatial mean."""
    if tensor.ndim == 2:
        return tensor
    if tensor.ndim == 3:
        return tensor[:, 0] if how == "cls" else tensor.mean(dim=1)
    if tensor.ndim == 4:
        return tensor.mean(dim=(2, 3))
    raise ValueError(f"cannot turn a model output of shape {tuple(tensor.shape)} into (N, D) embeddings")


def output_embedding(output, how: str = "auto") -> torch.Tensor:
    """The (N, D) embedding in the output of any image model: an sslhub model, a timm model, a transformers
    model (a teacher in distillation, an encoder in evaluation).

    Args:
        output: a tensor, a `ModelOutput` / dict, or a tuple (its first element is used).
        how: `"auto"` (the first present of `projection`, `pooler_output`, `logits`, mean of
            `last_hidden_state`), `"projection"`, `"pooled"` (`pooler_output`, else mean of
            `last_hidden_state`), `"logits"`, `"cls"` (first token) or `"mean"` (mean of the tokens / map).
    """
    check_choice("how", how, EMBEDDINGS)
    if isinstance(output, torch.Tensor):
        return _reduce_to_embedding(output, how)
    if isinstance(output, Mapping) or hasattr(output, "__dataclass_fields__"):
        for field in _OUTPUT_FIELDS[how]:
            value = output.get(field) if isinstance(output, Mapping) else getattr(output, field, None)
            if value is not None:
                return _reduce_to_embedding(value, how)
        raise ValueError(f"the model's output has none of {list(_OUTPUT_FIELDS[how])} (how={how!r})")
    if isinstance(output, (tuple, list)) and output:
        return output_embedding(output[0], how)
    raise TypeError(f"cannot read an embedding from a model output of type {type(output).__name__}")


@dataclass
class EncoderOutput(BaseModelOutputWithPooling):
    """Output of an sslhub encoder (`MoCoModel`, `StudentModel`, `ColorizationModel`): transformers'
    `BaseModelOutputWithPooling`, plus the projection head's output.

    Args:
        last_hidden_state: the backbone's last feature map (N, C, h, w) or tokens (N, L, C): timm's
            `forward_features`, which `pooler_output` is pooled from.
        pooler_output: (N, num_features) pooled embedding, the feature used downstream.
        hidden_states: with `output_hidden_states=True`, the backbone's intermediate feature maps or tokens,
            from timm's `forward_intermediates` (see `backbones.backbone_intermediates`).
        attentions: always None (timm backbones do not return them).
        projection: (N, D) projector output (the embedding the training loss compares), when a projector exists.
    """

    projection: torch.Tensor | None = None


class EncoderMixin:
    """`forward` of an sslhub encoder with a `backbone` and an optional `projector` (`MoCoModel`, `StudentModel`)."""

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> EncoderOutput | tuple:
        """Embed normalized images.

        Args:
            pixel_values: (N, 3, H, W) images normalized by the model's image processor.
            output_hidden_states: also return the backbone's intermediate feature maps / tokens.
        """
        check_pixel_values(pixel_values)
        return encode(
            self.backbone,
            self.projector,
            pixel_values,
            outputs_hidden_states(self.config, output_hidden_states),
            returns_dict(self.config, return_dict),
        )


def returns_dict(config, return_dict: bool | None) -> bool:
    """Whether a call returns a `ModelOutput` (else a tuple): its `return_dict`, else the config's."""
    return bool(getattr(config, "return_dict", True) if return_dict is None else return_dict)


def outputs_hidden_states(config, output_hidden_states: bool | None) -> bool:
    """Whether a call returns the intermediate feature maps / tokens: its argument, else the config's."""
    if output_hidden_states is None:
        return bool(getattr(config, "output_hidden_states", False))
    return bool(output_hidden_states)


def check_pixel_values(pixel_values, channels: int = 3) -> None:
    """Refuse what is not a batch of normalized images (N, channels, H, W) before the backbone fails on it."""
    if not isinstance(pixel_values, torch.Tensor):
        raise TypeError(
            f"pixel_values must be a tensor (N, {channels}, H, W), not {type(pixel_values).__name__}: "
            "prepare images with the model's image processor, "
            "e.g. `model(**processor(images=images, return_tensors='pt'))`"
        )
    if torch.jit.is_tracing():  # TorchScript export: the shapes are those of the example input
        return
    if pixel_values.ndim != 4 or pixel_values.shape[1] != channels or not pixel_values.is_floating_point():
        raise ValueError(
            f"pixel_values must be float images (N, {channels}, H, W), got {pixel_values.dtype} of shape "
            f"{tuple(pixel_values.shape)}: prepare images with the model's image processor"
        )


def encode(
    backbone: nn.Module,
    projector: nn.Module | None,
    pixel_values: torch.Tensor,
    output_hidden_states: bool = False,
    return_dict: bool = True,
) -> EncoderOutput | tuple:
    """Run a backbone (and projector) on normalized images: the forward pass every sslhub encoder shares."""
    features, pooled, hidden_states = backbone_features(backbone, pixel_values, output_hidden_states)
    output = EncoderOutput(
        last_hidden_state=features,
        pooler_output=pooled,
        hidden_states=hidden_states,
        projection=projector(pooled) if projector is not None else None,
    )
    return output if return_dict else output.to_tuple()


class ImageClassifierMixin:
    """An sslhub encoder with a linear classifier on its pooled embedding (linear probe or fine-tuning).

    The encoder sits under the family's `base_model_prefix`, so its weights load from any folder of the
    family (inference or training checkpoint); its projection head is dropped (the classifier reads the
    pooled embedding, as in the papers' linear evaluation) and the classifier is new. The loss is
    transformers' for `config.problem_type` (`self.loss_function`, as in `ResNetForImageClassification`):
    cross-entropy (`single_label_classification`, integer labels (N,)), BCE with logits
    (`multi_label_classification`, float labels (N, num_labels)) or MSE (`regression`); left unset, it
    is inferred from `num_labels` and the labels' dtype and written into the config. For a linear probe,
    freeze the encoder (`model.base_model.requires_grad_(False)`) and keep it in eval mode.
    """

    def _init_classifier(self, encoder: nn.Module) -> None:
        """Hold `encoder` under `base_model_prefix` and a linear classifier on its pooled embedding."""
        if hasattr(encoder, "projector"):
            encoder.projector = None
        setattr(self, self.base_model_prefix, encoder)
        self.num_labels = self.config.num_labels
        self.classifier = nn.Linear(encoder.num_features, self.config.num_labels)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> ImageClassifierOutputWithNoAttention | tuple:
        """Classify normalized images (N, 3, H, W); with `labels`, also return the loss of `config.problem_type`."""
        encoded = self.base_model(
            pixel_values,
            output_hidden_states=outputs_hidden_states(self.config, output_hidden_states),
            return_dict=True,
        )
        logits = self.classifier(encoded.pooler_output)  # (N, num_labels)
        loss = self.loss_function(labels, logits, self.config) if labels is not None else None
        output = ImageClassifierOutputWithNoAttention(
            loss=loss, logits=logits, hidden_states=encoded.hidden_states
        )
        return output if returns_dict(self.config, return_dict) else output.to_tuple()


def image_processor_for(config: SSLHubConfig) -> BitImageProcessor:
    """The inference preprocessing of a model: resize, centre-crop to `image_size`, normalize.

    Built from the config's `image_size`, `crop_pct`, `image_mean` and `image_std`, i.e. the
    normalization the model was trained with.
    """
    size = config.image_size
    return BitImageProcessor(
        do_resize=True,
        size={"shortest_edge": int(math.floor(size / config.crop_pct))},
        do_center_crop=True,
        crop_size={"height": size, "width": size},
        do_normalize=True,
        image_mean=list(config.image_mean),
        image_std=list(config.image_std),
        do_convert_rgb=True,
    )


def loaded_state_keys(model: nn.Module) -> set[str]:
    """Names of the state-dict tensors that `from_pretrained` read from the checkpoint.

    transformers (5.x) marks every tensor it loads with `_is_hf_initialized`, the flag its guarded init
    functions check to leave loaded tensors alone; the tests of both folder kinds (inference folder, full
    training checkpoint) check that this still holds.
    """
    return {
        name
        for name, tensor in model.state_dict(keep_vars=True).items()
        if getattr(tensor, "_is_hf_initialized", False)
    }


def code_files(module_file: Path) -> list[Path]:
    """A module's file and the files it imports with single-dot relative imports: what transformers copies as
    remote code, flattened by name next to the weights."""
    return [module_file, *map(Path, get_relative_import_files(str(module_file)))]


class SSLHubPreTrainedModel(PreTrainedModel):
    """Base class of sslhub models.

    Weight initialization: a freshly built model keeps the initialization its timm backbone and torch
    modules chose. Under `from_pretrained`, only tensors absent from the checkpoint are initialized
    (`_init_weights`, through transformers' guarded init functions). Then `_after_load` always runs: it
    settles model-level state from what the checkpoint held (a key encoder copied from the query encoder, a
    fresh queue, uniform class weights) and re-applies what loading undoes (transformers rebuilds every
    loaded parameter with `requires_grad=True`, so a frozen key encoder must be frozen again). It is not
    left to `_init_weights`, which transformers calls only on modules with tensors of their own missing.

    `save_pretrained` also writes `preprocessor_config.json`, so `AutoImageProcessor` and
    `pipeline("image-feature-extraction")` work on the saved folder.
    """

    config_class = SSLHubConfig
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True

    def init_weights(self) -> None:
        # A fresh model is already initialized by timm/torch; re-running a generic init would overwrite
        # timm's schemes (zero-init residual BN, ViT trunc-normal) with worse ones.
        self.tie_weights(recompute_mapping=False)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            module.reset_parameters()  # guarded: skips tensors that were loaded
        elif isinstance(module, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)):
            if getattr(module, "weight", None) is not None:
                init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                init.zeros_(module.bias)
            if getattr(module, "running_mean", None) is not None:
                init.zeros_(module.running_mean)
                init.ones_(module.running_var)
                init.zeros_(module.num_batches_tracked)
        else:
            for parameter in module.parameters(recurse=False):  # e.g. a ViT's cls_token and pos_embed
                init.trunc_normal_(parameter, std=0.02)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """`PreTrainedModel.from_pretrained` (a folder or a Hub id), then `_after_load` on the result.

        The loaded model is a correct starting point for more training as well as for inference.
        """
        result = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        model = result[0] if isinstance(result, tuple) else result  # (model, loading_info) on request
        with torch.no_grad():
            model._after_load(loaded_state_keys(model))
        return result

    def _after_load(self, loaded: set[str]) -> None:
        """Settle the state after `from_pretrained`; `loaded` names the state-dict tensors the checkpoint held.

        Here: a fixed sin-cos position embedding the checkpoint lacked is refilled (it is a buffer, so it
        stays out of `parameters()` whatever was loaded). Subclasses extend it and call `super()` first.
        """
        for name, module in self.named_modules():
            key = f"{name}.pos_embed" if name else "pos_embed"
            if has_fixed_position_embedding(module) and key not in loaded:
                reset_sincos_position_embedding(module)

    def _set_gradient_checkpointing(
        self, enable: bool = True, gradient_checkpointing_func=None, **kwargs
    ) -> None:
        # timm backbones checkpoint their own blocks (`set_grad_checkpointing`).
        for module in self.modules():
            if hasattr(module, "set_grad_checkpointing") and module is not self:
                module.set_grad_checkpointing(enable)

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs) -> None:
        """`PreTrainedModel.save_pretrained`, plus the image processor and, when the config has an `auto_map`
        (a model loaded from a folder with remote code), the modules it names."""
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            image_processor_for(self.config).save_pretrained(save_directory)
            self._save_remote_code(Path(save_directory))

    def _save_remote_code(self, save_directory: Path) -> None:
        """Copy the modules of `config.auto_map` and their relative imports next to the weights.

        A model loaded from a published folder keeps its config's `auto_map`; without the files it names, the
        re-saved folder (a fine-tuned classifier, `push_to_hub`) would claim remote code it lacks and fail to
        load with `trust_remote_code=True` where sslhub is not installed. The files are this model's own
        modules (sslhub's, or the remote-code copies it was loaded from).
        """
        auto_map = getattr(self.config, "auto_map", None) or {}
        source = Path(sys.modules[type(self).__module__].__file__).parent
        modules = {ref.split("--")[-1].split(".")[0] for ref in auto_map.values() if isinstance(ref, str)}
        for module in sorted(modules):
            module_file = source / f"{module}.py"
            if not module_file.is_file():
                continue
            for file in code_files(module_file):
                if file.resolve() != (save_directory / file.name).resolve():
                    shutil.copyfile(file, save_directory / file.name)

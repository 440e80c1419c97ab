"""What every sslhub model shares: weight-init rules under `from_pretrained`, the saved image processor."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
from torch import nn
from transformers import BitImageProcessor, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .backbones import backbone_features
from .configuration_common import SSLHubConfig


@dataclass
class EncoderOutput(ModelOutput):
    """Output of an sslhub encoder (`MoCoModel`, `StudentModel`).

    Args:
        pooler_output: (N, num_features) pooled backbone embedding, the feature used downstream.
        projection: (N, D) projector output (the embedding the training loss compares), when a projector exists.
        last_hidden_state: the backbone's last feature map (N, C, h, w) or tokens (N, L, C); only with
            `output_hidden_states=True`.
    """

    pooler_output: torch.Tensor | None = None
    projection: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None


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
            output_hidden_states: also return the backbone's last feature map / tokens.
        """
        return encode(self.backbone, self.projector, pixel_values, output_hidden_states, return_dict)


def encode(
    backbone: nn.Module,
    projector: nn.Module | None,
    pixel_values: torch.Tensor,
    output_hidden_states: bool | None = None,
    return_dict: bool | None = None,
) -> EncoderOutput | tuple:
    """Run a backbone (and projector) on normalized images: the forward pass every sslhub encoder shares."""
    features, pooled = backbone_features(backbone, pixel_values)
    output = EncoderOutput(
        pooler_output=pooled,
        projection=projector(pooled) if projector is not None else None,
        last_hidden_state=features if output_hidden_states else None,
    )
    return output if return_dict is not False else output.to_tuple()


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


class SSLHubPreTrainedModel(PreTrainedModel):
    """Base class of sslhub models.

    Weight initialization: a freshly built model keeps the initialization its timm backbone and torch
    modules chose. Under `from_pretrained`, only tensors absent from the checkpoint are initialized
    (`_init_weights`, through transformers' guarded init functions); subclasses with extra state (a
    key encoder, a queue) fill it in `_init_extra_state`.

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
        if module is self:
            self._init_extra_state()

    def _init_extra_state(self) -> None:
        """Initialize model-level state missing from a checkpoint (after every submodule is settled)."""

    def _set_gradient_checkpointing(
        self, enable: bool = True, gradient_checkpointing_func=None, **kwargs
    ) -> None:
        # timm backbones checkpoint their own blocks (`set_grad_checkpointing`).
        for module in self.modules():
            if hasattr(module, "set_grad_checkpointing") and module is not self:
                module.set_grad_checkpointing(enable)

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs) -> None:
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            image_processor_for(self.config).save_pretrained(save_directory)

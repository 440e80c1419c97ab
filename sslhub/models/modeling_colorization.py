"""Colorization as Hugging Face models: "Colorful Image Colorization" (Zhang, Isola, Efros 2016).

- `ColorizationModel`: the encoder (a timm backbone on the L channel), what downstream code loads.
- `ColorizationForImageClassification`: the encoder with a linear head, for linear probing or fine-tuning.
- `ColorizationForPreTraining`: the encoder, a decoder to logits over the 313 ab bins at 1/4 resolution and
  the class-rebalanced cross-entropy against soft-encoded targets.

Both take RGB `pixel_values` normalized by the model's image processor, like every sslhub model, and turn
them into Lab themselves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import ModelOutput

from .backbones import backbone_features, create_backbone
from .color import (
    ab_bin_centers,
    annealed_mean,
    colorize,
    lightness_to_input,
    loss_mask,
    rebalancing_weights,
    rgb_to_lab,
    soft_encode_ab,
)
from .configuration_colorization import ColorizationConfig
from .losses_colorization import colorization_cross_entropy
from .modeling_common import (
    EncoderOutput,
    ImageClassifierMixin,
    SSLHubPreTrainedModel,
    check_pixel_values,
    encode,
    outputs_hidden_states,
    returns_dict,
)

ColorizationModelOutput = EncoderOutput  # last_hidden_state, pooler_output, hidden_states (no projection)


@dataclass
class ColorizationForPreTrainingOutput(ModelOutput):
    """Output of `ColorizationForPreTraining`.

    Args:
        loss: the class-rebalanced cross-entropy against the soft-encoded ab targets.
        logits: (N, 313, H / 4, W / 4) logits over the ab bins.
        pooler_output: (N, num_features) pooled embedding of the encoder.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None


def feature_map(
    features: torch.Tensor, num_features: int, num_prefix_tokens: int, image_size: tuple[int, int]
) -> torch.Tensor:
    """A timm `forward_features` output as an (N, C, h, w) map.

    CNNs already give NCHW; channels-last maps (N, h, w, C) are permuted; ViT tokens (N, L, C) lose their
    `num_prefix_tokens` (class/register tokens) and are laid out on the patch grid, whose shape follows
    the input's aspect ratio.
    """
    if features.ndim == 4:
        if features.shape[1] != num_features and features.shape[-1] == num_features:
            features = features.permute(0, 3, 1, 2)  # (N, C, h, w)
        return features
    tokens = features[:, num_prefix_tokens:]  # (N, h * w, C)
    height, width = image_size
    grid_h = round(height * math.sqrt(tokens.shape[1] / (height * width)))
    grid_w = tokens.shape[1] // max(grid_h, 1)
    if grid_h * grid_w != tokens.shape[1]:
        raise ValueError(f"cannot lay {tokens.shape[1]} tokens on a grid for an input of {height}x{width}")
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], grid_h, grid_w)


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class ColorizationDecoder(nn.Module):
    """Backbone feature map -> logits over the ab bins at 1/`output_stride` of the input resolution.

    A 1x1 projection to `hidden_size`, bilinear upsampling to the output resolution, `num_layers` 3x3
    convolutions there (BN, ReLU), then a 1x1 classifier over the bins, in the spirit of the paper's
    upsampling conv8 block and its 1x1 313-way output layer.
    """

    def __init__(
        self, in_channels: int, hidden_size: int, num_layers: int, num_bins: int, output_stride: int = 4
    ) -> None:
        super().__init__()
        self.output_stride = output_stride
        self.projection = _conv_bn_relu(in_channels, hidden_size, 1)
        self.layers = nn.Sequential(*[_conv_bn_relu(hidden_size, hidden_size, 3) for _ in range(num_layers)])
        self.classifier = nn.Conv2d(hidden_size, num_bins, kernel_size=1)

    def forward(self, features: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """Map (N, C, h, w) features of an (H, W) input to (N, Q, H / stride, W / stride) logits."""
        size = (max(image_size[0] // self.output_stride, 1), max(image_size[1] // self.output_stride, 1))
        x = self.projection(features)  # (N, hidden, h, w)
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)  # (N, hidden, H/4, W/4)
        return self.classifier(self.layers(x))  # (N, Q, H/4, W/4)


class ColorizationPreTrainedModel(SSLHubPreTrainedModel):
    """Base class of the colorization models: the config class and the prefix of the encoder's weights."""

    config_class = ColorizationConfig
    base_model_prefix = "encoder"
    # Loading an encoder from a pre-training checkpoint leaves out the decoder: not worth a warning.
    _keys_to_ignore_on_load_unexpected = [r"^decoder\.", r"^class_weights$"]


class ColorizationModel(ColorizationPreTrainedModel):
    """The colorization encoder: a timm backbone (built with `in_chans=1`) on the centred L channel.

    It takes normalized RGB `pixel_values`, undoes the normalization with `config.image_mean/std`, converts
    to Lab and feeds `(L - 50) / 50` to the backbone. Backbone weights sit under `backbone.`; stripped of that
    prefix they load into `timm.create_model(config.backbone, num_classes=0, in_chans=1)`.
    """

    def __init__(self, config: ColorizationConfig) -> None:
        super().__init__(config)
        self.backbone = create_backbone(
            config.backbone, {**(config.backbone_kwargs or {}), "in_chans": 1}, config.small_input_stem
        )
        self.num_features = self.backbone.num_features
        self.post_init()

    def pixel_values_to_lab(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Undo the image processor's normalization and convert to Lab: (N, 3, H, W) -> (N, 3, H, W)."""
        check_pixel_values(pixel_values)
        mean = torch.tensor(self.config.image_mean, device=pixel_values.device)[:, None, None]
        std = torch.tensor(self.config.image_std, device=pixel_values.device)[:, None, None]
        rgb = pixel_values.float() * std + mean  # (N, 3, H, W) in [0, 1]
        return rgb_to_lab(rgb.clamp(0, 1))

    def network_input(self, lab: torch.Tensor) -> torch.Tensor:
        """The backbone's input (N, 1, H, W) from Lab images: `(L - 50) / 50`, in the model's dtype (Lab is
        computed in float32; a model loaded in bf16 / fp16 takes its input in that dtype)."""
        return lightness_to_input(lab[:, :1]).to(self.dtype)

    def encode_lightness(self, lightness_input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the backbone on the network input `(L - 50) / 50` (N, 1, H, W): `(features, pooled)`."""
        features, pooled, _ = backbone_features(self.backbone, lightness_input)
        return features, pooled

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> EncoderOutput | tuple:
        """Embed normalized RGB images through their L channel.

        Args:
            pixel_values: (N, 3, H, W) images normalized by the model's image processor.
            output_hidden_states: also return the backbone's intermediate feature maps / tokens.
        """
        lab = self.pixel_values_to_lab(pixel_values)
        return encode(
            self.backbone,
            None,
            self.network_input(lab),
            outputs_hidden_states(self.config, output_hidden_states),
            returns_dict(self.config, return_dict),
        )


class ColorizationForImageClassification(ImageClassifierMixin, ColorizationPreTrainedModel):
    """The colorization encoder with a linear classifier on the pooled embedding (linear probe or fine-tuning).

    Loads the encoder from any colorization folder (`ColorizationModel` or `ColorizationForPreTraining`)
    with a new classifier; `forward` and the loss of `config.problem_type`: see `ImageClassifierMixin`.
    """

    def __init__(self, config: ColorizationConfig) -> None:
        super().__init__(config)
        self._init_classifier(ColorizationModel(config))


class ColorizationForPreTraining(ColorizationPreTrainedModel):
    """Colorization pre-training (Zhang et al. 2016): encoder, decoder over the ab bins, rebalanced loss.

    `forward` converts the images to Lab, predicts (N, 313, H/4, W/4) logits from L, soft-encodes the
    ground-truth ab (subsampled with stride 4, see `targets_from_lab`) onto the nearest bins and returns the
    class-rebalanced cross-entropy. The rebalancing weights are the persistent buffer `class_weights`
    (313,): uniform until set from an empirical prior with `set_class_weights_from_prior` (see
    `color.estimate_ab_prior`). `class_weights_source` says where they came from: `"uniform"` (a new model,
    or `from_pretrained` of a `ColorizationModel` folder: estimate them before training), `"prior"` (set
    from a prior) or `"checkpoint"` (`from_pretrained` of a `ColorizationForPreTraining` folder: as saved).
    """

    # Settled by `_after_load` (uniform weights) when a checkpoint lacks them, e.g. an encoder folder.
    _keys_to_ignore_on_load_missing = [r"^class_weights$"]

    def __init__(self, config: ColorizationConfig) -> None:
        super().__init__(config)
        self.encoder = ColorizationModel(config)
        self.decoder = ColorizationDecoder(
            self.encoder.num_features,
            config.decoder_hidden_size,
            config.decoder_num_layers,
            config.num_bins,
            config.decoder_output_stride,
        )
        self.register_buffer("class_weights", torch.ones(config.num_bins))  # (Q,) rebalancing weights
        self.register_buffer("ab_centers", ab_bin_centers(), persistent=False)  # (Q, 2), the fixed bin table
        self.class_weights_source = "uniform"
        self.post_init()

    def _after_load(self, loaded: set[str]) -> None:
        super()._after_load(loaded)
        # `from_pretrained` leaves non-persistent buffers uninitialized; a checkpoint may lack the weights.
        self.ab_centers.copy_(ab_bin_centers(device=self.ab_centers.device))
        if "class_weights" in loaded:
            self.class_weights_source = "checkpoint"
        else:
            self.class_weights.fill_(1.0)
            self.class_weights_source = "uniform"

    @torch.no_grad()
    def set_class_weights_from_prior(self, prior: torch.Tensor) -> torch.Tensor:
        """Set `class_weights` to the rebalancing weights of an empirical ab-bin prior (Eq. 4).

        Args:
            prior: (313,) bin probabilities or counts, e.g. from `color.estimate_ab_prior`.

        Returns:
            The new (313,) weights.
        """
        weights = rebalancing_weights(
            prior.to(self.ab_centers.device),
            self.ab_centers,
            mix=self.config.rebalancing_lambda,
            sigma=self.config.prior_smoothing_sigma,
        )
        self.class_weights.copy_(weights)
        self.class_weights_source = "prior"
        return self.class_weights

    def logits_from_lab(self, lab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Bin logits (N, Q, H/4, W/4) and pooled embedding from Lab images (N, 3, H, W)."""
        features, pooled = self.encoder.encode_lightness(self.encoder.network_input(lab))
        backbone = self.encoder.backbone
        grid = feature_map(
            features, self.encoder.num_features, getattr(backbone, "num_prefix_tokens", 0), lab.shape[-2:]
        )
        return self.decoder(grid, lab.shape[-2:]), pooled

    @torch.no_grad()
    def targets_from_lab(
        self, lab: torch.Tensor, size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Soft-encoded targets (N, Q, h, w) and the mask of counted pixels (N, 1, h, w) at the logits' size.

        The ground-truth ab is subsampled, not averaged: the pixel at the top-left of each
        `decoder_output_stride`-sized block, as the authors' Caffe net (a 1x1 convolution with stride 4).
        Averaging would mix the colours on both sides of an edge into a greyer one.
        """
        stride = self.config.decoder_output_stride
        ab = lab[:, 1:, ::stride, ::stride][..., : size[0], : size[1]].float()  # (N, 2, h, w)
        targets = soft_encode_ab(
            ab, self.ab_centers, self.config.soft_encoding_neighbors, self.config.soft_encoding_sigma
        )
        return targets, loss_mask(ab, self.config.grey_mask, self.config.grey_threshold)

    def forward(
        self, pixel_values: torch.Tensor, return_dict: bool | None = None, **kwargs
    ) -> ColorizationForPreTrainingOutput | tuple:
        """One colorization step.

        Args:
            pixel_values: (N, 3, H, W) colour images normalized by the model's image processor.
        """
        lab = self.encoder.pixel_values_to_lab(pixel_values)
        logits, pooled = self.logits_from_lab(lab)
        targets, mask = self.targets_from_lab(lab, logits.shape[-2:])
        loss = colorization_cross_entropy(logits, targets, self.class_weights, mask)
        output = ColorizationForPreTrainingOutput(loss=loss, logits=logits, pooler_output=pooled)
        return output if returns_dict(self.config, return_dict) else output.to_tuple()

    @torch.no_grad()
    def colorize(self, pixel_values: torch.Tensor, temperature: float | None = None) -> torch.Tensor:
        """Colour images from their L channel alone: annealed-mean ab, upsampled, joined with L.

        Args:
            pixel_values: (N, 3, H, W) images normalized by the model's image processor (only L is used).
            temperature: annealed-mean T; `config.annealed_mean_temperature` (0.38) by default.

        Returns:
            (N, 3, H, W) sRGB in [0, 1].
        """
        lab = self.encoder.pixel_values_to_lab(pixel_values)
        logits, _ = self.logits_from_lab(lab)
        ab = annealed_mean(logits, self.ab_centers, temperature or self.config.annealed_mean_temperature)
        return colorize(lab[:, :1], ab)


__all__ = [
    "ColorizationDecoder",
    "ColorizationForImageClassification",
    "ColorizationForPreTraining",
    "ColorizationModel",
    "ColorizationPreTrainedModel",
]

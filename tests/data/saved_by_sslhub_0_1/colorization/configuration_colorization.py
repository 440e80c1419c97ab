"""Configuration of the colorization pretext task (Zhang, Isola, Efros 2016, "Colorful Image Colorization")."""

from __future__ import annotations

from typing import Any

from .color import NUM_AB_BINS
from .configuration_common import SSLHubConfig, check_positive

GREY_MASKS = ("image", "pixel", "none")


class ColorizationConfig(SSLHubConfig):
    """Architecture and loss settings of a colorization model.

    The encoder sees the L channel of the image; a small decoder predicts a distribution over the Q = 313
    in-gamut ab bins at 1/4 of the input resolution, trained with a class-rebalanced cross-entropy against
    soft-encoded targets. The defaults are the paper's; `ColorizationConfig.authors_code()` switches to the
    settings of the authors' released code. Any field can be overridden by keyword.

    Args:
        backbone: any timm model name (CNN or ViT); it is built with `in_chans=1`.
        backbone_kwargs: extra keyword arguments for `timm.create_model` (e.g. `img_size` of a ViT).
        small_input_stem: for ResNets on 32x32 images: 3x3 stride-1 stem conv and no max-pool, so that the
            decoder starts from a 4x4 rather than a 1x1 feature map.
        num_bins: number of ab bins Q; fixed at 313 by the paper's gamut table, recorded for readers.
        soft_encoding_neighbors: nearest bins that share a pixel's target (5 in the paper, 10 in the code).
        soft_encoding_sigma: std of the Gaussian weights of the soft-encoding, in ab units (5).
        rebalancing_lambda: weight lambda of the uniform distribution mixed into the prior (0.5).
        prior_smoothing_sigma: std of the Gaussian that smooths the empirical prior, in ab units (5).
        annealed_mean_temperature: T of the annealed-mean decoding (0.38).
        decoder_hidden_size: width of the decoder's convolutions.
        decoder_num_layers: 3x3 convolutions of the decoder at the output resolution (after upsampling).
        decoder_output_stride: the logits are predicted at 1/stride of the input resolution (4).
        grey_mask: which pixels the loss ignores as grey: `"image"` (every pixel of an image with no colour
            at all, as the authors' code), `"pixel"` (each grey pixel) or `"none"`.
        grey_threshold: largest |a| and |b| of a grey pixel (5 in the authors' code; about 0.01 keeps only
            R = G = B pixels out).
    """

    model_type = "sslhub_colorization"

    backbone: str = "resnet50"
    backbone_kwargs: dict[str, Any] | None = None
    small_input_stem: bool = False
    num_bins: int = NUM_AB_BINS
    soft_encoding_neighbors: int = 5
    soft_encoding_sigma: float = 5.0
    rebalancing_lambda: float = 0.5
    prior_smoothing_sigma: float = 5.0
    annealed_mean_temperature: float = 0.38
    decoder_hidden_size: int = 256
    decoder_num_layers: int = 2
    decoder_output_stride: int = 4
    grey_mask: str = "image"
    grey_threshold: float = 5.0

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.num_bins != NUM_AB_BINS:
            raise ValueError(
                f"num_bins must be {NUM_AB_BINS} (the paper's in-gamut ab bins), got {self.num_bins}"
            )
        if (
            not isinstance(self.soft_encoding_neighbors, int)
            or not 1 <= self.soft_encoding_neighbors <= NUM_AB_BINS
        ):
            raise ValueError(
                f"soft_encoding_neighbors must be an integer in [1, {NUM_AB_BINS}], got {self.soft_encoding_neighbors!r}"
            )
        check_positive("soft_encoding_sigma", self.soft_encoding_sigma)
        check_positive("prior_smoothing_sigma", self.prior_smoothing_sigma)
        check_positive("annealed_mean_temperature", self.annealed_mean_temperature)
        check_positive("decoder_hidden_size", self.decoder_hidden_size)
        check_positive("decoder_output_stride", self.decoder_output_stride)
        if not 0.0 < self.rebalancing_lambda <= 1.0:
            raise ValueError(f"rebalancing_lambda must be in (0, 1], got {self.rebalancing_lambda}")
        if not isinstance(self.decoder_num_layers, int) or self.decoder_num_layers < 0:
            raise ValueError(f"decoder_num_layers must be an integer >= 0, got {self.decoder_num_layers!r}")
        if self.grey_mask not in GREY_MASKS:
            raise ValueError(f"grey_mask must be one of {list(GREY_MASKS)}, got {self.grey_mask!r}")
        if not isinstance(self.grey_threshold, (int, float)) or self.grey_threshold < 0:
            raise ValueError(f"grey_threshold must be a number >= 0, got {self.grey_threshold!r}")
        from .backbones import check_backbone_name

        check_backbone_name(self.backbone)

    @classmethod
    def paper(cls, backbone: str = "resnet50", **kwargs) -> ColorizationConfig:
        """The paper's settings: 5-neighbour soft-encoding (sigma 5), lambda 0.5, T = 0.38, logits at 1/4."""
        defaults = dict(
            soft_encoding_neighbors=5,
            soft_encoding_sigma=5.0,
            rebalancing_lambda=0.5,
            prior_smoothing_sigma=5.0,
            annealed_mean_temperature=0.38,
            decoder_output_stride=4,
        )
        return cls(backbone=backbone, **{**defaults, **kwargs})

    @classmethod
    def authors_code(cls, backbone: str = "resnet50", **kwargs) -> ColorizationConfig:
        """The authors' released code: the paper's settings with 10-neighbour soft-encoding and images
        without any pixel beyond |a|, |b| > 5 left out of the loss."""
        defaults = dict(soft_encoding_neighbors=10, grey_mask="image", grey_threshold=5.0)
        return cls.paper(backbone=backbone, **{**defaults, **kwargs})


__all__ = ["ColorizationConfig"]

"""Colour handling of the colorization pretext task (Zhang, Isola, Efros 2016, "Colorful Image Colorization").

Everything works on batched tensors with the channel axis third from the end, e.g. (N, 3, H, W), on any
device. Half-precision inputs are computed in float32 and returned in their own dtype.

- sRGB in [0, 1] <-> CIE Lab (D65 white, 2 degree observer), the formulas of `skimage.color.rgb2lab/lab2rgb`.
- The Q = 313 in-gamut ab bins (grid 10) of the paper, soft-encoding of ab onto them (Sec. 2.1), the class
  rebalancing weights from an empirical bin prior (Sec. 2.2, Eq. 4) and the annealed-mean decoding
  (Sec. 2.3, Eq. 5).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

# sRGB (linear) -> XYZ, from the sRGB specification (the matrix scikit-image uses).
_XYZ_FROM_RGB = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
)
_RGB_FROM_XYZ = tuple(
    tuple(row) for row in torch.linalg.inv(torch.tensor(_XYZ_FROM_RGB, dtype=torch.float64)).tolist()
)
_D65_WHITE = (0.95047, 1.0, 1.08883)  # CIE XYZ of the D65 illuminant, 2 degree observer
_LAB_EPSILON = 0.008856  # (6/29)^3, where the cube root of Lab switches to its linear segment
_LAB_KAPPA = 7.787

# Per a value (multiples of 10): the inclusive range of b values of the 313 in-gamut bins (methods.md; the
# authors' `pts_in_hull.npy`). Not derivable from the sRGB gamut by a simple rule.
_AB_BIN_TABLE = {
    -90: (50, 90),
    -80: (20, 90),
    -70: (0, 90),
    -60: (-20, 90),
    -50: (-30, 100),
    -40: (-40, 100),
    -30: (-50, 100),
    -20: (-50, 100),
    -10: (-60, 100),
    0: (-70, 100),
    10: (-80, 90),
    20: (-80, 90),
    30: (-90, 90),
    40: (-100, 90),
    50: (-100, 80),
    60: (-110, 80),
    70: (-110, 80),
    80: (-110, 70),
    90: (-110, 70),
    100: (-90, 0),
}
_AB_BINS = tuple((a, b) for a, (lo, hi) in sorted(_AB_BIN_TABLE.items()) for b in range(lo, hi + 1, 10))
NUM_AB_BINS = len(_AB_BINS)  # Q = 313

LIGHTNESS_CENTER = 50.0  # the network sees (L - 50) / 50, L centred as in the paper and scaled to [-1, 1]
LIGHTNESS_SCALE = 50.0


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return x.dtype if x.dtype == torch.float64 else torch.float32


def _apply_matrix(matrix: tuple[tuple[float, ...], ...], x: torch.Tensor) -> torch.Tensor:
    # Elementwise rather than a matmul, so that autocast cannot drop it to low precision.
    m = torch.tensor(matrix, dtype=x.dtype, device=x.device)[..., None, None]  # (3, 3, 1, 1)
    return (m * x.unsqueeze(-4)).sum(-3)  # (..., 3, H, W)


def _white(x: torch.Tensor) -> torch.Tensor:
    return torch.tensor(_D65_WHITE, dtype=x.dtype, device=x.device)[:, None, None]  # (3, 1, 1)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """Convert sRGB in [0, 1] to CIE Lab (D65, 2 degree observer), as `skimage.color.rgb2lab`.

    Differentiable everywhere (the power functions are evaluated on clamped arguments).

    Args:
        rgb: (..., 3, H, W) sRGB values in [0, 1].

    Returns:
        (..., 3, H, W) Lab: L in [0, 100], a and b roughly in [-128, 127].
    """
    dtype = rgb.dtype
    rgb = rgb.to(_compute_dtype(rgb))
    linear = torch.where(
        rgb > 0.04045, ((rgb.clamp_min(0.04045) + 0.055) / 1.055).pow(2.4), rgb / 12.92
    )  # (..., 3, H, W)
    xyz = _apply_matrix(_XYZ_FROM_RGB, linear) / _white(linear)
    f = torch.where(
        xyz > _LAB_EPSILON, xyz.clamp_min(_LAB_EPSILON).pow(1 / 3), _LAB_KAPPA * xyz + 16 / 116
    )  # (..., 3, H, W)
    fx, fy, fz = f.unbind(-3)
    lab = torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], dim=-3)
    return lab.to(dtype)


def lab_to_rgb(lab: torch.Tensor, clip: bool = True) -> torch.Tensor:
    """Convert CIE Lab (D65, 2 degree observer) to sRGB, as `skimage.color.lab2rgb`.

    As in scikit-image, negative Z is clipped to 0 and, with `clip`, the result to [0, 1] (out-of-gamut
    colours); gradients vanish where a value is clipped.

    Args:
        lab: (..., 3, H, W) Lab values.
        clip: clip the sRGB result to [0, 1].

    Returns:
        (..., 3, H, W) sRGB values.
    """
    dtype = lab.dtype
    lab = lab.to(_compute_dtype(lab))
    lightness, a, b = lab.unbind(-3)
    fy = (lightness + 16) / 116
    f = torch.stack([fy + a / 500, fy, (fy - b / 200).clamp_min(0)], dim=-3)  # (..., 3, H, W)
    xyz = torch.where(f > 0.2068966, f.pow(3), (f - 16 / 116) / _LAB_KAPPA) * _white(f)
    linear = _apply_matrix(_RGB_FROM_XYZ, xyz)  # (..., 3, H, W)
    rgb = torch.where(
        linear > 0.0031308, 1.055 * linear.clamp_min(0.0031308).pow(1 / 2.4) - 0.055, 12.92 * linear
    )
    if clip:
        rgb = rgb.clamp(0, 1)
    return rgb.to(dtype)


def lightness_to_input(lightness: torch.Tensor) -> torch.Tensor:
    """The network input from the L channel: `(L - 50) / 50`, centred as in the paper, in [-1, 1]."""
    return (lightness - LIGHTNESS_CENTER) / LIGHTNESS_SCALE


def input_to_lightness(x: torch.Tensor) -> torch.Tensor:
    """Inverse of `lightness_to_input`: the L channel in [0, 100]."""
    return x * LIGHTNESS_SCALE + LIGHTNESS_CENTER


def ab_bin_centers(
    device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """The Q = 313 in-gamut ab bin centres of the paper (grid size 10), a ascending, then b ascending.

    Returns:
        (313, 2) tensor of (a, b) pairs.
    """
    return torch.tensor(_AB_BINS, device=device, dtype=dtype or torch.float32)


def _squared_distances(ab: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    # ab (N, 2, P), centers (Q, 2) -> (N, Q, P); elementwise, so exact in float32 and autocast-proof.
    a, b = ab[:, :1], ab[:, 1:]  # (N, 1, P)
    return (a - centers[None, :, :1]) ** 2 + (b - centers[None, :, 1:]) ** 2


def nearest_ab_bin(ab: torch.Tensor, centers: torch.Tensor | None = None) -> torch.Tensor:
    """Index of the nearest ab bin of every pixel.

    Args:
        ab: (N, 2, H, W) ab values.
        centers: (Q, 2) bin centres; the 313 bins of the paper by default.

    Returns:
        (N, H, W) long tensor of bin indices.
    """
    n, _, h, w = ab.shape
    ab = ab.to(_compute_dtype(ab))
    centers = (ab_bin_centers() if centers is None else centers).to(ab)
    return _squared_distances(ab.reshape(n, 2, h * w), centers).argmin(1).reshape(n, h, w)


def soft_encode_ab(
    ab: torch.Tensor, centers: torch.Tensor | None = None, num_neighbors: int = 5, sigma: float = 5.0
) -> torch.Tensor:
    """Soft-encode ground-truth ab values onto the bins (Zhang et al. 2016, Sec. 2.1).

    Each pixel's target distribution puts Gaussian weights `exp(-d^2 / (2 sigma^2))` on its
    `num_neighbors` nearest bins (d the ab distance to a bin centre), normalized to sum to 1, and 0
    elsewhere. The paper uses 5 neighbours, the authors' code 10; sigma = 5 in both.

    Args:
        ab: (N, 2, H, W) ab values.
        centers: (Q, 2) bin centres; the 313 bins of the paper by default.
        num_neighbors: number of nearest bins that receive weight.
        sigma: standard deviation of the Gaussian kernel, in ab units.

    Returns:
        (N, Q, H, W) target distributions (float32, or float64 for float64 input).
    """
    n, _, h, w = ab.shape
    ab = ab.to(_compute_dtype(ab))
    centers = (ab_bin_centers() if centers is None else centers).to(ab)
    distances = _squared_distances(ab.reshape(n, 2, h * w), centers)  # (N, Q, P)
    nearest_distances, nearest = distances.topk(num_neighbors, dim=1, largest=False)  # (N, k, P)
    weights = torch.softmax(-nearest_distances / (2 * sigma**2), dim=1)  # normalized Gaussian weights
    encoded = torch.zeros_like(distances).scatter_(1, nearest, weights)  # (N, Q, P)
    return encoded.reshape(n, centers.shape[0], h, w)


def non_grey_mask(ab: torch.Tensor, threshold: float = 5.0, per_image: bool = True) -> torch.Tensor:
    """Which pixels carry colour, to exclude grey ones from the loss and the prior.

    A pixel is grey when |a| and |b| are both <= `threshold`. With `per_image`, a whole image counts as
    grey (weight 0) only when all its pixels are grey, as in the authors' code (threshold 5); otherwise
    every grey pixel is excluded on its own. With these formulas R = G = B gives |a|, |b| < 0.01 (the sRGB
    matrix is rounded against the D65 white), so "zero chroma only" is a threshold of about 0.01.

    Args:
        ab: (N, 2, H, W) ab values.
        threshold: largest |a| and |b| of a grey pixel.
        per_image: decide per image rather than per pixel.

    Returns:
        (N, 1, H, W) boolean mask, True where the pixel counts.
    """
    coloured = (ab.abs() > threshold).any(dim=1, keepdim=True)  # (N, 1, H, W)
    if per_image:
        coloured = coloured.flatten(1).any(dim=1)[:, None, None, None].expand_as(coloured)
    return coloured


def ab_bin_counts(
    ab: torch.Tensor, centers: torch.Tensor | None = None, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Histogram of the nearest bins of every pixel (those where `mask` is True).

    Args:
        ab: (N, 2, H, W) ab values.
        centers: (Q, 2) bin centres; the 313 bins of the paper by default.
        mask: optional (N, 1, H, W) boolean mask of the pixels to count.

    Returns:
        (Q,) float64 counts.
    """
    centers = ab_bin_centers(device=ab.device) if centers is None else centers
    indices = nearest_ab_bin(ab, centers)  # (N, H, W)
    if mask is not None:
        indices = indices[mask[:, 0]]
    return torch.bincount(indices.flatten(), minlength=centers.shape[0]).to(torch.float64)


def estimate_ab_prior(
    rgb_batches: Iterable[torch.Tensor],
    centers: torch.Tensor | None = None,
    grey_threshold: float = 5.0,
    per_image: bool = True,
) -> torch.Tensor:
    """Empirical distribution of the ab bins over a set of images (Zhang et al. 2016, Sec. 2.2).

    Counts the nearest bin of every non-grey pixel (see `non_grey_mask`), batch by batch.

    Args:
        rgb_batches: iterable of (N, 3, H, W) sRGB batches in [0, 1] (not normalized).
        centers: (Q, 2) bin centres; the 313 bins of the paper by default.
        grey_threshold / per_image: which pixels are excluded as grey, as in `non_grey_mask`.

    Returns:
        (Q,) float64 probabilities summing to 1.
    """
    total = None
    for rgb in rgb_batches:
        ab = rgb_to_lab(rgb)[:, 1:]  # (N, 2, H, W)
        counts = ab_bin_counts(ab, centers, non_grey_mask(ab, grey_threshold, per_image)).cpu()
        total = counts if total is None else total + counts
    if total is None or total.sum() == 0:
        raise ValueError("estimate_ab_prior found no coloured pixel in the batches")
    return total / total.sum()


def smooth_ab_prior(
    prior: torch.Tensor, centers: torch.Tensor | None = None, sigma: float = 5.0
) -> torch.Tensor:
    """Smooth a bin distribution with a Gaussian kernel in ab space (Zhang et al. 2016, Sec. 2.2).

    Every bin spreads its mass over the bins with weights `exp(-d^2 / (2 sigma^2))`, normalized per source
    bin, so the total mass is kept.

    Args:
        prior: (Q,) bin probabilities.
        centers: (Q, 2) bin centres; the 313 bins of the paper by default.
        sigma: standard deviation of the kernel, in ab units.

    Returns:
        (Q,) smoothed probabilities summing to 1, in `prior`'s dtype.
    """
    dtype = prior.dtype
    prior = prior.to(torch.float64)
    centers = (ab_bin_centers() if centers is None else centers).to(prior)
    distances = torch.cdist(centers, centers).pow(2)  # (Q_source, Q_target)
    kernel = torch.softmax(-distances / (2 * sigma**2), dim=1)  # rows sum to 1
    smoothed = prior @ kernel  # (Q,)
    return (smoothed / smoothed.sum()).to(dtype)


def rebalancing_weights(
    prior: torch.Tensor, centers: torch.Tensor | None = None, mix: float = 0.5, sigma: float = 5.0
) -> torch.Tensor:
    """Class-rebalancing weights of the bins (Zhang et al. 2016, Sec. 2.2, Eq. 4).

    With p~ the prior smoothed by a Gaussian (`sigma`), Q the number of bins and lambda = `mix`,
    `w ∝ ((1 - lambda) p~ + lambda / Q)^-1`, normalized so that the expected weight under p~ is 1.

    Args:
        prior: (Q,) empirical bin distribution, e.g. from `estimate_ab_prior`.
        centers: (Q, 2) bin centres; the 313 bins of the paper by default.
        mix: lambda, the weight of the uniform distribution (0.5 in the paper).
        sigma: smoothing of the prior, in ab units (5 in the paper).

    Returns:
        (Q,) weights, in `prior`'s dtype (float32 for integer counts).
    """
    dtype = prior.dtype if prior.is_floating_point() else torch.float32
    prior = prior.to(torch.float64)
    smoothed = smooth_ab_prior(prior / prior.sum(), centers, sigma)  # (Q,)
    weights = 1.0 / ((1 - mix) * smoothed + mix / prior.numel())
    return (weights / (smoothed * weights).sum()).to(dtype)


def annealed_mean(
    logits: torch.Tensor, centers: torch.Tensor | None = None, temperature: float = 0.38
) -> torch.Tensor:
    """Decode bin logits to ab with the annealed mean (Zhang et al. 2016, Sec. 2.3, Eq. 5).

    `f_T(z) = exp(log z / T) / sum_q exp(log z_q / T)` re-tempers the predicted distribution `z`, and the
    result is its mean over the bin centres: T = 1 gives the mean, T -> 0 the mode; the paper uses 0.38.
    Since `log z = logits - logsumexp(logits)`, `f_T(z) = softmax(logits / T)`.

    Args:
        logits: (N, Q, h, w) bin logits.
        centers: (Q, 2) bin centres; the 313 bins of the paper by default.
        temperature: T.

    Returns:
        (N, 2, h, w) ab values, in `logits`' dtype.
    """
    dtype = logits.dtype
    logits = logits.to(_compute_dtype(logits))
    centers = (ab_bin_centers() if centers is None else centers).to(logits)
    annealed = torch.softmax(logits / temperature, dim=1)  # (N, Q, h, w)
    a = (annealed * centers[:, 0, None, None]).sum(1)  # (N, h, w)
    b = (annealed * centers[:, 1, None, None]).sum(1)
    return torch.stack([a, b], dim=1).to(dtype)


def lab_from_lightness_and_ab(lightness: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    """Join an L channel with (possibly lower-resolution) ab channels into Lab.

    Args:
        lightness: (N, 1, H, W) L in [0, 100].
        ab: (N, 2, h, w) ab values; bilinearly upsampled to (H, W) when smaller, as in the paper.

    Returns:
        (N, 3, H, W) Lab.
    """
    if ab.shape[-2:] != lightness.shape[-2:]:
        ab = F.interpolate(ab, size=lightness.shape[-2:], mode="bilinear", align_corners=False)
    return torch.cat([lightness, ab.to(lightness.dtype)], dim=1)


def colorize(lightness: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    """A colour image from an L channel and predicted ab (upsampled to the L resolution).

    Args:
        lightness: (N, 1, H, W) L in [0, 100].
        ab: (N, 2, h, w) ab values, e.g. from `annealed_mean`.

    Returns:
        (N, 3, H, W) sRGB in [0, 1].
    """
    return lab_to_rgb(lab_from_lightness_and_ab(lightness, ab))


__all__ = [
    "NUM_AB_BINS",
    "ab_bin_centers",
    "ab_bin_counts",
    "annealed_mean",
    "colorize",
    "estimate_ab_prior",
    "input_to_lightness",
    "lab_from_lightness_and_ab",
    "lab_to_rgb",
    "lightness_to_input",
    "nearest_ab_bin",
    "non_grey_mask",
    "rebalancing_weights",
    "rgb_to_lab",
    "smooth_ab_prior",
    "soft_encode_ab",
]

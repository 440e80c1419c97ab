"""Colour handling of the colorization task against scikit-image and naive references from the paper."""

import math
import warnings

import numpy as np
import pytest
import torch
from skimage import color as skcolor

from sslhub.models.color import (
    NUM_AB_BINS,
    ab_bin_centers,
    ab_bin_counts,
    annealed_mean,
    colorize,
    estimate_ab_prior,
    input_to_lightness,
    lab_to_rgb,
    lightness_to_input,
    loss_mask,
    nearest_ab_bin,
    non_grey_mask,
    rebalancing_weights,
    rgb_to_lab,
    smooth_ab_prior,
    soft_encode_ab,
)

# b range of every a value, from the table in the reference (methods.md).
TABLE = {
    -90: (50, 90), -80: (20, 90), -70: (0, 90), -60: (-20, 90), -50: (-30, 100), -40: (-40, 100),
    -30: (-50, 100), -20: (-50, 100), -10: (-60, 100), 0: (-70, 100), 10: (-80, 90), 20: (-80, 90),
    30: (-90, 90), 40: (-100, 90), 50: (-100, 80), 60: (-110, 80), 70: (-110, 80), 80: (-110, 70),
    90: (-110, 70), 100: (-90, 0),
}  # fmt: skip


def _nhwc(x: torch.Tensor) -> np.ndarray:
    return x.permute(0, 2, 3, 1).numpy()


def _nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x).permute(0, 3, 1, 2)


def _test_rgb(dtype=torch.float64) -> torch.Tensor:
    corners = torch.tensor(
        [
            [0, 0, 0],
            [1, 1, 1],
            [1, 0, 0],
            [0, 1, 0],
            [0, 0, 1],
            [1, 1, 0],
            [0.5, 0.5, 0.5],
            [0.04045, 0.002, 0.9],
        ],
        dtype=dtype,
    )  # primaries, grey, values at the gamma threshold
    rgb = torch.rand(2, 3, 8, 8, dtype=dtype)
    rgb[0, :, 0, :] = corners.T
    return rgb


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_rgb_to_lab_matches_skimage(dtype):
    rgb = _test_rgb(dtype)
    expected = _nchw(skcolor.rgb2lab(_nhwc(rgb.double())))
    lab = rgb_to_lab(rgb)
    assert lab.dtype == dtype and lab.shape == rgb.shape
    torch.testing.assert_close(lab.double(), expected, rtol=0, atol=1e-3)
    white, grey = lab[0, :, 0, 1], lab[0, :, 0, 6]
    assert abs(white[0] - 100) < 1e-3 and abs(grey[0] - 53.389) < 1e-3
    # R = G = B is grey up to the rounding of the sRGB matrix against the D65 white (as in skimage).
    assert white[1:].abs().max() < 0.01 and grey[1:].abs().max() < 0.01


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_lab_to_rgb_matches_skimage_in_and_out_of_gamut(dtype):
    lab = torch.cat([torch.rand(2, 1, 8, 8) * 100, (torch.rand(2, 2, 8, 8) - 0.5) * 250], dim=1).to(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # skimage warns about the negative Z values it clips
        expected = _nchw(skcolor.lab2rgb(_nhwc(lab.double())))
    rgb = lab_to_rgb(lab)
    assert rgb.dtype == dtype and rgb.min() >= 0 and rgb.max() <= 1
    torch.testing.assert_close(rgb.double(), expected, rtol=0, atol=1e-3)


def test_round_trip_rgb_lab_rgb():
    rgb = _test_rgb(torch.float32)
    torch.testing.assert_close(lab_to_rgb(rgb_to_lab(rgb)), rgb, rtol=0, atol=1e-4)
    lightness = rgb_to_lab(rgb)[:, :1]
    torch.testing.assert_close(input_to_lightness(lightness_to_input(lightness)), lightness)
    assert lightness_to_input(torch.tensor([0.0, 50.0, 100.0])).tolist() == [-1.0, 0.0, 1.0]


def test_conversions_are_differentiable_including_black_and_thresholds():
    rgb = _test_rgb(torch.float64).requires_grad_(True)
    rgb_to_lab(rgb).sum().backward()
    assert torch.isfinite(rgb.grad).all() and rgb.grad.abs().sum() > 0
    lab = rgb_to_lab(_test_rgb(torch.float64)).requires_grad_(True)
    lab_to_rgb(lab, clip=False).sum().backward()
    assert torch.isfinite(lab.grad).all() and lab.grad.abs().sum() > 0
    assert torch.autograd.gradcheck(
        rgb_to_lab, (torch.rand(1, 3, 2, 2, dtype=torch.float64).requires_grad_(),)
    )


def test_half_precision_is_computed_in_float32():
    rgb = torch.rand(1, 3, 4, 4)
    lab = rgb_to_lab(rgb.bfloat16())
    assert lab.dtype == torch.bfloat16
    torch.testing.assert_close(lab.float(), rgb_to_lab(rgb.bfloat16().float()), rtol=1e-2, atol=0.5)


def test_bin_centres_count_order_and_entries():
    centers = ab_bin_centers()
    assert centers.shape == (NUM_AB_BINS, 2) == (313, 2)
    pairs = [tuple(int(v) for v in row) for row in centers.tolist()]
    assert pairs == sorted(pairs) and len(set(pairs)) == 313  # a ascending, then b ascending
    expected = [(a, b) for a, (lo, hi) in sorted(TABLE.items()) for b in range(lo, hi + 1, 10)]
    assert pairs == expected
    assert pairs[0] == (-90, 50) and pairs[4] == (-90, 90) and pairs[5] == (-80, 20)
    assert pairs[120] == (0, 0) and pairs[-1] == (100, 0) and pairs[-10] == (100, -90)
    assert (60, -110) in pairs and (-90, 40) not in pairs and (100, 10) not in pairs
    for a, (lo, hi) in TABLE.items():
        assert sum(1 for p in pairs if p[0] == a) == (hi - lo) // 10 + 1
    assert ab_bin_centers(dtype=torch.float64).dtype == torch.float64


def _ab(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).T.reshape(1, 2, 1, -1)  # (1, 2, 1, P)


@pytest.mark.parametrize("num_neighbors", [5, 10])
def test_soft_encoding_sums_to_one_and_peaks_at_the_nearest_bin(num_neighbors):
    centers = ab_bin_centers()
    points = [(0.0, 0.0), (12.0, -33.0), (-88.0, 71.0), (97.0, -4.0), (3.0, 48.0)]
    encoded = soft_encode_ab(_ab(points), num_neighbors=num_neighbors, sigma=5.0)  # (1, Q, 1, P)
    assert encoded.shape == (1, 313, 1, len(points))
    torch.testing.assert_close(encoded.sum(1), torch.ones(1, 1, len(points)))
    assert ((encoded > 0).sum(1) == num_neighbors).all()
    assert encoded.argmax(1).flatten().tolist() == nearest_ab_bin(_ab(points)).flatten().tolist()
    # Naive reference for one pixel: Gaussian weights on the k nearest centres, normalized.
    point = torch.tensor(points[1])
    d2 = ((centers - point) ** 2).sum(1)
    nearest = d2.argsort()[:num_neighbors]
    weights = torch.exp(-d2[nearest] / (2 * 5.0**2))
    reference = torch.zeros(313).index_put_((nearest,), weights / weights.sum())
    torch.testing.assert_close(encoded[0, :, 0, 1], reference)
    assert nearest_ab_bin(_ab([(12.0, -33.0)])).item() == d2.argmin().item()


def test_soft_encoding_of_a_bin_centre_and_batches():
    centers = ab_bin_centers()
    encoded = soft_encode_ab(centers[200].reshape(1, 2, 1, 1))
    assert encoded.argmax(1).item() == 200
    # The 4 grid neighbours at distance 10 each get exp(-2) of the centre's weight.
    torch.testing.assert_close(
        encoded.flatten().topk(2).values[1] / encoded.max(), torch.tensor(math.exp(-2))
    )
    ab = (torch.rand(3, 2, 4, 5) - 0.5) * 160
    batched = soft_encode_ab(ab, num_neighbors=10)
    for i in range(3):
        torch.testing.assert_close(batched[i : i + 1], soft_encode_ab(ab[i : i + 1], num_neighbors=10))


def test_non_grey_mask_per_image_and_per_pixel():
    ab = torch.zeros(2, 2, 2, 2)
    ab[1, 0, 0, 0] = 20.0  # image 1 has one coloured pixel, image 0 is grey
    ab[1, 1, 1, 1] = 3.0  # below the threshold of 5
    per_image = non_grey_mask(ab, threshold=5.0)
    assert per_image.shape == (2, 1, 2, 2)
    assert not per_image[0].any() and per_image[1].all()
    per_pixel = non_grey_mask(ab, threshold=5.0, per_image=False)
    assert per_pixel.sum() == 1 and per_pixel[1, 0, 0, 0]
    assert non_grey_mask(ab, threshold=0.0, per_image=False).sum() == 2


def test_smoothing_keeps_mass_and_spreads_to_neighbours():
    prior = torch.zeros(313, dtype=torch.float64)
    prior[120] = 1.0  # all mass on (0, 0)
    smoothed = smooth_ab_prior(prior, sigma=5.0)
    torch.testing.assert_close(smoothed.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert smoothed.argmax() == 120
    torch.testing.assert_close(smoothed[121] / smoothed[120], torch.tensor(math.exp(-2), dtype=torch.float64))


def test_rebalancing_weights_have_expectation_one_under_the_smoothed_prior():
    prior = torch.rand(313, dtype=torch.float64) ** 4
    prior = prior / prior.sum()
    weights = rebalancing_weights(prior, mix=0.5, sigma=5.0)
    smoothed = smooth_ab_prior(prior, sigma=5.0)
    torch.testing.assert_close((smoothed * weights).sum(), torch.tensor(1.0, dtype=torch.float64))
    # Naive reference of Eq. 4: w proportional to ((1 - lambda) p~ + lambda / Q)^-1.
    reference = 1 / (0.5 * smoothed + 0.5 / 313)
    torch.testing.assert_close(weights, reference / (smoothed * reference).sum())
    assert weights[smoothed.argmin()] > weights[smoothed.argmax()]
    uniform = rebalancing_weights(prior, mix=1.0)
    torch.testing.assert_close(uniform, torch.ones_like(uniform))
    counts = rebalancing_weights((prior * 1000).round().long())  # counts are accepted too
    assert counts.dtype == torch.float32 and torch.isfinite(counts).all()


def test_prior_estimate_counts_nearest_bins_batch_by_batch():
    red, grey = torch.zeros(2, 3, 4, 4), torch.full((1, 3, 4, 4), 0.5)
    red[:, 0] = 1.0
    red[1, :, :2] = torch.tensor([0.0, 0.0, 1.0])[:, None, None]  # half of image 1 is blue
    prior = estimate_ab_prior([red[:1], grey, red[1:]])  # the grey image is left out
    red_bin = nearest_ab_bin(rgb_to_lab(red[:1, :, :1, :1])[:, 1:]).item()
    blue_bin = nearest_ab_bin(rgb_to_lab(red[1:, :, :1, :1])[:, 1:]).item()
    assert prior.dtype == torch.float64 and prior.shape == (313,)
    torch.testing.assert_close(prior[red_bin], torch.tensor(24 / 32, dtype=torch.float64))
    torch.testing.assert_close(prior[blue_bin], torch.tensor(8 / 32, dtype=torch.float64))
    all_at_once = ab_bin_counts(rgb_to_lab(red)[:, 1:])
    torch.testing.assert_close(prior, all_at_once / all_at_once.sum())
    with pytest.raises(ValueError, match="no coloured pixel"):
        estimate_ab_prior([grey])


def test_annealed_mean_decodes_one_hot_mean_and_mode():
    centers = ab_bin_centers()
    logits = torch.full((1, 313, 1, 1), -30.0)
    logits[0, 77] = 30.0
    torch.testing.assert_close(annealed_mean(logits), centers[77].reshape(1, 2, 1, 1))
    logits = torch.randn(2, 313, 3, 3)
    probs = logits.softmax(1)
    mean = torch.einsum("nqhw,qc->nchw", probs, centers)
    torch.testing.assert_close(annealed_mean(logits, temperature=1.0), mean, rtol=1e-5, atol=1e-4)
    mode = centers[logits.argmax(1)].permute(0, 3, 1, 2)  # (N, 2, h, w)
    torch.testing.assert_close(annealed_mean(logits, temperature=1e-3), mode, rtol=0, atol=1e-3)
    t_038 = annealed_mean(logits)  # between the mean and the mode
    assert (t_038 - mode).abs().mean() < (mean - mode).abs().mean()
    # f_T(z) = exp(log z / T) / sum exp(log z / T), written from the paper's Eq. 5.
    annealed = torch.exp(torch.log(probs) / 0.38)
    annealed = annealed / annealed.sum(1, keepdim=True)
    torch.testing.assert_close(t_038, torch.einsum("nqhw,qc->nchw", annealed, centers), rtol=1e-4, atol=1e-3)


def test_colorize_upsamples_ab_to_the_lightness_resolution():
    rgb = torch.zeros(1, 3, 8, 8)
    rgb[:, 1] = 0.6
    rgb[:, 2] = 0.3  # a constant colour: bilinear upsampling keeps it exactly
    lab = rgb_to_lab(rgb)
    out = colorize(lab[:, :1], lab[:, 1:, ::4, ::4])
    assert out.shape == (1, 3, 8, 8)
    torch.testing.assert_close(out, rgb, rtol=0, atol=1e-4)


def test_prior_estimate_follows_the_grey_mask_setting():
    # Image 0: fully grey. Image 1: 8 red pixels, 4 pale pixels (|a| about 9.8) and 4 grey ones.
    images = torch.full((2, 3, 4, 4), 0.5)
    images[1, :, :2] = torch.tensor([1.0, 0.0, 0.0])[:, None, None]
    images[1, :, 2, :] = torch.tensor([0.6, 0.5, 0.5])[:, None]
    bins = nearest_ab_bin(rgb_to_lab(images)[:, 1:])  # (2, 4, 4)
    red, pale, grey = bins[1, 0, 0].item(), bins[1, 2, 0].item(), bins[1, 3, 0].item()
    assert len({red, pale, grey}) == 3

    def shares(**settings):  # the prior's mass on the red, pale and grey bins
        prior = estimate_ab_prior([images[:1], images[1:]], **settings)
        return [prior[b].item() for b in (red, pale, grey)]

    # "image" (the authors' code, the default): only fully grey images are left out, their grey pixels stay.
    assert shares() == shares(grey_mask="image") == pytest.approx([8 / 16, 4 / 16, 4 / 16])
    # "pixel": every grey pixel is left out; "none": every pixel counts, the grey image's too.
    assert shares(grey_mask="pixel") == pytest.approx([8 / 12, 4 / 12, 0])
    assert shares(grey_mask="none") == pytest.approx([8 / 32, 4 / 32, 20 / 32])
    # The threshold decides what is grey: above the pale pixels' |a|, they are left out too.
    assert shares(grey_mask="pixel", grey_threshold=12.0) == pytest.approx([1, 0, 0])
    with pytest.raises(ValueError, match="grey_mask must be one of"):
        estimate_ab_prior([images], grey_mask="per_image")


def test_loss_mask_per_setting():
    ab = torch.zeros(2, 2, 2, 2)
    ab[1, 0, 0, 0] = 20.0
    assert loss_mask(ab, "none") is None
    assert torch.equal(loss_mask(ab, "image", 5.0), non_grey_mask(ab, 5.0, per_image=True))
    assert torch.equal(loss_mask(ab, "pixel", 5.0), non_grey_mask(ab, 5.0, per_image=False))

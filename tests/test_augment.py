"""Batched on-device augmentation against torchvision's per-image reference operations."""

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from sslhub.augment import BatchedTwoViewAugmentation, color_jitter, crop_boxes, gaussian_blur


def _images(n=6, size=20):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def test_crop_boxes_fit_and_follow_the_scale_range():
    boxes = crop_boxes(2000, 32, 48, 0.2, torch.Generator().manual_seed(0))
    x1, y1, x2, y2 = boxes.unbind(1)
    assert (x1 >= 0).all() and (y1 >= 0).all() and (x2 <= 48).all() and (y2 <= 32).all()
    area = (x2 - x1) * (y2 - y1) / (32 * 48)
    ratio = (x2 - x1) / (y2 - y1)
    # the first draw that fits is kept, as in torchvision: large draws fit less often, the mean is below 0.6
    assert area.min() > 0.18 and area.max() <= 1.0 and 0.4 < area.mean() < 0.6
    assert ratio.min() > 0.7 and ratio.max() < 1.45


@pytest.mark.parametrize(
    ("kind", "factor", "reference"),
    [
        ("brightness", 1.3, TF.adjust_brightness),
        ("contrast", 0.6, TF.adjust_contrast),
        ("saturation", 1.4, TF.adjust_saturation),
        ("hue", 0.08, TF.adjust_hue),
        ("hue", -0.1, TF.adjust_hue),
    ],
)
def test_color_jitter_matches_torchvision_per_operation(kind, factor, reference):
    x = _images()
    factors = {
        "brightness": torch.ones(6),
        "contrast": torch.ones(6),
        "saturation": torch.ones(6),
        "hue": torch.zeros(6),
    }
    factors[kind] = torch.full((6,), factor)
    expected = torch.stack([reference(image, factor) for image in x])
    torch.testing.assert_close(color_jitter(x, **factors), expected, rtol=0, atol=2e-3)


def test_identity_jitter_changes_nothing():
    x = _images()
    same = color_jitter(x, torch.ones(6), torch.ones(6), torch.ones(6), torch.zeros(6))
    torch.testing.assert_close(same, x, rtol=0, atol=1e-6)


def test_per_image_blur_matches_torchvision():
    x = _images(3, 24)
    sigma = torch.tensor([0.3, 1.0, 2.0])
    expected = torch.stack(
        [TF.gaussian_blur(image, [5, 5], [s.item(), s.item()]) for image, s in zip(x, sigma, strict=True)]
    )
    torch.testing.assert_close(gaussian_blur(x, sigma, 5), expected, rtol=0, atol=1e-5)


def test_views_are_deterministic_per_seed_normalized_and_sized():
    images = (torch.rand(16, 3, 40, 40, generator=torch.Generator().manual_seed(1)) * 255).to(torch.uint8)
    augment = BatchedTwoViewAugmentation("v2", 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    query, key = augment(images, torch.Generator().manual_seed(3))
    again, _ = augment(images, torch.Generator().manual_seed(3))
    other, _ = augment(images, torch.Generator().manual_seed(4))
    assert query.shape == key.shape == (16, 3, 32, 32) and query.dtype == torch.float32
    assert torch.equal(query, again) and not torch.equal(query, other) and not torch.equal(query, key)
    assert query.min() >= -2.0 - 1e-6 and query.max() <= 2.0 + 1e-6  # (0 - 0.5) / 0.25 .. (1 - 0.5) / 0.25


def test_whole_image_crop_without_jitter_reproduces_the_image():
    images = (torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 255).to(torch.uint8)
    augment = BatchedTwoViewAugmentation("v2", 32, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), min_scale=1.0)
    settings = augment.views[0].__class__(
        min_scale=1.0, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, flip_p=0.0
    )
    view = augment.view(images, settings, torch.Generator().manual_seed(0))
    # scale 1 with an aspect ratio other than 1 does not fit: torchvision falls back to the whole image
    torch.testing.assert_close(view, images.float() / 255, rtol=0, atol=1e-5)


def test_v3_second_view_solarizes_and_presets_are_checked():
    v3 = BatchedTwoViewAugmentation("v3", 64, (0.5,) * 3, (0.25,) * 3)
    assert v3.views[1].solarize_p == 0.2 and v3.views[0].blur_p == 1.0 and v3.blur
    assert not BatchedTwoViewAugmentation("v2", 32, (0.5,) * 3, (0.25,) * 3).blur
    with pytest.raises(ValueError, match="augmentation must be one of"):
        BatchedTwoViewAugmentation("simclr", 32, (0.5,) * 3, (0.25,) * 3)

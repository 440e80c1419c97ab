"""The preset table, its two implementations (per-image torchvision, batched tensors) and each batched
operation against torchvision's reference."""

import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from sslhub.data import batched as augment
from sslhub.data import crop_flip_transform, presets, two_view_transform
from sslhub.data.batched import (
    BatchedTwoViewAugmentation,
    color_jitter,
    crop_boxes,
    gaussian_blur,
    jitter_order,
)

from .helpers import HOST_SYNC_OPS, recorded_ops

MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.15)


def _images(n=6, size=20):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def _uint8_images(n, size, seed=0):
    return (torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 255).to(torch.uint8)


# ----------------------------------------------------------------------------------------------------------
# One table, two implementations
# ----------------------------------------------------------------------------------------------------------


def _describe_torchvision(compose: v2.Compose) -> list[tuple]:
    """What a per-image view does, read from its torchvision transforms (normalization checked apart)."""
    *steps, to_image, to_float, normalize = compose.transforms
    assert isinstance(to_image, v2.ToImage) and isinstance(to_float, v2.ToDtype)
    assert normalize.mean == list(MEAN) and normalize.std == list(STD)
    described = []
    for step in steps:
        p = 1.0
        if isinstance(step, v2.RandomApply):
            (step,), p = step.transforms, step.p
        if isinstance(step, v2.RandomResizedCrop):
            described.append(("crop", step.size, step.scale, step.ratio))
        elif isinstance(step, v2.ColorJitter):
            described.append(("jitter", p, step.brightness, step.contrast, step.saturation, step.hue))
        elif isinstance(step, v2.RandomGrayscale):
            described.append(("grayscale", step.p))
        elif isinstance(step, v2.GaussianBlur):
            described.append(("blur", p, step.kernel_size, tuple(step.sigma)))
        elif isinstance(step, v2.RandomSolarize):
            described.append(("solarize", step.p, step.threshold))
        elif isinstance(step, v2.RandomHorizontalFlip):
            described.append(("flip", step.p))
        else:
            raise AssertionError(f"unexpected transform {step!r}")
    return described


def _factor_range(x: float, center: float = 1.0) -> tuple[float, float] | None:
    return None if x == 0 else (max(0.0, center - x) if center else -x, center + x)


def _describe_batched(view: presets.View, image_size: int) -> list[tuple]:
    """What a batched view does, in the vocabulary of `_describe_torchvision`."""
    described = []
    for op in view:
        if isinstance(op, presets.ResizedCrop):
            described.append(("crop", (image_size, image_size), op.scale, op.ratio))
        elif isinstance(op, presets.ColorJitter):
            b, c, s = (_factor_range(x) for x in (op.brightness, op.contrast, op.saturation))
            described.append(("jitter", op.p, b, c, s, _factor_range(op.hue, center=0.0)))
        elif isinstance(op, presets.Grayscale):
            described.append(("grayscale", op.p))
        elif isinstance(op, presets.GaussianBlur):
            k = op.kernel_size(image_size)
            described.append(("blur", op.p, (k, k), op.sigma))
        elif isinstance(op, presets.Solarize):
            described.append(("solarize", op.p, op.threshold))
        elif isinstance(op, presets.HorizontalFlip):
            described.append(("flip", op.p))
        else:
            raise AssertionError(f"unexpected operation {op!r}")
    return described


@pytest.mark.parametrize("min_scale", [None, 0.5])
@pytest.mark.parametrize("image_size", [32, 96, 224])
@pytest.mark.parametrize("preset", sorted(presets.PRESETS))
def test_per_image_and_batched_paths_apply_the_same_operations(preset, image_size, min_scale):
    per_image = two_view_transform(preset, image_size, MEAN, STD, min_scale=min_scale)
    batched = BatchedTwoViewAugmentation(preset, image_size, MEAN, STD, min_scale=min_scale)
    for compose, view in zip((per_image.query_view, per_image.key_view), batched.views, strict=True):
        assert _describe_torchvision(compose) == _describe_batched(view, image_size)
    if min_scale is not None:
        assert batched.views[0][0].scale == (min_scale, 1.0)


def test_crop_flip_is_the_table_geometry():
    view = crop_flip_transform(48, MEAN, STD, min_scale=0.3).view
    assert _describe_torchvision(view) == [("crop", (48, 48), (0.3, 1.0), (3 / 4, 4 / 3)), ("flip", 0.5)]
    assert _describe_torchvision(crop_flip_transform(48, MEAN, STD).view)[0][2] == (0.2, 1.0)


_CROP, _CROP_V3, _FLIP = ("crop", (0.2, 1.0)), ("crop", (0.08, 1.0)), ("flip", 0.5)
_JITTER_V1 = ("jitter", 1.0, (0.6, 1.4), (0.6, 1.4), (0.6, 1.4), (-0.4, 0.4))
_JITTER_V2 = ("jitter", 0.8, (0.6, 1.4), (0.6, 1.4), (0.6, 1.4), (-0.1, 0.1))
_JITTER_V3 = ("jitter", 0.8, (0.6, 1.4), (0.6, 1.4), (0.8, 1.2), (-0.1, 0.1))
_GRAY = ("grayscale", 0.2)
# The authors' pipelines (main_moco.py of facebookresearch/moco and moco-v3), as torchvision builds them.
PAPERS = {
    "v1": [[_CROP, _GRAY, _JITTER_V1, _FLIP]] * 2,
    "v2": [[_CROP, _JITTER_V2, _GRAY, ("blur", 0.5, (0.1, 2.0)), _FLIP]] * 2,
    "v3": [
        [_CROP_V3, _JITTER_V3, _GRAY, ("blur", 1.0, (0.1, 2.0)), _FLIP],
        [_CROP_V3, _JITTER_V3, _GRAY, ("blur", 0.1, (0.1, 2.0)), ("solarize", 0.2, 128), _FLIP],
    ],
}


def _as_in_the_papers(described: list[tuple]) -> list[tuple]:
    short = {"crop": lambda d: d[:1] + d[2:3], "blur": lambda d: (*d[:2], d[3])}  # sizes checked apart
    return [short.get(d[0], lambda d: d)(d) for d in described]


@pytest.mark.parametrize("preset", sorted(PAPERS))
def test_presets_follow_the_authors_code_and_leave_blur_out_below_64_pixels(preset):
    large, small = two_view_transform(preset, 224, MEAN, STD), two_view_transform(preset, 32, MEAN, STD)
    for index, expected in enumerate(PAPERS[preset]):
        described = _describe_torchvision((large.query_view, large.key_view)[index])
        assert _as_in_the_papers(described) == expected
        assert [d[2] for d in described if d[0] == "blur"] in ([], [(23, 23)])  # SimCLR's 10% of the side
        unblurred = [d for d in expected if d[0] != "blur"]
        assert (
            _as_in_the_papers(_describe_torchvision((small.query_view, small.key_view)[index])) == unblurred
        )
    assert (large.query_view is large.key_view) == (preset != "v3")


def test_unknown_presets_are_refused_by_both_paths():
    with pytest.raises(ValueError, match="augmentation must be one of"):
        two_view_transform("simclr")
    with pytest.raises(ValueError, match="augmentation must be one of"):
        BatchedTwoViewAugmentation("simclr", 32, MEAN, STD)


# ----------------------------------------------------------------------------------------------------------
# Batched operations against torchvision
# ----------------------------------------------------------------------------------------------------------


def test_crop_boxes_fit_and_follow_the_scale_range():
    boxes = crop_boxes(2000, 32, 48, (0.2, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(0))
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
def test_color_jitter_matches_torchvision_per_adjustment(kind, factor, reference):
    x = _images()
    factors = dict.fromkeys(("brightness", "contrast", "saturation", "hue"))
    factors[kind] = torch.full((6,), factor)
    expected = torch.stack([reference(image, factor) for image in x])
    torch.testing.assert_close(color_jitter(x, **factors), expected, rtol=0, atol=2e-3)


def test_hue_shift_handles_grey_black_white_and_tied_pixels():
    x = _images(4, 8)
    x[0] = x[0, :1]  # grey
    x[1, :, :2] = 0.0
    x[1, :, 2:4] = 1.0
    x[2, 0] = x[2, 1]  # red and green tie
    x[3, 1] = x[3, 2]  # green and blue tie
    shift = torch.tensor([0.3, -0.5, 0.5, -0.2])
    expected = torch.stack([TF.adjust_hue(image, s.item()) for image, s in zip(x, shift, strict=True)])
    torch.testing.assert_close(color_jitter(x, None, None, None, shift), expected, rtol=0, atol=2e-3)


def test_color_jitter_matches_torchvisions_random_order():
    # torchvision's ColorJitter draws an order (fn_idx) and four factors per call: replay them on a batch.
    jitter = v2.ColorJitter(0.4, 0.4, 0.4, 0.1)
    # torchvision 0.21 made `_get_params` / `_transform` public as `make_params` / `transform`.
    make_params = getattr(jitter, "make_params", None) or jitter._get_params
    transform = getattr(jitter, "transform", None) or jitter._transform
    x = _images(48, 8)
    expected, params = [], []
    for index, image in enumerate(x):
        torch.manual_seed(index)
        params.append(make_params([image]))
        expected.append(transform(image, params[-1]))
    order = torch.stack([p["fn_idx"] for p in params])
    assert len({tuple(row.tolist()) for row in order}) > 15  # most of the 24 orders occur
    names = ("brightness", "contrast", "saturation", "hue")
    factors = {name: torch.tensor([p[f"{name}_factor"] for p in params]) for name in names}
    jittered = color_jitter(x, **factors, order=order)
    torch.testing.assert_close(jittered, torch.stack(expected), rtol=0, atol=2e-3)
    # the order matters: one fixed order is far from torchvision's
    assert (color_jitter(x, **factors) - torch.stack(expected)).abs().max() > 0.05
    unchanged = color_jitter(x, **factors, order=torch.full_like(order, -1))
    assert torch.equal(unchanged, x)


def test_jitter_orders_are_uniform_random_permutations_of_the_jittered_images():
    apply = torch.arange(4800) % 5 != 0
    order = jitter_order(apply, torch.Generator().manual_seed(0))
    assert (order[~apply] == -1).all()
    kept = order[apply]
    assert torch.equal(kept.sort(1).values, torch.arange(4).expand_as(kept))
    counts = torch.unique(kept, dim=0, return_counts=True)[1]
    assert len(counts) == 24 and counts.min() > 110 and counts.max() < 210  # 160 expected each


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


def _apply(operations, images, seed=0):
    """A batched view of `operations` alone, unnormalized, at the images' size."""
    augment = BatchedTwoViewAugmentation("v2", images.shape[-1], (0.0,) * 3, (1.0,) * 3)
    return augment.view(images, tuple(operations), torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    ("operation", "reference", "atol"),
    [
        # PIL's luma weights (0.299, 0.587, 0.114), as the per-image path; torchvision's tensors use 0.2989
        (presets.Grayscale(p=1.0), lambda u: TF.rgb_to_grayscale(u.float() / 255, 3), 2e-4),
        (presets.Solarize(p=1.0), lambda u: TF.solarize(u, 128).float() / 255, 1e-6),  # on uint8, as on PIL
        (presets.HorizontalFlip(p=1.0), lambda u: TF.horizontal_flip(u).float() / 255, 1e-6),
    ],
)
def test_batched_operations_match_torchvision(operation, reference, atol):
    images = _uint8_images(8, 16)
    torch.testing.assert_close(_apply([operation], images), reference(images), rtol=0, atol=atol)


@pytest.mark.parametrize(
    "operation",
    [
        presets.ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8),
        presets.Grayscale(p=0.2),
        presets.GaussianBlur(p=0.5),
        presets.Solarize(p=0.2),
        presets.HorizontalFlip(p=0.5),
    ],
)
def test_batched_operations_apply_with_their_probability(operation):
    images = _uint8_images(2000, 8)
    changed = (_apply([operation], images) - images.float() / 255).abs().amax(dim=(1, 2, 3)) > 1e-4
    assert abs(changed.float().mean().item() - operation.p) < 0.04


def test_batched_jitter_and_blur_draw_torchvisions_parameters(monkeypatch):
    calls = {}

    def spy(name):
        def record(x, *args, **kwargs):
            calls[name] = (args, kwargs)
            return x

        return record

    monkeypatch.setattr(augment, "color_jitter", spy("jitter"))
    monkeypatch.setattr(augment, "gaussian_blur", spy("blur"))
    images = _uint8_images(4000, 4)
    _apply([presets.ColorJitter(0.4, 0.3, 0.2, 0.1, p=0.8), presets.GaussianBlur(p=1.0)], images)
    reference = v2.ColorJitter(0.4, 0.3, 0.2, 0.1)
    factors, order = calls["jitter"][0], calls["jitter"][1]["order"]
    for drawn, name in zip(factors, ("brightness", "contrast", "saturation", "hue"), strict=True):
        low, high = getattr(reference, name)
        assert low <= drawn.min() < low + 0.01 and high - 0.01 < drawn.max() <= high, name
    assert abs((order[:, 0] == -1).float().mean().item() - 0.2) < 0.03
    (sigma, kernel_size), _ = calls["blur"]
    assert 0.1 <= sigma.min() < 0.11 and 1.99 < sigma.max() <= 2.0 and kernel_size == 3


# ----------------------------------------------------------------------------------------------------------
# Whole views
# ----------------------------------------------------------------------------------------------------------


def test_views_are_deterministic_per_seed_normalized_and_sized():
    images = _uint8_images(16, 40, seed=1)
    augment = BatchedTwoViewAugmentation("v2", 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    query, key = augment(images, torch.Generator().manual_seed(3))
    again, _ = augment(images, torch.Generator().manual_seed(3))
    other, _ = augment(images, torch.Generator().manual_seed(4))
    assert query.shape == key.shape == (16, 3, 32, 32) and query.dtype == torch.float32
    assert torch.equal(query, again) and not torch.equal(query, other) and not torch.equal(query, key)
    assert query.min() >= -2.0 - 1e-6 and query.max() <= 2.0 + 1e-6  # (0 - 0.5) / 0.25 .. (1 - 0.5) / 0.25


def test_whole_image_crop_reproduces_the_image():
    images = _uint8_images(4, 32, seed=2)
    view = _apply([presets.ResizedCrop(scale=(1.0, 1.0))], images)
    # scale 1 with an aspect ratio other than 1 does not fit: torchvision falls back to the whole image
    torch.testing.assert_close(view, images.float() / 255, rtol=0, atol=1e-5)


def test_v3_views_are_asymmetric_and_run_at_every_size():
    images = _uint8_images(8, 80, seed=3)
    for size in (32, 64):
        query, key = BatchedTwoViewAugmentation("v3", size, MEAN, STD)(
            images, torch.Generator().manual_seed(0)
        )
        assert query.shape == key.shape == (8, 3, size, size) and torch.isfinite(query).all()


def test_call_makes_the_query_view_then_the_key_view_from_one_generator():
    images = _uint8_images(8, 64, seed=4)
    augment_v3 = BatchedTwoViewAugmentation("v3", 64, MEAN, STD)
    query, key = augment_v3(images, torch.Generator().manual_seed(5))
    generator = torch.Generator().manual_seed(5)
    assert torch.equal(query, augment_v3.view(images, augment_v3.views[0], generator))
    assert torch.equal(key, augment_v3.view(images, augment_v3.views[1], generator))


@pytest.mark.parametrize(("preset", "size"), [("v2", 32), ("v3", 64)])
def test_whole_batch_path_makes_the_views_of_the_subset_path(monkeypatch, preset, size):
    # Off the CPU, jitter and blur run on the whole batch and a mask keeps their result where drawn (no
    # subset sizes, so no host sync); the views are those of the CPU's subsets.
    images = _uint8_images(32, size + 8, seed=6)
    augment_views = BatchedTwoViewAugmentation(preset, size, MEAN, STD)
    expected = augment_views(images, torch.Generator().manual_seed(7))
    monkeypatch.setattr(augment, "_on_subsets", lambda x: False)
    with recorded_ops() as ops:
        got = augment_views(images, torch.Generator().manual_seed(7))
    for view, reference in zip(got, expected, strict=True):
        torch.testing.assert_close(view, reference, rtol=1e-5, atol=1e-5)
    assert not ops & HOST_SYNC_OPS, ops & HOST_SYNC_OPS


@pytest.mark.slow  # compiling two graphs: half a minute to a minute with a cold inductor cache
def test_compiled_views_are_the_eager_views_from_the_same_random_stream():
    # `--compile true`: each view's pixel work is one compiled function (whole-batch masks, no subsets); the
    # random parameters are drawn eagerly, in the same order, so the generator ends where the eager one does.
    images = _uint8_images(16, 40, seed=8)
    eager, compiled = (
        BatchedTwoViewAugmentation("v2", 32, MEAN, STD, compile=flag) for flag in (False, True)
    )
    for seed in (9, 10):  # the second batch reuses the compiled graphs
        generators = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        expected, got = eager(images, generators[0]), compiled(images, generators[1])
        for view, reference in zip(got, expected, strict=True):
            torch.testing.assert_close(view, reference, rtol=1e-5, atol=1e-5)
        assert torch.equal(generators[0].get_state(), generators[1].get_state())
    assert set(compiled._compiled) == set(compiled.views)  # one compiled function per view

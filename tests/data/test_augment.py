"""Batched augmentation: per-sample randomness, reproducibility, exactness, and torchvision semantics."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

from labelless.data import augment as A
from labelless.errors import UserError


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def same_images(n: int = 8, channels: int = 3, size: int = 16) -> torch.Tensor:
    """n copies of one random image: any difference between outputs comes from per-sample parameters."""
    return torch.rand(1, channels, size, size, generator=gen(123)).expand(n, -1, -1, -1).contiguous()


def mostly_distinct(y: torch.Tensor) -> bool:
    """At least 2/3 of the samples differ from each other (discrete ops may collide by chance)."""
    return torch.unique(y.flatten(1), dim=0).shape[0] >= 2 * len(y) / 3


RANDOM_OPS = {
    "random_resized_crop_flip": lambda x, g: A.random_resized_crop_flip(x, 12, g=g),
    "random_crop_with_padding": lambda x, g: A.random_crop_with_padding(x, 4, g=g),
    "color_jitter": lambda x, g: A.color_jitter(x, p=1.0, g=g),
    "gaussian_blur": lambda x, g: A.gaussian_blur(x, p=1.0, g=g),
    "random_affine": lambda x, g: A.random_affine(x, g=g),
    "cutout": lambda x, g: A.cutout(x, 6, g=g),
    "rand_augment": lambda x, g: A.rand_augment(x, num_ops=3, g=g),
}


@pytest.mark.parametrize("name", RANDOM_OPS)
def test_parameters_differ_per_sample(name: str) -> None:
    y = RANDOM_OPS[name](same_images(6), gen(1))
    assert mostly_distinct(y)


@pytest.mark.parametrize("recipe", [r + s for r in A.list_augments() for s in ("", "+sobel")])
@pytest.mark.parametrize("channels", [1, 3])
def test_recipes_shapes_ranges_and_seeds(recipe: str, channels: int) -> None:
    aug = A.Augment(recipe, size=12, channels=channels)
    x = torch.rand(6, channels, 16, 16, generator=gen(5))
    y = aug(x, gen(7))
    assert y.shape == (6, aug.out_channels, 12, 12) and y.dtype == torch.float32
    assert aug.out_channels == (2 if recipe.endswith("+sobel") else channels)
    assert torch.isfinite(y).all()
    if not recipe.endswith("+sobel"):
        assert y.min() >= 0 and y.max() <= 1
    assert torch.equal(y, aug(x, gen(7)))
    if not recipe.startswith("none"):
        assert not torch.equal(y, aug(x, gen(8)))
        assert mostly_distinct(aug(same_images(4, channels, 16), gen(9)))


def test_recipe_size_defaults_to_input_and_normalises() -> None:
    x = torch.rand(3, 3, 10, 10, generator=gen())
    assert A.Augment("simclr")(x, gen()).shape == x.shape
    y = A.Augment("none", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))(x)
    assert torch.allclose(y, (x - 0.5) / 0.25)


def test_recipe_errors() -> None:
    with pytest.raises(UserError, match="unknown augmentation 'fancy': choose one of affine, "):
        A.Augment("fancy")
    with pytest.raises(UserError, match=r"unknown augmentation 'simclr\+edges'.*optionally with '\+sobel'"):
        A.Augment("simclr+edges")
    with pytest.raises(ValueError, match=r"'weak' expects N×3×H×W, got \(2, 1, 8, 8\)"):
        A.Augment("weak", channels=3)(torch.rand(2, 1, 8, 8))
    with pytest.raises(UserError, match="scale"):
        A.Augment("weak", scale=(0.5, 1.0))
    full_view = A.Augment("simclr", scale=(1.0, 1.0), jitter_p=0.0, grayscale_p=0.0)  # options reach the builder
    x = torch.rand(4, 3, 8, 8, generator=gen())
    assert all(torch.allclose(y, x[i]) or torch.allclose(y, x[i].flip(-1)) for i, y in enumerate(full_view(x, gen())))
    assert {"weak", "simclr", "strong", "rotnet", "affine", "study", "flip_rotate_colour", "none"} <= set(
        A.list_augments())


def test_simclr_without_flips_never_mirrors() -> None:
    # full-image crops and no colour ops: each view is the image or its mirror; flip_p 0 (SVHN) keeps the image
    x = torch.rand(32, 3, 8, 8, generator=gen())
    views = {p: A.Augment("simclr", scale=(1.0, 1.0), jitter_p=0.0, grayscale_p=0.0, flip_p=p)(x, gen(2))
             for p in (0.0, 0.5)}
    assert torch.allclose(views[0.0], x, atol=1e-5)
    mirrored = torch.isclose(views[0.5], x.flip(-1), atol=1e-5).flatten(1).all(1)
    assert 8 <= int(mirrored.sum()) <= 24


NO_JITTER = ((1.0, 1.0), (1.0, 1.0), (1.0, 1.0), (0.0, 0.0))


def test_study_without_crop_or_jitter_flips_half_the_samples() -> None:
    x = torch.rand(32, 3, 8, 8, generator=gen())
    y = A.Augment("study", jitter=NO_JITTER, crop_p=0.0)(x, gen(1))
    same = torch.isclose(y, x, atol=1e-5).flatten(1).all(1)
    flipped = torch.isclose(y, x.flip(-1), atol=1e-5).flatten(1).all(1)
    assert (same ^ flipped).all() and 8 <= int(flipped.sum()) <= 24


def test_study_centre_crop_is_a_resize_of_the_centre_half_the_time() -> None:
    x = torch.rand(32, 3, 16, 16, generator=gen())
    assert A.centre_crop_box(16, 16, 0.75) == (2, 2, 12, 12)
    always = A.Augment("study", jitter=NO_JITTER, flip_p=0.0, crop_p=1.0)(x, gen(1))
    centre = F.interpolate(x[:, :, 2:14, 2:14], size=(16, 16), mode="bilinear", align_corners=False)
    assert torch.allclose(always, centre, atol=1e-5)
    upsampled = A.Augment("study", size=32, jitter=NO_JITTER, flip_p=0.0, crop_p=1.0)(x, gen(1))  # AlexNet's 64 px
    assert torch.allclose(upsampled, F.interpolate(x[:, :, 2:14, 2:14], size=(32, 32), mode="bilinear"), atol=1e-5)
    half = A.Augment("study", jitter=NO_JITTER, flip_p=0.0)(x, gen(2))
    cropped = torch.isclose(half, centre, atol=1e-5).flatten(1).all(1)
    assert (cropped ^ torch.isclose(half, x, atol=1e-5).flatten(1).all(1)).all() and 8 <= int(cropped.sum()) <= 24


def test_study_jitter_has_the_study_ranges_on_every_image() -> None:
    """On mid-gray only brightness acts (contrast, saturation and hue leave a flat gray unchanged):
    0.5 × U(0.7, 1.3), applied to every sample (no 'not jittered' share at exactly 0.5)."""
    gray = torch.full((64, 3, 4, 4), 0.5)
    y = A.Augment("study", flip_p=0.0, crop_p=0.0)(gray, gen())[:, :, 0, 0]
    assert torch.allclose(y, y[:, :1].expand_as(y), atol=1e-6)
    assert y.min() >= 0.35 - 1e-6 and y.max() <= 0.65 + 1e-6
    assert y.min() < 0.38 and y.max() > 0.62 and not torch.isclose(y, torch.tensor(0.5), atol=1e-4).any()


def test_flip_rotate_colour_applies_one_op_per_sample() -> None:
    """With identity colour and turns up to ±90° the three ops are told apart: about a third each is
    mirrored, left as it is (colour), or turned about its centre (the centre pixel stays). Ops drawn
    independently with p 0.5 would mirror half of them."""
    x = same_images(300, 3, 9)
    y = A.Augment("flip_rotate_colour", degrees=90.0, jitter=(0.0, 0.0, 0.0, 0.0), grayscale_p=0.0)(x, gen())
    flipped = torch.isclose(y, x.flip(-1), atol=1e-5).flatten(1).all(1)
    kept = torch.isclose(y, x, atol=1e-5).flatten(1).all(1)
    rotated = ~(flipped | kept)
    assert not (flipped & kept).any()
    assert all(70 <= int(op.sum()) <= 130 for op in (flipped, kept, rotated))
    assert torch.allclose(y[rotated, :, 4, 4], x[rotated, :, 4, 4], atol=1e-5)
    assert (y[rotated][:, :, 0, 0] == 0).any()  # a corner turned out of the image reads the black fill
    coloured = A.Augment("flip_rotate_colour", degrees=0.0)(x, gen())  # 0° turns: what is not a mirror is colour
    recoloured = ~torch.isclose(coloured, x, atol=1e-5).flatten(1).all(1) & ~torch.isclose(
        coloured, x.flip(-1), atol=1e-5).flatten(1).all(1)
    assert 70 <= int(recoloured.sum()) <= 130


def test_flip_twice_is_identity_and_rotations_cycle() -> None:
    x = torch.rand(5, 3, 7, 9, generator=gen())
    mask = torch.tensor([True, False, True, True, False])
    flipped = A.hflip(x, mask)
    assert torch.equal(flipped[1], x[1]) and torch.equal(flipped[0], x[0].flip(-1))
    assert torch.equal(A.hflip(flipped, mask), x)
    square = x[..., :7]
    y = square
    for _ in range(4):
        y = A.rotate90(y, 1)
    assert torch.equal(y, square)


def test_rotnet_batch() -> None:
    x = torch.rand(3, 1, 5, 5, generator=gen())
    rotations, labels = A.rotnet_batch(x)
    assert rotations.shape == (12, 1, 5, 5)
    assert labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    for k in range(4):
        assert torch.equal(rotations[3 * k: 3 * k + 3], torch.rot90(x, k, (2, 3)))


def test_sobel() -> None:
    constant = torch.full((2, 3, 6, 6), 0.7)
    assert torch.equal(A.sobel(constant), torch.zeros(2, 2, 6, 6))
    edge = torch.zeros(1, 1, 6, 6)
    edge[..., 3:] = 1.0  # a vertical edge: intensity changes along x only
    gradients = A.sobel(edge)
    assert torch.equal(gradients[:, 1], torch.zeros(1, 6, 6))
    assert (gradients[:, 0, :, 2:4] > 0).all() and (gradients[:, 0, :, :2] == 0).all()


@pytest.mark.parametrize("height, width, scale, ratio", [
    (32, 32, (0.08, 1.0), (3 / 4, 4 / 3)),
    (20, 40, (0.2, 1.0), (3 / 4, 4 / 3)),
    (16, 16, (0.9, 1.0), (4.0, 5.0)),  # never fits: the centre-crop fallback
])
def test_crop_boxes_stay_inside(height: int, width: int, scale: tuple[float, float],
                                ratio: tuple[float, float]) -> None:
    top, left, h, w = A.sample_crop_boxes(2000, height, width, scale, ratio, gen()).unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (h >= 1).all() and (w >= 1).all()
    assert (top + h <= height).all() and (left + w <= width).all()
    if scale[0] < 0.5:  # boxes vary in area and place
        assert len(set((h * w).tolist())) > 50 and len(set(left.tolist())) > 5


def test_resized_crop_matches_interpolate_of_the_crop() -> None:
    x = torch.rand(2, 3, 16, 20, generator=gen())
    boxes = torch.tensor([[2, 3, 9, 11], [0, 0, 16, 20]])
    y = A.resized_crop(x, boxes, (12, 12), flip=torch.tensor([False, True]))
    expected0 = F.interpolate(x[:1, :, 2:11, 3:14], size=(12, 12), mode="bilinear", align_corners=False)
    expected1 = F.interpolate(x[1:], size=(12, 12), mode="bilinear", align_corners=False).flip(-1)
    assert torch.allclose(y[:1], expected0, atol=1e-5) and torch.allclose(y[1:], expected1, atol=1e-5)


def test_full_box_crop_flipped_twice_is_identity() -> None:
    x = torch.rand(3, 3, 8, 8, generator=gen())
    y = A.random_resized_crop_flip(x, 8, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=1.0, g=gen(1))
    assert torch.allclose(y, x.flip(-1), atol=1e-5)
    back = A.random_resized_crop_flip(y, 8, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=1.0, g=gen(2))
    assert torch.allclose(back, x, atol=1e-5)


def test_padded_crop_is_an_exact_integer_shift() -> None:
    padding, n, size = 2, 32, 6
    x = (torch.arange(size * size, dtype=torch.float32) + 1).view(1, 1, size, size).expand(n, 1, size, size)
    y = A.random_crop_with_padding(x, padding, padding_mode="constant", g=gen())
    padded = F.pad(x[:1], (padding,) * 4)
    candidates = {
        (dy, dx, flip): padded[0, 0, dy: dy + size, dx: dx + size].flip(-1) if flip
        else padded[0, 0, dy: dy + size, dx: dx + size]
        for dy in range(2 * padding + 1) for dx in range(2 * padding + 1) for flip in (False, True)
    }
    found = [next(k for k, c in candidates.items() if torch.equal(c, y[i, 0])) for i in range(n)]
    assert len(set(found)) > 8  # shifts and flips vary per sample


def test_padded_crop_reflect_keeps_values() -> None:
    x = torch.rand(4, 3, 8, 8, generator=gen())
    y = A.random_crop_with_padding(x, 3, padding_mode="reflect", g=gen())
    for i in range(4):
        assert set(y[i].flatten().tolist()) <= set(x[i].flatten().tolist())


def test_jitter_with_zero_strength_is_identity() -> None:
    x = torch.rand(6, 3, 8, 8, generator=gen())
    assert torch.equal(A.color_jitter(x, 0.0, 0.0, 0.0, 0.0, p=1.0, g=gen()), x)
    gray = x[:, :1]
    assert torch.equal(A.color_jitter(gray, 0.0, 0.0, 0.4, 0.1, p=1.0, g=gen()), gray)  # one channel: no sat/hue


def test_jitter_matches_torchvision_in_a_per_sample_order() -> None:
    """Fixed factors (brightness 1.3, contrast 0.6): each sample equals torchvision's result in one of
    the two orders, and identical inputs get both orders within one batch."""
    x = same_images(24, 3, 8)
    y = A.color_jitter(x, brightness=(1.3, 1.3), contrast=(0.6, 0.6), saturation=0.0, hue=0.0, p=1.0, g=gen())
    brightness_first = TF.adjust_contrast(TF.adjust_brightness(x[:1], 1.3), 0.6)
    contrast_first = TF.adjust_brightness(TF.adjust_contrast(x[:1], 0.6), 1.3)
    assert not torch.allclose(brightness_first, contrast_first, atol=1e-3)
    matches_b = torch.isclose(y, brightness_first, atol=1e-5).flatten(1).all(1)
    matches_c = torch.isclose(y, contrast_first, atol=1e-5).flatten(1).all(1)
    assert (matches_b | matches_c).all() and matches_b.any() and matches_c.any()


def test_jitter_saturation_matches_torchvision() -> None:
    x = torch.rand(2, 3, 8, 8, generator=gen())
    y = A.color_jitter(x, 0.0, 0.0, (0.3, 0.3), 0.0, p=1.0, g=gen())
    assert torch.allclose(y, TF.adjust_saturation(x, 0.3), atol=1e-5)


def test_hue_turns_red_towards_yellow_and_keeps_luma() -> None:
    red = torch.tensor([0.6, 0.2, 0.2]).view(1, 3, 1, 1).expand(1, 3, 4, 4)
    y = A.color_jitter(red, 0.0, 0.0, 0.0, (0.05, 0.05), p=1.0, g=gen())
    assert y[0, 1, 0, 0] > red[0, 1, 0, 0] and y[0, 2, 0, 0] < red[0, 2, 0, 0]  # as torchvision's adjust_hue
    luma = torch.tensor([0.299, 0.587, 0.114])
    assert torch.allclose((y[0, :, 0, 0] * luma).sum(), (red[0, :, 0, 0] * luma).sum(), atol=1e-5)


def test_random_grayscale() -> None:
    x = torch.rand(64, 3, 4, 4, generator=gen())
    y = A.random_grayscale(x, 0.5, gen())
    gray = (y[:, 0] == y[:, 1]).flatten(1).all(1) & (y[:, 1] == y[:, 2]).flatten(1).all(1)
    assert 10 < gray.sum() < 54
    assert torch.equal(y[~gray], x[~gray])
    assert torch.allclose(y[gray, :1], TF.rgb_to_grayscale(x[gray]), atol=1e-6)


def test_gaussian_blur() -> None:
    x = torch.rand(4, 3, 12, 12, generator=gen())
    assert torch.allclose(A.gaussian_blur(x, p=0.0, g=gen()), x, atol=1e-6)
    blurred = A.gaussian_blur(x, sigma=(1.0, 1.0), p=1.0, kernel_size=5, g=gen())
    assert torch.allclose(blurred, TF.gaussian_blur(x, [5, 5], [1.0, 1.0]), atol=1e-5)


def test_random_affine_identity_and_rotation_convention() -> None:
    x = torch.rand(3, 1, 9, 9, generator=gen())
    same = A.random_affine(x, degrees=0.0, translate=0.0, scale=(1.0, 1.0), g=gen())
    assert torch.allclose(same, x, atol=1e-5)
    quarter = torch.full((3,), math.pi / 2)
    theta = A._affine_theta(quarter, torch.zeros(3, 2), torch.ones(3), torch.zeros(3, 2), 9, 9)
    assert torch.allclose(A._warp(x, theta, 0.0), torch.rot90(x, 1, (2, 3)), atol=1e-5)  # counter-clockwise


def test_cutout() -> None:
    y = A.cutout(torch.zeros(16, 1, 12, 12), 4, fill=1.0, g=gen())
    counts = y.flatten(1).sum(1)
    assert (counts >= 1).all() and (counts <= 16).all() and (counts == 16).any()


@pytest.mark.parametrize("per", A.MIX_PER)
def test_mixup_weights(per) -> None:
    x = torch.rand(32, 3, 4, 4, generator=gen())
    mixed, perm, lam = A.mixup(x, 0.3, gen(), per=per)
    assert sorted(perm.tolist()) == list(range(32))
    assert ((lam >= 0) & (lam <= 1)).all() and lam.shape == (32,)
    assert lam.unique().numel() == (32 if per == "sample" else 1)
    assert torch.allclose(mixed, lam.view(-1, 1, 1, 1) * x + (1 - lam.view(-1, 1, 1, 1)) * x[perm])


def test_mixup_and_ricap_draw_once_per_batch_by_default() -> None:
    """The papers' choice (mixup's Figure 1a code, RICAP's and LSD-C's "for each minibatch") is the default."""
    x = torch.rand(16, 3, 8, 8, generator=gen())
    assert A.mixup(x, 0.3, gen())[2].unique().numel() == 1
    assert A.ricap(x, 0.3, gen())[2].unique(dim=0).shape[0] == 1
    for op in (A.mixup, A.ricap):
        with pytest.raises(ValueError, match="per must be one of batch, sample, got 'image'"):
            op(x, 0.3, gen(), per="image")


def constant_images(n: int, size: int, channels: int = 3) -> torch.Tensor:
    """Image k filled with the value k: an output pixel names the image it was taken from."""
    return torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, channels, size, size).contiguous()


@pytest.mark.parametrize("per", A.MIX_PER)
def test_ricap_weights_match_the_tiles(per) -> None:
    n, size = 16, 8
    mixed, perms, weights = A.ricap(constant_images(n, size), 0.3, gen(), per=per)
    assert perms.shape == (4, n) and weights.shape == (n, 4)
    assert all(sorted(row.tolist()) == list(range(n)) for row in perms)  # each tile's sources permute the batch
    assert torch.allclose(weights.sum(1), torch.ones(n)) and (weights >= 0).all()
    for k in range(n):  # the share of each source image equals its tiles' weights
        share = (mixed[:, 0] == k).flatten(1).float().mean(1)
        assert torch.allclose(share, (weights * (perms.t() == k)).sum(1), atol=1e-6)
    # per batch every output shares one boundary (one row of tile weights); per sample most differ
    # (Beta(0.3, 0.3) often rounds to an edge, so some boundaries coincide)
    distinct = weights.unique(dim=0).shape[0]
    assert distinct == 1 if per == "batch" else distinct > n // 2


def test_ricap_per_batch_known_answer() -> None:
    """A per-batch RICAP of constant images: every output is cut at one boundary (h, w) into four tiles,
    each pixel holds the value of its tile's source image, and a tile's weight is its pixel count."""
    n, height, width = 6, 7, 10
    mixed, perms, weights = A.ricap(constant_images(n, 1).expand(n, 3, height, width), 0.3, gen(17))
    assert perms[:, 0].unique().numel() == 4  # the seed takes output 0's four tiles from four images
    # the boundary, read from output 0: the rows and columns of its top-left tile's value
    top_left = mixed[0, 0] == perms[0, 0]
    h, w = int(top_left[:, 0].sum()), int(top_left[0, :].sum())
    assert 0 < h < height and 0 < w < width  # and all four tiles are non-empty
    counts = torch.tensor([h * w, h * (width - w), (height - h) * w, (height - h) * (width - w)])
    assert torch.equal(weights, (counts / (height * width)).expand(n, 4))
    expected = torch.empty(n, height, width)
    expected[:, :h, :w] = perms[0].view(n, 1, 1)
    expected[:, :h, w:] = perms[1].view(n, 1, 1)
    expected[:, h:, :w] = perms[2].view(n, 1, 1)
    expected[:, h:, w:] = perms[3].view(n, 1, 1)
    assert torch.equal(mixed, expected[:, None].expand(n, 3, height, width))


@pytest.mark.parametrize("per", A.MIX_PER)
def test_ricap_layout_keeps_tiles_and_sources_and_draws_new_crops(per) -> None:
    """LSD-C's second RICAP view: the first view's tile sizes and sources, new crop positions."""
    n, size = 16, 8
    ident = constant_images(n, size, channels=1)
    position = torch.arange(size * size, dtype=torch.float32).view(1, 1, size, size).expand(n, 1, size, size)
    x = torch.cat([ident, position], 1)  # channel 0 names the image, channel 1 the pixel inside it
    first, perms, weights = A.ricap(x, 0.3, gen(2), per=per)
    second, perms_again, weights_again = A.ricap(x, 0.3, gen(3), layout=(perms, weights), per=per)
    assert perms_again is perms and torch.equal(weights_again, weights)
    assert torch.equal(first[:, 0], second[:, 0])  # the same source image at every pixel
    assert not torch.equal(first[:, 1], second[:, 1])  # crops drawn anew


def test_beta_sampler_moments() -> None:
    for a, b in ((0.3, 0.3), (2.0, 5.0)):
        s = A.sample_beta((20000,), a, b, gen())
        assert ((s >= 0) & (s <= 1)).all()
        assert abs(s.mean() - a / (a + b)) < 0.01
        assert abs(s.var() - a * b / ((a + b) ** 2 * (a + b + 1))) < 0.01


def test_randaugment_ops_match_torchvision() -> None:
    levels = torch.randint(0, 256, (4, 3, 10, 10), generator=gen(), dtype=torch.uint8)
    x = levels.float() / 255
    assert torch.equal(A.equalize(x) * 255, TF.equalize(levels).float())
    assert torch.allclose(A.autocontrast(x), TF.autocontrast(x), atol=1e-6)
    bits = torch.tensor([4, 5, 6, 8])
    posterized = torch.cat([TF.posterize(levels[i: i + 1], int(bits[i])) for i in range(4)]).float() / 255
    assert torch.allclose(A.posterize(x, bits), posterized, atol=1e-6)
    factor = torch.tensor([0.1, 0.5, 1.0, 1.9])
    sharpened = torch.cat([TF.adjust_sharpness(x[i: i + 1], float(factor[i])) for i in range(4)])
    assert torch.allclose(A.adjust_sharpness(x, factor), sharpened, atol=1e-5)
    threshold = torch.tensor([0.2, 0.5, 0.9, 1.0])
    solarized = torch.cat([TF.solarize(x[i: i + 1], float(threshold[i])) for i in range(4)])
    assert torch.equal(A.solarize(x, threshold), solarized)


def slanted_stroke(slope: float, size: int = 28, shift: int = 0) -> torch.Tensor:
    """A 1×1×size×size bar x = centre + shift + slope·(y − centre), ink 1 on 0, rows 6..21."""
    image = torch.zeros(1, 1, size, size)
    centre = size / 2 - 0.5
    for row in range(6, 22):
        col = round(centre + shift + slope * (row - centre))
        image[0, 0, row, col - 1:col + 2] = 1.0
    return image


def ink_moments(x: torch.Tensor) -> tuple[float, float, float]:
    """(centre row, centre column, cov(x, y)/var(y)) of a 1×1×H×W image."""
    ink = x[0, 0]
    rows = torch.arange(ink.shape[0]).float()[:, None]
    cols = torch.arange(ink.shape[1]).float()[None, :]
    mass = ink.sum()
    cy, cx = float((ink * rows).sum() / mass), float((ink * cols).sum() / mass)
    slope = float((ink * (rows - cy) * (cols - cx)).sum() / (ink * (rows - cy) ** 2).sum())
    return cy, cx, slope


@pytest.mark.parametrize("slope,shift", [(0.4, 0), (-0.3, 3), (0.0, -4)])
def test_deskew_straightens_a_slanted_stroke_and_centres_it(slope, shift):
    before = ink_moments(slanted_stroke(slope, shift=shift))
    assert abs(before[2] - slope) < 0.05  # the test image really is slanted by `slope`
    cy, cx, after = ink_moments(A.deskew(slanted_stroke(slope, shift=shift)))
    assert abs(after) < 0.03 and abs(cy - 13.5) < 0.3 and abs(cx - 13.5) < 0.3


def test_deskew_is_per_sample_and_leaves_empty_images_alone():
    batch = torch.cat([slanted_stroke(0.4), torch.zeros(1, 1, 28, 28), slanted_stroke(-0.3, shift=2)])
    out = A.deskew(batch)
    assert torch.equal(out[1], torch.zeros(1, 28, 28))
    assert torch.allclose(out[0:1], A.deskew(batch[0:1]), atol=1e-6)
    assert torch.allclose(out[2:3], A.deskew(batch[2:3]), atol=1e-6)

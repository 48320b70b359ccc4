"""Coates et al.'s patch k-means features (SCAN's `pixel_space: patches`): invariance to where a texture
sits, the feature layout, refusals, determinism, and a SCAN stage mining on them."""
from __future__ import annotations

import pytest
import torch

from labelless.data.stores import ImageStore
from labelless.errors import UserError
from labelless.evaluate.knn import knn_indices
from labelless.methods.patch_features import PatchKMeans
from labelless.methods.scan import pixel_space_features


def stripes(vertical: bool, g: torch.Generator) -> torch.Tensor:
    """Four 32×32 grey images of period-8 square-wave stripes at phases 0, 2, 4, 6, plus noise:
    4×H×W×1 uint8. A shift of 2 leaves two of them uncorrelated, a shift of 4 anti-correlated."""
    wave = ((torch.arange(32)[None] + torch.tensor([[0], [2], [4], [6]])) % 8 < 4).float()  # 4×32
    images = wave[:, None, :].expand(4, 32, 32) if vertical else wave[:, :, None].expand(4, 32, 32)
    noisy = images * 200 + 20 + torch.rand(4, 32, 32, generator=g) * 30
    return noisy.round().to(torch.uint8)[..., None]


def kind_agreement(features: torch.Tensor, kinds: torch.Tensor) -> float:
    """The share of images whose nearest neighbour (cosine) is of their kind."""
    return float((kinds[knn_indices(features, 1)] == kinds[:, None]).float().mean())


def test_patch_features_find_textures_wherever_they_sit_where_pixels_do_not():
    """Horizontal against vertical stripes at four phases: in centred pixels an image is uncorrelated
    with two of its kind and anti-correlated with the third, so its nearest neighbour is a coin toss;
    the quadrant-pooled patch codes do not depend on the phase."""
    g = torch.Generator().manual_seed(0)
    store = ImageStore(torch.cat([stripes(False, g), stripes(True, g)]))
    kinds = torch.arange(8) // 4
    torch.manual_seed(0)
    patches = pixel_space_features(store, "patches")
    assert patches.shape == (8, 4 * 400)
    assert kind_agreement(patches, kinds) == 1.0
    assert kind_agreement(pixel_space_features(store, "centred"), kinds) <= 0.75


def test_features_are_standardised_and_repeat_with_the_seed():
    images = (torch.rand(40, 12, 12, 3, generator=torch.Generator().manual_seed(1)) * 255).to(torch.uint8)
    store = ImageStore(images)

    def run() -> torch.Tensor:
        return PatchKMeans(centroids=8, samples=2000, generator=torch.Generator().manual_seed(3)).features(store)

    first = run()
    assert first.shape == (40, 32)
    assert torch.allclose(first.mean(0), torch.zeros(32), atol=1e-4)
    assert torch.equal(first, run())


def test_stride_grows_with_the_image_so_the_patch_count_stays_near_a_32_pixel_image():
    extractor = PatchKMeans(centroids=4, samples=500, generator=torch.Generator().manual_seed(0))
    images = (torch.rand(6, 64, 64, 1, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    extractor.fit(ImageStore(images))
    assert extractor.stride == 2
    assert extractor.encode(torch.rand(3, 1, 64, 64)).shape == (3, 16)


def test_images_smaller_than_a_patch_are_refused_in_one_line():
    with pytest.raises(UserError, match="smaller than a 6×6 patch"):
        PatchKMeans().fit(ImageStore(torch.zeros(4, 5, 5, 1, dtype=torch.uint8)))


def test_a_folder_with_fewer_patches_than_centroids_gets_one_centroid_a_patch():
    """Two 7×7 images hold 8 distinct 6×6 patches: 8 samples, 8 centroids, 4·8 features, all finite."""
    images = (torch.rand(2, 7, 7, 3, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    extractor = PatchKMeans(generator=torch.Generator().manual_seed(0))
    features = extractor.features(ImageStore(images))
    assert extractor.k == 8 and features.shape == (2, 32)
    assert torch.isfinite(features).all()


def test_a_scan_stage_with_pixel_space_patches_mines_its_neighbours_there():
    """The stripes again, through SCAN's own mining: each image's 3 neighbours are the 3 others of its kind."""
    from labelless.methods.base import EpochContext
    from labelless.methods.scan import SCAN

    g = torch.Generator().manual_seed(0)
    store = ImageStore(torch.cat([stripes(False, g), stripes(True, g)]))
    torch.manual_seed(0)
    scan = SCAN(k=2, in_channels=1, image_size=32, backbone="mlp", heads=1, num_neighbours=3, pixel_space="patches")
    neighbours = scan.mine_neighbours(EpochContext(0, 1, store, torch.device("cpu"), batch_size=8))
    kinds = torch.arange(8) // 4
    assert torch.equal(kinds[neighbours], kinds[:, None].expand(8, 3))

"""The parts CPC is assembled from: overlapping patch grid, patch augmentation, causal context."""

import pytest
import torch

from sslvit.errors import ConfigError
from sslvit.methods.cpc.context import CausalContext, orient, row_causal_mask
from sslvit.methods.cpc.patch_grid import GRID_PRESETS, PatchGrid, augment_patches


@pytest.mark.parametrize("image_size", sorted(GRID_PRESETS))
def test_presets_are_7x7_grids_with_half_overlap(image_size):
    patch, stride = GRID_PRESETS[image_size]
    grid = PatchGrid(image_size, patch, stride)
    assert grid.size == 7 and grid.overlap == patch // 2
    assert grid.row_end(grid.size - 1) == image_size, "the last patch ends at the image edge"


def test_patches_are_the_stated_crops_and_cover_the_image():
    grid = PatchGrid(32, 8, 4)
    images = torch.randn(2, 3, 32, 32)
    patches = grid.extract(images)
    assert patches.shape == (2, 7, 7, 3, 8, 8)
    for i, j in [(0, 0), (3, 5), (6, 6), (6, 0)]:
        assert torch.equal(patches[:, i, j], images[:, :, 4 * i : 4 * i + 8, 4 * j : 4 * j + 8])
    # neighbours share exactly P - stride = 4 pixel rows / columns
    assert torch.equal(patches[:, 2, 3, :, 4:], patches[:, 3, 3, :, :4])
    assert torch.equal(patches[:, 2, 3, :, :, 4:], patches[:, 2, 4, :, :, :4])
    # how many patches hold each pixel: 1 at the corners, 2 along the edges, 4 inside
    count = torch.zeros(32, 32)
    for i in range(7):
        for j in range(7):
            count[4 * i : 4 * i + 8, 4 * j : 4 * j + 8] += 1
    assert count.min() == 1 and count[0, 0] == 1 and count[0, 10] == 2 and count[4:28, 4:28].eq(4).all()


@pytest.mark.parametrize(
    "image_size,patch,stride,message",
    [
        (32, 8, 5, "not a multiple of model.patch_stride=5"),
        (32, 8, 12, "0 < model.patch_stride (12) <= patch side"),
        (8, 16, 8, "<= model.image_size (8)"),
    ],
)
def test_bad_grid_geometry_names_the_settings(image_size, patch, stride, message):
    with pytest.raises(ConfigError, match="presets: 32 px: 8 px patches, stride 4") as err:
        PatchGrid(image_size, patch, stride)
    assert message in str(err.value)


def test_wrong_image_size_is_refused():
    with pytest.raises(ValueError, match=r"expected images \[N, C, 32, 32\]"):
        PatchGrid(32, 8, 4).extract(torch.randn(1, 3, 16, 16))


def test_channel_dropping_keeps_one_channel_per_patch():
    patches = torch.rand(300, 3, 4, 4) + 0.5
    dropped = augment_patches(patches, channel_drop_prob=1.0, hflip_prob=0.0)
    alive = dropped.flatten(2).abs().sum(-1) > 0  # [M, C]
    assert alive.sum(1).eq(1).all()
    assert torch.equal(dropped[alive], patches[alive])
    assert alive.float().mean(0).min() > 0.2, "the kept channel is drawn uniformly"
    assert torch.equal(augment_patches(patches, channel_drop_prob=0.0, hflip_prob=0.0), patches)


def test_draws_decide_flip_drop_and_kept_channel_per_patch():
    patches = torch.rand(4, 3, 4, 4) + 0.5
    draws = torch.tensor([[0.1, 0.9, 0.0], [0.9, 0.1, 0.5], [0.1, 0.1, 0.99], [0.9, 0.9, 0.5]])
    out = augment_patches(patches, channel_drop_prob=0.5, hflip_prob=0.5, draws=draws)
    assert torch.equal(out[0], patches[0].flip(-1))  # flipped, all channels
    assert torch.equal(out[1, 1], patches[1, 1]) and out[1, [0, 2]].eq(0).all()  # channel 1 kept only
    assert torch.equal(out[2, 2], patches[2, 2].flip(-1)) and out[2, :2].eq(0).all()  # flipped, channel 2 kept
    assert torch.equal(out[3], patches[3])  # untouched
    many = torch.rand(400, 3, 4, 4) + 0.5
    flipped = (augment_patches(many, 0.0, 0.5) == many.flip(-1)).flatten(1).all(1)
    dropped = (augment_patches(many, 0.5, 0.0).flatten(2).abs().sum(-1) == 0).any(1)
    assert 0.35 < flipped.float().mean() < 0.65 and 0.35 < dropped.float().mean() < 0.65


def test_orient_scans_each_direction_down_the_rows():
    ids = torch.arange(9).view(1, 3, 3)  # original grid: rows 0 1 2 / 3 4 5 / 6 7 8
    assert orient(ids, "top_down")[0, 0].tolist() == [0, 1, 2]
    assert orient(ids, "bottom_up")[0, 0].tolist() == [6, 7, 8]
    assert orient(ids, "left_right")[0, 0].tolist() == [0, 3, 6]
    assert orient(ids, "right_left")[0, 0].tolist() == [2, 5, 8]
    with pytest.raises(ValueError, match="direction"):
        orient(ids, "diagonal")


def test_row_causal_mask():
    mask = row_causal_mask(2, 2)  # positions (0,0) (0,1) (1,0) (1,1)
    assert mask.tolist() == [[True, True, False, False]] * 2 + [[True] * 4] * 2


def test_context_rows_depend_only_on_rows_above():
    context = CausalContext(in_dim=8, dim=16, depth=2, num_heads=2, grid_size=4)
    z = torch.randn(2, 4, 4, 8, requires_grad=True)
    c = context(z)
    probe = torch.randn_like(c)  # a random read-out: a plain sum of LayerNorm outputs has no gradient
    for i in range(4):
        (grad,) = torch.autograd.grad((c[:, i] * probe[:, i]).sum(), z, retain_graph=True)
        assert grad[:, i + 1 :].eq(0).all(), f"row {i} sees rows below it"
        assert grad[:, : i + 1].abs().sum(-1).gt(0).all(), f"row {i} should see every latent of rows 0..{i}"

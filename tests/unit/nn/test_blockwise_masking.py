"""BEiT's blockwise masking: target fraction, rectangular blocks, per-sample masks, grid-scaled parameters."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from sslvit.errors import ConfigError
from sslvit.nn.masking import block_mask, blockwise_masking, default_min_block, num_kept, random_masking


def target_count(length: int, ratio: float) -> int:
    return length - num_kept(length, ratio)


@pytest.mark.parametrize("grid", [(4, 4), (8, 8), (14, 14), (6, 10)])
@pytest.mark.parametrize("ratio", [0.4, 0.25])
def test_masked_fraction_close_to_target_over_many_seeds(grid, ratio):
    length = grid[0] * grid[1]
    target = target_count(length, ratio)
    counts = torch.cat(
        [blockwise_masking(32, grid, ratio, seeds=range(32 * s, 32 * s + 32)).sum(1) for s in range(20)]
    )  # 640 masks
    assert counts.max() <= target  # never more than asked
    # as in the official algorithm, a sample stops short when 10 attempts fail: rarely, and by less than a block
    assert counts.float().mean() >= 0.98 * target
    assert (target - counts).max() <= default_min_block(length) + 1
    assert (counts == target).float().mean() > 0.5


def test_mask_is_the_union_of_rectangles_within_the_grid():
    rng = np.random.default_rng(0)
    for _ in range(200):
        mask, blocks = block_mask(8, 8, 26, 5, 26, 0.3, rng)
        union = np.zeros((8, 8), dtype=bool)
        for top, left, h, w in blocks:
            assert 0 < h < 8 and 0 < w < 8 and top + h <= 8 and left + w <= 8
            # rounding allows a little beyond [0.3, 1/0.3] for thin blocks
            assert 0.3 / 2.5 <= h / w <= 2.5 / 0.3
            union[top : top + h, left : left + w] = True
        assert np.array_equal(union, mask)
        assert mask.sum() <= 26


def test_blocks_form_few_connected_regions_unlike_random_masking():
    grid, ratio = (14, 14), 0.4
    block = blockwise_masking(200, grid, ratio, seeds=range(200))
    scattered = random_masking(200, 196, ratio).mask.bool()

    def mean_components(masks: torch.Tensor) -> float:
        return float(np.mean([ndimage.label(m.reshape(grid).numpy())[1] for m in masks]))

    assert mean_components(block) < 3.0 < 20.0 < mean_components(scattered)


def test_masks_differ_per_sample_and_follow_their_seeds():
    masks = blockwise_masking(16, (8, 8), seeds=range(16))
    assert masks.shape == (16, 64) and masks.dtype == torch.bool
    assert len({tuple(m.tolist()) for m in masks}) == 16
    # sample n's mask depends on seeds[n] alone, not on the batch around it
    assert torch.equal(blockwise_masking(3, (8, 8), seeds=[5, 0, 9])[1], masks[0])
    assert not torch.equal(masks, blockwise_masking(16, (8, 8), seeds=range(1, 17)))
    torch.manual_seed(0)  # without seeds: the global RNG, so seed_everything governs them
    unseeded = blockwise_masking(4, (8, 8))
    torch.manual_seed(0)
    assert torch.equal(unseeded, blockwise_masking(4, (8, 8)))
    with pytest.raises(ValueError, match="one integer per sample"):
        blockwise_masking(4, (8, 8), seeds=[1, 2])


def test_block_size_scales_with_the_grid():
    # 16 of 196 patches in the paper's 14x14 grid; proportionally fewer on smaller grids
    assert [default_min_block(n) for n in (196, 64, 16, 4)] == [16, 5, 1, 1]
    for grid in ((8, 8), (14, 14)):
        length = grid[0] * grid[1]
        rng = np.random.default_rng(0)
        first_blocks = [
            block_mask(*grid, target_count(length, 0.4), default_min_block(length), length, 0.3, rng)[1][0]
            for _ in range(300)
        ]
        areas = np.array([h * w for _, _, h, w in first_blocks]) / length
        # the first block covers a similar share of the image whatever the grid: 2-40%, ~20% on average
        assert 0.12 < areas.mean() < 0.3 and areas.max() <= 0.41


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"min_block": 0}, "min_block"),
        ({"min_block": 5, "max_block": 3}, "max_block"),
        ({"min_aspect": 0.0}, "min_aspect"),
        ({"mask_ratio": 1.0}, "mask_ratio"),
    ],
)
def test_bad_settings_are_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        blockwise_masking(2, (8, 8), **kwargs)

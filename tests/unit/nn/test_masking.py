import pytest
import torch

from sslvit.nn.masking import gather_tokens, num_kept, patchify, random_masking, unpatchify


@pytest.mark.parametrize("length,ratio", [(64, 0.75), (49, 0.6), (196, 0.75), (10, 0.5)])
def test_exact_masked_count(length, ratio):
    m = random_masking(8, length, ratio)
    keep = int(length * (1 - ratio))
    assert m.mask.shape == (8, length)
    assert torch.all(m.mask.sum(1) == length - keep)
    assert m.ids_keep.shape == (8, keep)
    # kept indices are exactly the unmasked positions
    assert torch.all(torch.gather(m.mask, 1, m.ids_keep) == 0)


def test_masks_differ_per_sample():
    m = random_masking(16, 64, 0.75)
    assert len({tuple(row.tolist()) for row in m.mask}) == 16


def test_restore_inverts_shuffle():
    noise = torch.rand(4, 20)
    m = random_masking(4, 20, 0.5, noise=noise)
    ids_shuffle = torch.argsort(noise, dim=1)
    x = torch.randn(4, 20, 3)
    shuffled = gather_tokens(x, ids_shuffle)
    assert torch.equal(gather_tokens(shuffled, m.ids_restore), x)
    # and the mask, shuffled, is [0]*keep + [1]*rest
    assert torch.equal(torch.gather(m.mask, 1, ids_shuffle)[0], torch.tensor([0.0] * 10 + [1.0] * 10))


def test_noise_reproduces_mask_and_small_noise_is_kept():
    noise = torch.rand(3, 16)
    a, b = random_masking(3, 16, 0.75, noise=noise), random_masking(3, 16, 0.75, noise=noise.clone())
    assert torch.equal(a.mask, b.mask) and torch.equal(a.ids_keep, b.ids_keep)
    smallest = noise.argsort(1)[:, :4]
    assert torch.equal(a.ids_keep, smallest)


def test_generator_reproduces_mask():
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(random_masking(2, 16, 0.5, generator=g1).mask, random_masking(2, 16, 0.5, generator=g2).mask)


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.1, 1.5])
def test_bad_ratio(ratio):
    with pytest.raises(ValueError, match="mask_ratio"):
        random_masking(2, 16, ratio)


def test_ratio_that_keeps_nothing():
    with pytest.raises(ValueError, match="no visible patch"):
        num_kept(4, 0.9)


def test_bad_noise_shape():
    with pytest.raises(ValueError, match="noise"):
        random_masking(2, 16, 0.5, noise=torch.rand(2, 15))


def test_patchify_round_trip_and_layout():
    images = torch.randn(2, 3, 12, 8)
    patches = patchify(images, 4)
    assert patches.shape == (2, 6, 48)
    assert torch.equal(unpatchify(patches, 4, grid_size=(3, 2)), images)
    # patch 1 is row 0, column 1; its vector is (row, col, channel) ordered pixels
    expected = images[0, :, 0:4, 4:8].permute(1, 2, 0).reshape(-1)
    assert torch.equal(patches[0, 1], expected)


def test_patchify_square_default_and_errors():
    images = torch.randn(1, 3, 8, 8)
    assert torch.equal(unpatchify(patchify(images, 2), 2), images)
    with pytest.raises(ValueError, match="divisible"):
        patchify(torch.randn(1, 3, 10, 8), 4)
    with pytest.raises(ValueError, match="square"):
        unpatchify(torch.randn(1, 6, 12), 2)

import torch

from sslvit.nn.losses import masked_cross_entropy, masked_mse, normalize_patches


def test_masked_mse_matches_reference_and_ignores_visible():
    pred, target = torch.randn(2, 5, 6), torch.randn(2, 5, 6)
    mask = torch.tensor([[1, 0, 1, 0, 0], [0, 0, 0, 1, 1]], dtype=torch.float)
    per_patch = ((pred - target) ** 2).mean(-1)
    expected = (per_patch[0, 0] + per_patch[0, 2] + per_patch[1, 3] + per_patch[1, 4]) / 4
    assert torch.allclose(masked_mse(pred, target, mask), expected)
    changed = pred.clone()
    changed[mask == 0] = 100.0
    assert torch.equal(masked_mse(changed, target, mask), masked_mse(pred, target, mask))


def test_normalized_patches_have_zero_mean_unit_variance():
    patches = torch.rand(3, 7, 48) * 5 + 2
    normed = normalize_patches(patches)
    assert torch.allclose(normed.mean(-1), torch.zeros(3, 7), atol=1e-5)
    assert torch.allclose(normed.var(-1), torch.ones(3, 7), atol=1e-3)


def test_masked_cross_entropy_only_masked_positions():
    logits, targets = torch.randn(2, 4, 10), torch.randint(0, 10, (2, 4))
    mask = torch.tensor([[1, 0, 0, 1], [0, 1, 0, 0]])
    expected = torch.nn.functional.cross_entropy(
        torch.stack([logits[0, 0], logits[0, 3], logits[1, 1]]),
        torch.stack([targets[0, 0], targets[0, 3], targets[1, 1]]),
    )
    assert torch.allclose(masked_cross_entropy(logits, targets, mask), expected)
    changed = logits.clone()
    changed[mask == 0] = 0.0
    assert torch.equal(masked_cross_entropy(changed, targets, mask), masked_cross_entropy(logits, targets, mask))

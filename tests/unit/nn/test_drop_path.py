"""Stochastic depth drawn from each row's key: the same for a sample whatever batch, rank or global seed it
meets, the same in a recomputation under activation checkpointing, and at the configured rate."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from sslvit.nn.backbone import VisionTransformer
from sslvit.nn.drop_path import KeyedDropPath, drop_path_draws


@pytest.fixture
def dropping(tiny_vit):
    torch.manual_seed(0)
    return VisionTransformer(replace(tiny_vit, drop_path_rate=0.5)).train()


def test_blocks_use_keyed_drop_path_and_keep_timms_state_dict(dropping, tiny_vit):
    assert isinstance(dropping.blocks[-1].drop_path1, KeyedDropPath)
    assert set(dropping.state_dict()) == set(VisionTransformer(tiny_vit).state_dict())


def test_a_rows_drop_path_follows_its_key_not_the_batch_or_the_global_seed(dropping):
    images = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    keys = torch.arange(100, 106, dtype=torch.int64) * 7919
    torch.manual_seed(1)
    together = dropping.forward_features(images, row_keys=keys)
    torch.manual_seed(2)  # another global seed: another rank under DDP, which Lightning seeds the same way
    apart = torch.cat([dropping.forward_features(images[i : i + 2], row_keys=keys[i : i + 2]) for i in (4, 2, 0)])
    order = [4, 5, 2, 3, 0, 1]
    assert torch.equal(apart, together[order])
    # Without keys the draws come from the global generator (timm's behaviour): another seed, other outputs.
    torch.manual_seed(1)
    first = dropping.forward_features(images)
    torch.manual_seed(2)
    assert not torch.equal(first, dropping.forward_features(images))
    # Two samples with other keys meet other decisions; eval mode drops nothing.
    assert not torch.equal(dropping.forward_features(images, row_keys=keys + 1), together)
    dropping.eval()
    assert torch.equal(dropping.forward_features(images, row_keys=keys), dropping.forward_features(images))


def test_the_drop_rate_is_the_configured_one():
    draws = drop_path_draws(torch.arange(4000, dtype=torch.int64), 24, torch.device("cpu"))
    dropped = (draws >= 0.9).float().mean().item()  # drop_prob 0.1: dropped when the draw is not below keep = 0.9
    assert abs(dropped - 0.1) < 0.005, dropped
    module = KeyedDropPath(0.25).train()
    module.draws = torch.tensor([0.1, 0.8, 0.74, 0.76])
    out = module(torch.ones(4, 2, 3))
    assert out[:, 0, 0].tolist() == pytest.approx([1 / 0.75, 0.0, 1 / 0.75, 0.0])


def test_checkpointed_blocks_recompute_the_same_drops(dropping):
    """Under grad checkpointing the backward pass reruns each block: its drops must be the forward's."""
    images = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    keys = torch.tensor([11, 22, 33, 44], dtype=torch.int64)
    grads = []
    for checkpointing in (False, True):
        dropping.set_grad_checkpointing(checkpointing)
        dropping.zero_grad()
        torch.manual_seed(len(grads))  # the global generator differs between the two passes
        dropping.forward_features(images, row_keys=keys).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in dropping.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name, grad in grads[0].items():
        assert torch.allclose(grad, grads[1][name], atol=1e-6), name

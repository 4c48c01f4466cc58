"""Linear probe: accuracy on separable and on random labels, parallel heads, LARS, the protocol path."""

import math
from dataclasses import replace

import pytest
import torch

from sslvit.data import SSLDataModule
from sslvit.errors import ConfigError
from sslvit.eval.features import Features, dataset_features
from sslvit.eval.linear import HeadwiseSGD, ProbeSettings, ProbeTrainer, linear_probe
from sslvit.eval.linear_protocol import linear_probe_protocol
from sslvit.nn.backbone import VisionTransformer


def gaussian_classes(n, classes=10, dim=32, seed=0, random_labels=False):
    g = torch.Generator().manual_seed(seed)
    centers = 2.0 * torch.randn(classes, dim, generator=torch.Generator().manual_seed(7))
    labels = torch.randint(0, classes, (n,), generator=g)
    features = centers[labels] + torch.randn(n, dim, generator=g)
    if random_labels:
        labels = torch.randint(0, classes, (n,), generator=g)
    return Features(features, labels)


@pytest.mark.parametrize("optimizer", ["lars", "sgd"])
def test_separable_features_are_learned(optimizer):
    train, val = gaussian_classes(2000), gaussian_classes(500, seed=1)
    result = linear_probe(train, val, ProbeSettings(epochs=20, batch_size=256, warmup_epochs=2, optimizer=optimizer))
    assert result.top1 > 95 and result.top5 >= result.top1
    assert len(result.per_lr) == 6 and result.lr in result.per_lr and result.selection == "held_out"
    held = sum(math.ceil(0.1 * int(n)) for n in train.labels.bincount())  # a tenth of each class, rounded up
    assert result.held_out["num_images"] == held and result.held_out["top1"] == result.per_lr[result.lr]["top1"]


def test_the_learning_rate_is_chosen_without_looking_at_val():
    train, val = gaussian_classes(1000, seed=4), gaussian_classes(300, seed=5)
    noise = Features(val.features, torch.randint(0, 10, (300,), generator=torch.Generator().manual_seed(6)))
    settings = ProbeSettings(epochs=5, batch_size=128, warmup_epochs=1, base_lrs=(0.01, 0.3, 10.0, 1000.0))
    honest, on_noise = linear_probe(train, val, settings), linear_probe(train, noise, settings)
    assert honest.lr == on_noise.lr and honest.per_lr == on_noise.per_lr, "val labels must not change the choice"
    assert honest.top1 > 90 > on_noise.top1
    # What is reported: the chosen learning rate retrained on the whole train split, val evaluated once.
    alone = linear_probe(train, val, replace(settings, base_lrs=(honest.lr,)))
    assert alone.selection == "single" and (alone.top1, alone.top5) == (honest.top1, honest.top5)
    # The old rule, kept for comparisons with papers: the best head on val, said to be optimistic.
    optimistic = linear_probe(train, val, replace(settings, selection="val"))
    assert optimistic.top1 == max(r["top1"] for r in optimistic.per_lr.values())
    assert optimistic.to_dict()["per_lr_on"] == "val" and "optimistic" in optimistic.note


def test_random_labels_stay_near_chance():
    train = gaussian_classes(2000, random_labels=True)
    val = gaussian_classes(1000, seed=1, random_labels=True)
    result = linear_probe(train, val, ProbeSettings(epochs=20, batch_size=256, warmup_epochs=2))
    assert result.top1 < 16, result.per_lr  # chance is 10%; the best of six heads on 1000 samples


@pytest.mark.parametrize("optimizer", ["lars", "sgd"])
def test_parallel_heads_equal_heads_trained_alone(optimizer):
    batches = [(torch.randn(64, 16), torch.randint(0, 4, (64,))) for _ in range(12)]

    def trained(lrs, weight):
        trainer = ProbeTrainer(16, 4, lrs, 64, total_steps=12, warmup_steps=3, optimizer=optimizer)
        with torch.no_grad():
            trainer.heads.weight.copy_(weight)
        for x, y in batches:
            trainer.train_step(x, y)
        return trainer.heads

    init = 0.01 * torch.randn(2, 4, 16)
    together = trained([0.5, 5.0], init)
    for h, lr in enumerate([0.5, 5.0]):
        alone = trained([lr], init[h : h + 1])
        assert torch.allclose(together.weight[h], alone.weight[0], atol=1e-6)
        assert torch.allclose(together.bias[h], alone.bias[0], atol=1e-6)
    assert not torch.allclose(together.weight[0], together.weight[1])


def test_lars_step_scales_weights_by_trust_ratio_and_leaves_biases():
    weight = torch.nn.Parameter(torch.randn(2, 3, 5))
    bias = torch.nn.Parameter(torch.randn(2, 3))
    weight.grad, bias.grad = torch.randn(2, 3, 5), torch.randn(2, 3)
    before_w, before_b = weight.detach().clone(), bias.detach().clone()
    lrs = torch.tensor([0.1, 2.0])
    HeadwiseSGD(weight, bias, lrs, momentum=0.9, lars=True, trust_coefficient=0.001).step(factor=0.5)
    for h in range(2):
        trust = 0.001 * before_w[h].norm() / weight.grad[h].norm()
        assert torch.allclose(weight[h], before_w[h] - 0.5 * lrs[h] * trust * weight.grad[h])
        assert torch.allclose(bias[h], before_b[h] - 0.5 * lrs[h] * bias.grad[h])


def test_bad_probe_settings():
    train = gaussian_classes(100)
    with pytest.raises(ConfigError, match="optimizer='adam' is unknown"):
        linear_probe(train, train, ProbeSettings(optimizer="adam"))
    with pytest.raises(ConfigError, match="learning rates must be positive"):
        linear_probe(train, train, ProbeSettings(base_lrs=(0.1, -1.0)))
    with pytest.raises(ConfigError, match="epochs"):
        ProbeSettings(epochs=0)


def test_protocol_path_trains_through_the_frozen_backbone(tiny_vit, image_folder):
    backbone = VisionTransformer(tiny_vit).train()
    weights = {k: v.clone() for k, v in backbone.state_dict().items()}
    data = SSLDataModule(dataset="imagefolder", root=str(image_folder), image_size=16, batch_size=8, num_workers=0)
    val = dataset_features(backbone, data, "val")
    epochs = []
    settings = ProbeSettings(epochs=3, batch_size=8, warmup_epochs=1, base_lrs=(1.0, 10.0))
    result = linear_probe_protocol(backbone, data, val, settings=settings, progress=lambda e, s: epochs.append(e))
    assert epochs == [0, 1, 2, 3, 4, 5], "3 epochs for the choice on held-out images, 3 to retrain the chosen one"
    assert result.settings["path"] == "protocol" and result.settings["num_train"] == 24
    assert result.held_out["num_images"] == 3, "one of each class's 8 images"
    assert set(result.per_lr) == {1.0, 10.0}
    # Three colour classes (chance 33%): augmented images through a random encoder still separate them, so a
    # probe that trains on the wrong labels, images or order would be near chance (measured: 100%).
    assert result.top1 >= 90 and result.top5 == 100
    assert backbone.training, "the caller's mode is restored"
    assert all(torch.equal(v, backbone.state_dict()[k]) for k, v in weights.items()), "the backbone stays frozen"


def test_the_same_seed_gives_the_same_probe():
    train, val = gaussian_classes(300, seed=2), gaussian_classes(100, seed=3)
    torch.manual_seed(1)
    settings = ProbeSettings(epochs=3, batch_size=64)
    first = linear_probe(train, val, settings)
    torch.manual_seed(2)  # the global RNG does not matter
    assert linear_probe(train, val, settings).per_lr == first.per_lr
    assert linear_probe(train, val, replace(settings, seed=1)).per_lr != first.per_lr


@pytest.mark.parametrize("batch_size", [64, 512])
def test_each_head_steps_by_its_base_lr_times_batch_over_256(batch_size):
    """MAE's rule lr = base_lr * batch / 256, checked against a gradient computed here with plain autograd:
    the first SGD step (empty momentum, no warmup) moves each head by exactly -lr * its own gradient."""
    features, labels = torch.randn(batch_size, 8), torch.randint(0, 3, (batch_size,))
    trainer = ProbeTrainer(8, 3, [0.5, 4.0], batch_size, total_steps=100, warmup_steps=0, optimizer="sgd")
    heads = trainer.heads
    weight, bias = heads.weight.detach().clone(), heads.bias.detach().clone()
    grads = []
    for h in range(2):  # each head's loss alone, through a copy of the heads' forward
        w, b = weight[h].clone().requires_grad_(), bias[h].clone().requires_grad_()
        normed = torch.nn.functional.batch_norm(features, None, None, training=True, eps=heads.norm.eps)
        torch.nn.functional.cross_entropy(normed @ w.T + b, labels).backward()
        grads.append((w.grad, b.grad))
    trainer.train_step(features, labels)
    for h, base_lr in enumerate([0.5, 4.0]):
        lr = base_lr * batch_size / 256
        torch.testing.assert_close(heads.weight[h].detach(), weight[h] - lr * grads[h][0], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(heads.bias[h].detach(), bias[h] - lr * grads[h][1], atol=1e-6, rtol=1e-5)

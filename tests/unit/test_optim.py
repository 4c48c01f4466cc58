"""Weight decay: which parameters get it, under both group builders, on the timm that is installed.

``layer_decay_param_groups`` hands its no-decay names to timm as glob patterns (``*cls_token``); timm
matches globs in ``no_weight_decay_list`` only from 1.0.21 (before, it compared names exactly, so the
CLS token, positions and mask token silently got weight decay). This test is what fails on such a
timm: pyproject's floor (``timm>=1.0.21``) is checked by running it there.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sslvit.nn.backbone import VisionTransformer, ViTConfig
from sslvit.optim import layer_decay_param_groups, param_groups, vit_layer_id

WEIGHT_DECAY = 0.05


class Model(nn.Module):
    """A ViT with every kind of parameter a method has: learned positions, layer scale, a mask token, a head."""

    def __init__(self) -> None:
        super().__init__()
        config = ViTConfig(
            arch="vit_tiny",
            img_size=16,
            patch_size=4,
            embed_dim=32,
            depth=2,
            num_heads=2,
            pos_embed="learned",
            layer_scale_init=0.1,
        )
        self.backbone = VisionTransformer(config)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, 32))
        self.head = nn.Linear(32, 3)

    def group_matcher(self, coarse: bool = False):
        return lambda name: vit_layer_id(name, depth=2)


def weight_decay_of(groups: list[dict], model: nn.Module) -> dict[str, float]:
    """Every optimized parameter's name with its group's weight decay (a parameter in two groups fails)."""
    names = {id(p): n for n, p in model.named_parameters()}
    found: dict[str, float] = {}
    for group in groups:
        for param in group["params"]:
            assert names[id(param)] not in found, f"{names[id(param)]} is in two groups"
            found[names[id(param)]] = group["weight_decay"]
    return found


# Written out, not derived from sslvit.optim.decays: the rule is what this test checks.
NO_DECAY = {
    "backbone.cls_token", "backbone.pos_embed", "mask_token",  # tokens and learned positions
    "backbone.patch_embed.proj.bias", "head.bias", "backbone.norm.weight", "backbone.norm.bias",
    *(f"backbone.blocks.{i}.{name}" for i in range(2) for name in (
        "norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias",  # norms
        "attn.qkv.bias", "attn.proj.bias", "mlp.fc1.bias", "mlp.fc2.bias",  # biases
        "ls1.gamma", "ls2.gamma",  # layer scale
    )),
}  # fmt: skip
DECAY = {
    "backbone.patch_embed.proj.weight", "head.weight",
    *(f"backbone.blocks.{i}.{name}.weight" for i in range(2)
      for name in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")),
}  # fmt: skip


@pytest.mark.parametrize(
    "build",
    [
        lambda model: param_groups(model.named_parameters(), WEIGHT_DECAY),
        lambda model: layer_decay_param_groups(model, WEIGHT_DECAY, layer_decay=0.75),
    ],
    ids=["param_groups", "layer_decay_param_groups"],
)
def test_weight_decay_falls_on_weight_matrices_only(build):
    model = Model()
    assert {n for n, _ in model.named_parameters()} == NO_DECAY | DECAY, "the table lists every parameter"
    decay = weight_decay_of(build(model), model)
    assert set(decay) == NO_DECAY | DECAY, "every trainable parameter is optimized, once"
    for name in ("backbone.cls_token", "backbone.pos_embed", "mask_token", "backbone.blocks.0.ls1.gamma"):
        assert decay[name] == 0.0, f"{name} must not be decayed (timm < 1.0.21 ignores glob patterns)"
    assert {n for n, wd in decay.items() if wd == 0.0} == NO_DECAY
    assert {n for n, wd in decay.items() if wd == WEIGHT_DECAY} == DECAY


def test_frozen_parameters_are_left_out_of_both():
    model = Model()
    model.backbone.cls_token.requires_grad_(False)
    model.head.weight.requires_grad_(False)
    for groups in (param_groups(model.named_parameters(), WEIGHT_DECAY), layer_decay_param_groups(model, 0.05, 0.75)):
        assert set(weight_decay_of(groups, model)) == (NO_DECAY | DECAY) - {"backbone.cls_token", "head.weight"}

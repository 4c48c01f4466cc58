"""CPC on the shared backbone: no leakage from rows below, positives, gradients, learning."""

import math

import pytest
import torch
from torch import nn

from sslvit.errors import ConfigError
from sslvit.methods import CPC
from sslvit.methods.cpc.context import DIRECTIONS, orient
from sslvit.nn.backbone import ViTConfig

# 16 px images, 4 px patches with stride 2: a 7x7 grid; each patch is 2x2 tokens of 2 px.
PATCH_VIT = ViTConfig(arch="vit_tiny", img_size=4, patch_size=2, embed_dim=32, depth=1, num_heads=2)


def tiny_cpc(**kwargs) -> CPC:
    settings = dict(backbone=PATCH_VIT, image_size=16, context_dim=32, context_depth=1, context_heads=2)
    return CPC(**{**settings, **kwargs})


def pixels_of(grid, patch_ids) -> torch.Tensor:
    """[S, S] True on every pixel that belongs to one of the patches ``patch_ids`` (row-major ids)."""
    seen = torch.zeros(grid.image_size, grid.image_size, dtype=torch.bool)
    for pid in patch_ids:
        i, j = divmod(int(pid), grid.size)
        seen[
            grid.stride * i : grid.stride * i + grid.patch_size, grid.stride * j : grid.stride * j + grid.patch_size
        ] = True
    return seen


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_no_leakage_context_has_zero_gradient_on_pixels_only_in_later_rows(direction):
    model = tiny_cpc(directions=[direction]).train()  # training mode, patches augmented below
    grid, g = model.grid, model.grid.size
    images = torch.randn(2, 3, 16, 16, requires_grad=True)
    z = model.encode_patches(images, augment_keys=torch.tensor([11, 12]))  # patches augmented
    c = model.contexts(z, direction)  # [N, G, G, Dc] in the turned grid
    probe = torch.randn_like(c)
    patch_ids = orient(torch.arange(g * g).view(1, g, g), direction)[0]  # original id at each turned position
    for i in range(g - 1):
        (grad,) = torch.autograd.grad((c[:, i] * probe[:, i]).sum(), images, retain_graph=True)
        seen = pixels_of(grid, patch_ids[: i + 1].flatten())  # pixels of patches in rows <= i
        assert grad[:, :, ~seen].eq(0).all(), f"{direction}: context row {i} depends on pixels of later rows"
        assert grad[:, :, seen].abs().amax(dim=(0, 1)).gt(0).float().mean() > 0.9, "it must see its own rows"
    if direction == "top_down":  # the pixels only later rows hold are exactly those below row_end(i)
        assert pixels_of(grid, patch_ids[:3].flatten()).nonzero()[:, 0].max() + 1 == grid.row_end(2)


def test_no_leakage_changing_later_rows_leaves_context_unchanged():
    model = tiny_cpc().eval()
    images = torch.randn(2, 3, 16, 16)
    changed = images.clone()
    row_end = model.grid.row_end(3)  # 3 * 2 + 4 = 10: pixel rows 10.. belong only to patch rows 4..6
    changed[:, :, row_end:] = torch.randn_like(changed[:, :, row_end:]) * 5
    with torch.no_grad():
        before, after = model.contexts(model(images)), model.contexts(model(changed))
    assert torch.equal(before[:, :4], after[:, :4])
    assert not torch.allclose(before[:, 4:], after[:, 4:])


class ShiftOracle(nn.Module):
    """Stands in for the context network: c[i, j] = z[i + 1, j] (cheats on purpose)."""

    def forward(self, z):
        return torch.cat([z[:, 1:], z[:, -1:]], dim=1)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_positive_of_a_prediction_is_the_latent_one_step_further(direction):
    model = tiny_cpc(directions=[direction], prediction_steps=1, normalize=True, temperature=0.01).eval()
    model.context[direction] = ShiftOracle()
    predictor = model.predictors[direction][0]
    predictor.weight.data = torch.eye(32)  # predicts exactly the latent below in the turned grid
    out = model.compute_loss(torch.randn(3, 3, 16, 16))
    assert out["accuracy"].item() == 1.0 and out["accuracy_k1"].item() == 1.0
    predictor.weight.data = torch.roll(torch.eye(32), 1, dims=0)  # a wrong prediction
    assert model.compute_loss(torch.randn(3, 3, 16, 16))["accuracy"].item() < 0.2


def test_negatives_are_every_latent_of_the_batch():
    model = tiny_cpc(prediction_steps=2).eval()
    for predictor in model.predictors["top_down"]:
        nn.init.zeros_(predictor.weight)  # every score is 0: the loss is log(number of candidates)
    out = model.compute_loss(torch.randn(3, 3, 16, 16))
    assert out["loss"].item() == pytest.approx(math.log(3 * 7 * 7), rel=1e-6)
    assert set(out) == {"loss", "accuracy", "accuracy_k1", "accuracy_k2"}


def test_gradients_reach_backbone_context_and_predictors():
    model = tiny_cpc(directions=["top_down", "left_right"])
    model.compute_loss(torch.randn(2, 3, 16, 16))["loss"].backward()
    for name in (
        "backbone.patch_embed.proj.weight",
        "backbone.blocks.0.attn.qkv.weight",
        "backbone.norm.weight",
        "context.top_down.blocks.0.mlp.fc2.weight",
        "context.left_right.embed.weight",
        "predictors.top_down.2.weight",
        "predictors.left_right.0.weight",
    ):
        assert model.get_parameter(name).grad.abs().sum() > 0, name


def test_patch_augmentation_follows_each_images_key_whatever_the_batch():
    model = tiny_cpc(channel_drop_prob=0.5, hflip_prob=0.5).eval()
    images, keys = torch.randn(3, 3, 16, 16), torch.tensor([5, 6, 7])
    with torch.no_grad():
        together = model.encode_patches(images, augment_keys=keys)
        alone = model.encode_patches(images[1:2], augment_keys=keys[1:2])
        other_key = model.encode_patches(images[1:2], augment_keys=torch.tensor([8]))
        plain = model.encode_patches(images[1:2])
    assert torch.allclose(together[1:2], alone, atol=1e-5)
    assert not torch.allclose(alone, other_key) and not torch.allclose(alone, plain)


def test_bf16_autocast_keeps_the_scores_in_float32():
    model = tiny_cpc().eval()
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        exact = model.compute_loss(images)["loss"]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model.compute_loss(images)["loss"]
    assert mixed.dtype == torch.float32 and torch.isfinite(mixed)
    assert abs(mixed.item() - exact.item()) < 0.05 * exact.item()


def test_default_temperature_follows_the_score():
    assert tiny_cpc().temperature == pytest.approx(32**0.5)  # dot products of LayerNorm outputs: sqrt(D)
    assert tiny_cpc(normalize=True).temperature == 0.1  # cosine scores
    assert tiny_cpc(temperature=1.0).temperature == 1.0  # CPC's plain bilinear score


def test_prediction_steps_and_skipping_the_overlapping_row():
    assert tiny_cpc().steps == [1, 2, 3]
    assert tiny_cpc(skip_overlapping_steps=True).steps == [2, 3, 4]  # 4 px patches, stride 2
    assert tiny_cpc(patch_stride=1, image_size=10, skip_overlapping_steps=True, prediction_steps=2).steps == [4, 5]
    with pytest.raises(ConfigError, match=r"model.prediction_steps=6 \(steps \[2, 3, 4, 5, 6, 7\]\)"):
        tiny_cpc(prediction_steps=6, skip_overlapping_steps=True)


def test_input_size_is_the_whole_image_and_the_backbone_sees_patches():
    model = tiny_cpc()
    assert model.input_size == 16 and model.backbone_config.img_size == 4
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 7, 7, 32)
    assert model.grid_features(torch.randn(2, 3, 16, 16)).shape == (2, 32)
    seen = []
    model.backbone.blocks[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    model(torch.randn(2, 3, 16, 16))
    assert seen == [torch.Size([2 * 49, 1 + 4, 32])], "every patch is its own sequence of 2x2 tokens + CLS"


def loss_and_gradients(model: CPC, images: torch.Tensor, keys: torch.Tensor) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = model.compute_loss(images, keys)["loss"]
    loss.backward()
    return loss.item(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    "chunk,checkpointing,drop_path",
    [
        (40, False, 0.0),  # 2 x 49 = 98 patches: chunks of 40, 40 and 18
        (1000, False, 0.0),  # one chunk, checkpointed as a whole
        (30, True, 0.0),
        (
            None,
            True,
            0.2,
        ),  # per-block checkpointing replays the drop-path draws; chunks would draw them in another order
    ],
)
def test_chunked_and_checkpointed_encoding_give_the_same_loss_and_gradients(chunk, checkpointing, drop_path):
    backbone = PATCH_VIT.to_dict() | {"depth": 2, "drop_path_rate": drop_path}
    directions = ["top_down", "left_right"]
    reference = tiny_cpc(backbone=backbone, directions=directions).train()
    model = tiny_cpc(
        backbone=backbone | {"grad_checkpointing": checkpointing}, directions=directions, patches_per_chunk=chunk
    ).train()
    model.load_state_dict(reference.state_dict())
    images, keys = torch.randn(2, 3, 16, 16), torch.tensor([3, 4])
    torch.manual_seed(5)
    expected_loss, expected = loss_and_gradients(reference, images, keys)
    torch.manual_seed(5)
    loss, gradients = loss_and_gradients(model, images, keys)
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    assert gradients.keys() == expected.keys()
    for name, grad in gradients.items():
        torch.testing.assert_close(grad, expected[name], rtol=1e-4, atol=1e-6, msg=name)


def saved_activation_bytes(model: CPC, images: torch.Tensor) -> int:
    """Bytes of the tensors autograd keeps for the backward pass of the patch encoder (outside checkpoints)."""
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model.encode_patches(images, augment_keys=torch.arange(len(images)))
    return total


def test_chunking_and_backbone_checkpointing_really_store_fewer_activations():
    backbone = PATCH_VIT.to_dict() | {"depth": 4}
    plain = tiny_cpc(backbone=backbone).train()
    images = torch.randn(8, 3, 16, 16)  # 392 patch sequences
    stored = saved_activation_bytes(plain, images)
    per_block = saved_activation_bytes(tiny_cpc(backbone=backbone | {"grad_checkpointing": True}).train(), images)
    chunked = saved_activation_bytes(tiny_cpc(backbone=backbone, patches_per_chunk=49).train(), images)
    # per-block checkpointing keeps each block's input; chunking keeps only the patches' pixels and latents
    assert per_block < 0.5 * stored
    assert chunked < 0.5 * per_block
    # what chunking keeps grows with the batch like the context network and the loss, not like the backbone
    assert (
        saved_activation_bytes(tiny_cpc(backbone=backbone | {"depth": 8}, patches_per_chunk=49).train(), images)
        == chunked
    )


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(patch_pooling="max"), "model.patch_pooling must be 'mean' or 'cls'"),
        (dict(context_heads=3), "model.context_dim=32 must be divisible by model.context_heads=3"),
        (dict(directions=["down"]), "model.directions must be distinct names from"),
        (dict(directions=["top_down", "top_down"]), "model.directions must be distinct"),
        (dict(temperature=0.0), "model.temperature must be positive"),
        (dict(channel_drop_prob=1.5), "model.channel_drop_prob must be a probability"),
        (dict(image_size=15), "model.image_size=15 minus the patch side backbone.img_size=4"),
        (dict(patches_per_chunk=0), "model.patches_per_chunk must be a positive number"),
    ],
)
def test_bad_settings_name_the_key(kwargs, message):
    with pytest.raises(ConfigError) as err:
        tiny_cpc(**kwargs)
    assert message in str(err.value)


def smooth_images(count: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    """Random 4x4 colour fields upsampled bicubically: every patch differs, neighbours are related."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(count, 3, 4, 4, generator=g)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)


def test_short_run_raises_contrastive_accuracy_far_above_chance():
    torch.manual_seed(0)
    model = tiny_cpc(normalize=True, temperature=0.1, channel_drop_prob=0.0, hflip_prob=0.0)
    images = smooth_images(4)
    chance = 1 / (4 * 49)  # candidates: every latent of the batch
    model.eval()
    with torch.no_grad():
        before = model.compute_loss(images)["accuracy"].item()
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(30):
        loss = model.compute_loss(images)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        after = model.compute_loss(images)["accuracy"].item()
    assert before < 5 * chance and after > 20 * chance, (chance, before, after)  # after: ~55x chance

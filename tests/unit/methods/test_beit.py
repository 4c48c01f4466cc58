"""BEiT: masked token prediction on the shared backbone, its loss, its tokenizer handling and its recipe."""

import pytest
import torch

from sslvit.errors import ConfigError
from sslvit.methods import BEiT
from sslvit.methods.beit.tokenizer import KMeansTokenizer
from sslvit.methods.beit.tokenizer_fit import CodebookConfig
from sslvit.nn.backbone import ViTConfig
from sslvit.nn.losses import masked_cross_entropy
from sslvit.nn.masking import patchify

V = 8  # codes of the test tokenizers


def pattern_pairs(n: int, patterns: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """[n, 3, 16, 16]: the top half of each image tiled with one of the 4x4 ``patterns`` [K, 3, 4, 4], the bottom half
    with another.

    A masked patch is predictable only from context: the pattern that visible patches of its half show.
    """
    k = len(patterns)
    first = torch.randint(k, (n,), generator=generator)
    second = (first + torch.randint(1, k, (n,), generator=generator)) % k
    rows = torch.arange(4).view(4, 1).expand(4, 4)
    ids = torch.where((rows < 2).unsqueeze(0), first[:, None, None], second[:, None, None])
    images = patterns[ids].permute(0, 3, 1, 4, 2, 5).reshape(n, 3, 16, 16)
    return images + 0.02 * torch.randn(images.shape, generator=generator)


@pytest.fixture
def patterns() -> torch.Tensor:
    return torch.randn(6, 3, 4, 4, generator=torch.Generator().manual_seed(1))


def pattern_tokenizer(patterns: torch.Tensor) -> KMeansTokenizer:
    """A codebook whose first codes are exactly the patterns (k-means may merge or split a few; not wanted here)."""
    spare = torch.randn(V - len(patterns), 3, 4, 4, generator=torch.Generator().manual_seed(2)) * 3
    patches = patchify(torch.cat([patterns, spare]), 4).squeeze(1)  # [V, 48]
    tokenizer = KMeansTokenizer(V, 4, 16)
    settings = tokenizer.settings()
    return KMeansTokenizer.from_codebook(tokenizer.features(patches), patches, settings)


def tiny_beit(tiny_vit, patterns=None, **kwargs) -> BEiT:
    model = BEiT(backbone=tiny_vit, codebook=CodebookConfig(vocab_size=V), **kwargs)
    if patterns is not None:
        model.set_tokenizer(pattern_tokenizer(patterns), "test")
    return model


def test_forward_shapes_and_metrics(tiny_vit, patterns):
    model = tiny_beit(tiny_vit, patterns)
    images = pattern_pairs(3, patterns, torch.Generator().manual_seed(1))
    loss, logits, codes, mask = model(images)
    assert loss.ndim == 0 and codes.shape == (3, 16) and mask.shape == (3, 16) and mask.dtype == torch.bool
    assert logits.shape == (int(mask.sum()), V)
    assert torch.all(mask.sum(1) <= 7) and torch.all(mask.sum(1) >= 5)  # 40% of 16 is 7, blockwise
    out = model.compute_loss(images)
    assert set(out) == {"loss", "masked_acc"} and 0.0 <= out["masked_acc"] <= 1.0


def test_each_mask_follows_its_samples_key(tiny_vit):
    model = tiny_beit(tiny_vit)
    keys = torch.tensor([11, 22, 33, 44])
    masks = model.sample_mask(4, (4, 4), "cpu", keys=keys)
    assert torch.equal(model.sample_mask(2, (4, 4), "cpu", keys=keys[[2, 0]]), masks[[2, 0]])
    assert len({tuple(m.tolist()) for m in masks}) == 4


def test_loss_is_cross_entropy_at_masked_positions_only(tiny_vit, patterns):
    model = tiny_beit(tiny_vit, patterns).eval()
    images = pattern_pairs(4, patterns, torch.Generator().manual_seed(2))
    mask = model.sample_mask(4, (4, 4), images.device, keys=torch.arange(4))
    loss, _, codes, _ = model(images, mask=mask)
    # reference: the head at every position, then the shared masked cross-entropy
    tokens = model.backbone.forward_masked(images, mask, model.mask_token)[:, 1:]
    assert torch.allclose(loss, masked_cross_entropy(model.code_head(tokens), codes, mask), atol=1e-6)

    def perturb(where: torch.Tensor):
        hook = model.backbone.norm.register_forward_hook(
            lambda m, i, out: out + 100.0 * torch.cat([torch.zeros_like(out[:, :1, :1]), where[..., None]], 1)
        )
        try:
            return model(images, mask=mask)[0]
        finally:
            hook.remove()

    assert torch.equal(perturb((~mask).float()), loss)  # outputs at visible patches change nothing
    assert not torch.allclose(perturb(mask.float()), loss)  # outputs at masked patches do


def test_encoder_sees_every_patch_with_masked_ones_replaced(tiny_vit, patterns):
    model = tiny_beit(tiny_vit, patterns).eval()
    seen = []
    model.backbone.blocks[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    images = pattern_pairs(2, patterns, torch.Generator().manual_seed(3))
    mask = model.sample_mask(2, (4, 4), images.device, keys=torch.arange(2))
    _, logits, _, _ = model(images, mask=mask)
    assert seen == [torch.Size([2, 1 + 16, 64])]
    # what is under the mask cannot leak: new pixels there give the same predictions
    covered = mask.view(2, 1, 4, 1, 4, 1).expand(2, 3, 4, 4, 4, 4).reshape(2, 3, 16, 16)
    _, changed, _, _ = model(torch.where(covered, torch.randn_like(images), images), mask=mask)
    assert torch.allclose(logits, changed, atol=1e-5)


def test_short_run_predicts_masked_tokens_far_above_chance(tiny_vit, patterns):
    torch.manual_seed(0)
    model = tiny_beit(tiny_vit, patterns)
    data, held_out = torch.Generator().manual_seed(10), pattern_pairs(64, patterns, torch.Generator().manual_seed(11))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    for _ in range(120):
        loss = model.compute_loss(pattern_pairs(32, patterns, data))["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = model.compute_loss(held_out, keys=torch.arange(64))["masked_acc"]
        codes = model.tokenizer(held_out)
    majority = torch.bincount(codes.flatten(), minlength=V).max() / codes.numel()
    assert majority < 0.25  # six patterns: no code dominates, chance is 1/8
    assert accuracy > 0.8, accuracy  # ~0.95 after 100 steps, 1.0 after 150


def test_gradients_reach_encoder_head_and_mask_token_not_the_tokenizer(tiny_vit, patterns):
    model = tiny_beit(tiny_vit, patterns)
    model.compute_loss(pattern_pairs(2, patterns, torch.Generator().manual_seed(4)))["loss"].backward()
    for name in (
        "backbone.patch_embed.proj.weight",
        "backbone.blocks.1.mlp.fc2.weight",
        "mask_token",
        "code_head.weight",
    ):
        assert model.get_parameter(name).grad is not None and model.get_parameter(name).grad.abs().sum() > 0, name
    assert not any(name.startswith("tokenizer.") for name, _ in model.named_parameters())
    groups = model.param_groups(0.05)
    assert any(p is model.mask_token for p in groups[1]["params"])  # no weight decay on the mask token


def test_recipe_defaults_are_the_papers():
    model = BEiT(backbone=ViTConfig(arch="vit_tiny", img_size=32, patch_size=4, depth=1))
    h = model.hparams
    assert h.base_lr * 2048 / 256 == pytest.approx(1.5e-3)
    assert (h.weight_decay, tuple(h.betas), h.warmup_epochs, h.clip_grad, h.mask_ratio) == (
        0.05,
        (0.9, 0.999),
        10.0,
        3.0,
        0.4,
    )
    assert h.codebook["vocab_size"] == 1024 and model.code_head.out_features == 1024
    default = BEiT.__init__.__defaults__  # backbone None: ViT-B/16 with drop-path 0.1 and layer scale 0.1
    assert default[0] is None
    base = BEiT(backbone=None, codebook=CodebookConfig(vocab_size=16))
    assert base.backbone_config.drop_path_rate == 0.1 and base.backbone_config.layer_scale_init == 0.1
    assert base.backbone_config.patch_size == 16 and base.backbone.blocks[0].ls1.gamma[0].item() == pytest.approx(0.1)


def test_mismatched_tokenizer_is_a_clear_error(tiny_vit):
    model = tiny_beit(tiny_vit)
    with pytest.raises(ConfigError, match="codes 8px patches.*model.backbone has patch_size=4"):
        model.set_tokenizer(KMeansTokenizer(V, patch_size=8, image_size=16), "tok8")
    with pytest.raises(ConfigError, match="8x8 grid.*4x4 grid"):
        model.set_tokenizer(KMeansTokenizer(V, patch_size=4, image_size=32), "tok32")
    with pytest.raises(ConfigError, match="has 16 codes but model.codebook.vocab_size=8"):
        model.set_tokenizer(KMeansTokenizer(16, patch_size=4, image_size=16), "tok16")


def test_a_model_without_codebook_says_how_to_get_one(tiny_vit):
    with pytest.raises(ConfigError, match="no codebook yet: set model.tokenizer"):
        tiny_beit(tiny_vit)(torch.randn(1, 3, 16, 16))


def test_tokenizer_directory_is_loaded_on_first_use(tiny_vit, patterns, tmp_path):
    pattern_tokenizer(patterns).save(tmp_path / "tok")
    model = BEiT(backbone=tiny_vit, tokenizer=str(tmp_path / "tok"), codebook=CodebookConfig(vocab_size=V))
    images = pattern_pairs(2, patterns, torch.Generator().manual_seed(5))
    assert torch.equal(model(images)[2], pattern_tokenizer(patterns)(images))
    assert model.tokenizer_info["source"] == str(tmp_path / "tok")


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"mask_ratio": 1.5}, "model.mask_ratio must be in the open interval"),
        ({"min_block": 0}, "model.min_block"),
        ({"min_block": 6, "max_block": 3}, "model.max_block=3"),
        ({"min_aspect": 2.0}, "model.min_aspect"),
    ],
)
def test_bad_settings(tiny_vit, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        tiny_beit(tiny_vit, **kwargs)

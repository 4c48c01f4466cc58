"""FineTune: layer-wise lr decay, weight decay, loading any method's checkpoint, partial fine-tuning, mixup."""

from __future__ import annotations

import pytest
import torch

from sslvit.errors import CheckpointError, ConfigError
from sslvit.eval import FineTune
from sslvit.methods import CPC, MAE, BEiT
from sslvit.methods.beit import CodebookConfig
from sslvit.nn.backbone import ViTConfig
from sslvit.nn.pos_embed import sincos_pos_embed_2d
from sslvit.optim import vit_layer_id

TINY = dict(arch="vit_tiny", img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2)


def save(model, path, data=None):
    """A checkpoint as Lightning writes it: state dict, hyper-parameters with the class path, data settings."""
    hparams = {**dict(model.hparams), "_class_path": f"sslvit.methods.{type(model).__name__}"}
    record = {"state_dict": model.state_dict(), "hyper_parameters": hparams, "global_step": 5}
    torch.save({**record, "datamodule_hyper_parameters": data or {"image_size": 16}}, path)
    return path


@pytest.fixture(scope="module")
def mae_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    mae = MAE(backbone=TINY, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)
    return mae, save(mae, tmp_path_factory.mktemp("mae") / "mae.ckpt")


def backbone_params(model):
    return {k.removeprefix("backbone."): v for k, v in model.state_dict().items() if k.startswith("backbone.")}


# ---- the optimizer groups ----
# Every parameter of the 2-block model with mean pooling: (layer id, trains, weight decay).
# Layer 0: patch embedding, CLS, positions; block i: i + 1; norms and head: depth + 1 = 3.
TABLE = {
    "backbone.cls_token": (0, True, False),
    "backbone.pos_embed": (0, True, False),
    "backbone.patch_embed.proj.weight": (0, True, True),
    "backbone.patch_embed.proj.bias": (0, True, False),
    **{
        f"backbone.blocks.{i}.{name}": (i + 1, True, name.endswith("weight") and "norm" not in name)
        for i in range(2)
        for name in [
            "norm1.weight",
            "norm1.bias",
            "attn.qkv.weight",
            "attn.qkv.bias",
            "attn.proj.weight",
            "attn.proj.bias",
            "norm2.weight",
            "norm2.bias",
            "mlp.fc1.weight",
            "mlp.fc1.bias",
            "mlp.fc2.weight",
            "mlp.fc2.bias",
        ]
    },
    "backbone.norm.weight": (3, False, False),  # unused with mean pooling: frozen
    "backbone.norm.bias": (3, False, False),
    "fc_norm.weight": (3, True, False),
    "fc_norm.bias": (3, True, False),
    "head.weight": (3, True, True),
    "head.bias": (3, True, False),
}


def test_layer_ids_lr_scales_and_weight_decay_follow_the_table():
    model = FineTune(backbone=TINY, num_classes=5, layer_decay=0.5, weight_decay=0.05)
    assert sorted(name for name, _ in model.named_parameters()) == sorted(TABLE)
    for name, (layer, _, _) in TABLE.items():
        assert vit_layer_id(name, depth=2) == layer, name
    names = {id(p): n for n, p in model.named_parameters()}
    seen = set()
    for group in model.param_groups(0.05):
        for param in group["params"]:
            name = names[id(param)]
            layer, trains, decays = TABLE[name]
            assert trains, f"{name} is frozen and must not be optimized"
            assert group["lr_scale"] == 0.5 ** (3 - layer), name
            assert group["weight_decay"] == (0.05 if decays else 0.0), name
            seen.add(name)
    assert seen == {n for n, (_, trains, _) in TABLE.items() if trains}
    no_decay = {n for n, (_, t, d) in TABLE.items() if t and not d}
    assert no_decay == {n for n in seen if n.endswith("bias") or "norm" in n or n.endswith(("cls_token", "pos_embed"))}


def test_the_optimizer_trains_each_group_at_its_scaled_rate():
    model = FineTune(backbone=TINY, num_classes=5, layer_decay=0.5)
    optimizer = model.build_optimizer(lr=1e-3)
    rates = {round(g["lr"], 12) for g in optimizer.param_groups}
    assert rates == {1e-3, 5e-4, 2.5e-4, 1.25e-4}  # head, block 1, block 0, patch embedding


def test_recipe_defaults_are_maes():
    model = FineTune(backbone=TINY, num_classes=5)
    h = model.hparams
    assert (h.base_lr, h.weight_decay, tuple(h.betas), h.warmup_epochs, h.min_lr) == (1e-3, 0.05, (0.9, 0.999), 5, 1e-6)
    assert (h.layer_decay, h.mixup, h.cutmix, h.label_smoothing, h.pooling) == (0.75, 0.8, 1.0, 0.1, "mean")
    assert model.backbone.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1), "drop path 0.1, rising to the last"
    assert model.head.weight.abs().max() <= 4e-5 and model.head.weight.std() < 3e-5 and not model.head.bias.any()


# ---- partial fine-tuning ----
@pytest.mark.parametrize("pooling", ["mean", "cls"])
@pytest.mark.parametrize("blocks", [0, 1, 2, None])
def test_trainable_blocks_freeze_exactly_the_rest(blocks, pooling):
    model = FineTune(backbone=TINY, num_classes=3, trainable_blocks=blocks, pooling=pooling, mixup=0, cutmix=0)
    model.train()
    loss = model.batch_loss(
        {"images": torch.randn(4, 3, 16, 16), "labels": torch.tensor([0, 1, 2, 0]), "keys": torch.arange(4)}
    )["loss"]
    loss.backward()
    first_trained = 2 - blocks if blocks is not None else 0
    for name, param in model.named_parameters():
        stem = name.startswith(("backbone.patch_embed", "backbone.cls_token", "backbone.pos_embed"))
        block = int(name.split(".")[2]) if name.startswith("backbone.blocks.") else None
        expected = not (
            (blocks is not None and (stem or (block is not None and block < first_trained)))
            or (pooling == "mean" and name.startswith("backbone.norm."))
        )
        assert param.requires_grad == expected, name
        assert (param.grad is not None) == expected, f"{name}: gradient {'missing' if expected else 'present'}"


def test_trainable_blocks_beyond_the_depth_is_a_config_error():
    with pytest.raises(ConfigError, match=r"model.trainable_blocks must be in \[0, 2\]"):
        FineTune(backbone=TINY, num_classes=3, trainable_blocks=3)


# ---- loading weights ----
def test_mae_checkpoint_gives_the_encoder_bit_for_bit_and_no_decoder(mae_ckpt):
    mae, path = mae_ckpt
    model = FineTune(weights=str(path), num_classes=4)
    assert model.backbone_config.img_size == 16 and model.backbone_config.drop_path_rate == 0.1
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    model.setup("fit")
    expected = backbone_params(mae)
    loaded = model.backbone.state_dict()
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)
    assert not all(torch.equal(before[k], expected[k]) for k in expected), "the weights changed on loading"
    assert not any("decoder" in k or "mask_token" in k for k in model.state_dict())
    assert isinstance(model.backbone.pos_embed, torch.nn.Parameter), "positions are fine-tuned"


def test_a_beit_and_a_cpc_checkpoint_load(tmp_path):
    torch.manual_seed(0)
    beit = BEiT(backbone={**TINY, "layer_scale_init": 0.1}, codebook=CodebookConfig(vocab_size=8))
    model = FineTune(weights=str(save(beit, tmp_path / "beit.ckpt")), num_classes=3)
    model.setup("fit")
    assert all(torch.equal(model.backbone.state_dict()[k], v) for k, v in backbone_params(beit).items())
    assert model.backbone_config.layer_scale_init == 0.1

    # CPC encodes 4 px patches; fine-tuning runs on whole 16 px images: positions for the 4x4 grid
    cpc = CPC(
        backbone={**TINY, "img_size": 4, "patch_size": 2},
        image_size=16,
        context_dim=32,
        context_depth=1,
        context_heads=2,
    )
    model = FineTune(weights=str(save(cpc, tmp_path / "cpc.ckpt")), num_classes=3)
    model.setup("fit")
    assert model.backbone_config.img_size == 16 and model.backbone.pos_embed.shape == (1, 1 + 64, 32)
    assert torch.equal(model.backbone.pos_embed.detach(), sincos_pos_embed_2d(32, 8, cls_token=True)[None])
    for key, value in backbone_params(cpc).items():
        if key != "pos_embed":
            assert torch.equal(model.backbone.state_dict()[key], value), key
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 3)


def test_learned_positions_are_interpolated_for_another_grid(mae_ckpt, tmp_path):
    mae, _ = mae_ckpt
    state = {k: v.clone() for k, v in mae.state_dict().items()}
    state["backbone.pos_embed"] = torch.randn(1, 17, 32)  # learned, for a 4x4 grid
    ckpt = torch.load(save(mae, tmp_path / "m.ckpt"), weights_only=True)
    torch.save({**ckpt, "state_dict": state}, tmp_path / "learned.ckpt")
    model = FineTune(weights=str(tmp_path / "learned.ckpt"), backbone={**TINY, "img_size": 32}, num_classes=3)
    model.setup("fit")
    pos = model.backbone.pos_embed.detach()
    assert pos.shape == (1, 65, 32) and torch.equal(pos[:, 0], state["backbone.pos_embed"][:, 0])
    assert not torch.equal(pos, sincos_pos_embed_2d(32, 8, cls_token=True)[None])


def test_unknown_files_and_missing_settings_are_clear_errors(tmp_path):
    plain = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(3)}, plain)
    with pytest.raises(CheckpointError, match="matches none of the formats sslvit reads.*keys start with"):
        FineTune(weights=str(plain), num_classes=3)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FineTune(weights=str(tmp_path / "missing.ckpt"), num_classes=3)
    with pytest.raises(ConfigError, match="needs model.weights .* or model.backbone"):
        FineTune(num_classes=3)


def test_a_checkpoint_of_another_architecture_lists_the_mismatch(mae_ckpt):
    _, path = mae_ckpt
    model = FineTune(weights=str(path), backbone={**TINY, "depth": 3}, num_classes=3)
    with pytest.raises(CheckpointError, match="missing keys .*blocks.2"):
        model.setup("fit")


# ---- mixup, cutmix, smoothing ----
def mixed_targets(model, keys):
    """The targets the loss receives for 8 images of labels 0, 1, 2, 3, 0, ... with these sample keys."""
    captured = []
    hook = model.train_loss.register_forward_hook(lambda module, inputs, output: captured.append(inputs[1]))
    model.batch_loss({"images": torch.randn(8, 3, 16, 16), "labels": torch.arange(8) % 4, "keys": keys})
    hook.remove()
    return captured[0]


def test_mixup_targets_are_soft_sum_to_one_and_follow_the_keys():
    model = FineTune(backbone=TINY, num_classes=4, label_smoothing=0.1).train()
    keys = torch.arange(100, 108)
    targets = mixed_targets(model, keys)
    assert targets.shape == (8, 4) and torch.allclose(targets.sum(1), torch.ones(8))
    assert targets.min() >= 0.1 / 4 - 1e-6, "label smoothing: every class keeps at least smoothing / K"
    assert (targets.max(1).values < 1 - 0.1 + 0.1 / 4 + 1e-6).all()
    assert torch.equal(mixed_targets(model, keys), targets), "the same batch keys draw the same mixing"
    assert not torch.equal(mixed_targets(model, keys + 50), targets)


def test_without_mixup_the_loss_is_label_smoothed_cross_entropy():
    settings = dict(mixup=0, cutmix=0, label_smoothing=0.2, drop_path_rate=0.0)
    model = FineTune(backbone=TINY, num_classes=4, head_init_std=1.0, **settings).train()
    images, labels = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    loss = model.batch_loss({"images": images.clone(), "labels": labels, "keys": torch.arange(4)})["loss"]
    expected = torch.nn.functional.cross_entropy(model(images), labels, label_smoothing=0.2)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)
    assert expected.item() != pytest.approx(torch.nn.functional.cross_entropy(model(images), labels).item())


def test_validation_uses_plain_labels_and_counts_top1_top5_exactly():
    model = FineTune(backbone=TINY, num_classes=6).eval()
    images, labels = torch.randn(10, 3, 16, 16), torch.arange(10) % 6
    with torch.no_grad():
        model.validation_step({"images": images.clone(), "labels": labels, "keys": torch.arange(10)}, 0)
        logits = model(images)
    correct1 = (logits.argmax(1) == labels).sum()
    correct5 = (logits.topk(5, 1).indices == labels[:, None]).any(1).sum()
    loss = torch.nn.functional.cross_entropy(logits, labels, reduction="sum")
    assert torch.allclose(model._val_sums, torch.stack([correct1.float(), correct5.float(), torch.tensor(10.0), loss]))


def test_bad_settings_name_the_key():
    with pytest.raises(ConfigError, match="model.layer_decay"):
        FineTune(backbone=TINY, layer_decay=0)
    with pytest.raises(ConfigError, match="model.pooling"):
        FineTune(backbone=TINY, pooling="max")
    with pytest.raises(ConfigError, match="model.num_classes"):
        FineTune(backbone=TINY, num_classes=1)
    model = FineTune(backbone=TINY, num_classes=3).train()
    with pytest.raises(ConfigError, match="even data.batch_size"):
        model.batch_loss({"images": torch.randn(3, 3, 16, 16), "labels": torch.arange(3), "keys": torch.arange(3)})


def test_backbone_config_is_stored_resolved_so_the_checkpoint_rebuilds_without_the_weights_file(mae_ckpt):
    _, path = mae_ckpt
    model = FineTune(weights=str(path), num_classes=4)
    assert ViTConfig.from_dict(model.hparams["backbone"]) == ViTConfig(**{**TINY, "drop_path_rate": 0.1})
    rebuilt = FineTune(**{**dict(model.hparams), "weights": "/nonexistent.ckpt"})  # backbone given: no read
    assert rebuilt.backbone_config == model.backbone_config

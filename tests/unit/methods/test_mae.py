import pytest
import torch

from sslvit.checkpoints import load_official_mae
from sslvit.errors import CheckpointError, ConfigError
from sslvit.methods.mae import MAE
from sslvit.nn.losses import normalize_patches
from sslvit.nn.masking import patchify


def tiny_mae(tiny_vit, **kwargs) -> MAE:
    return MAE(backbone=tiny_vit, decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2, **kwargs)


def test_forward_returns_loss_pred_mask(tiny_vit):
    model = tiny_mae(tiny_vit)
    loss, pred, mask = model(torch.randn(3, 3, 16, 16))
    assert loss.ndim == 0 and pred.shape == (3, 16, 4 * 4 * 3) and mask.shape == (3, 16)
    assert torch.all(mask.sum(1) == 12)


def test_noise_fixes_the_mask(tiny_vit):
    model = tiny_mae(tiny_vit).eval()
    images, noise = torch.randn(2, 3, 16, 16), torch.rand(2, 16)
    a, b = model(images, noise=noise), model(images, noise=noise)
    assert torch.equal(a[2], b[2]) and torch.equal(a[0], b[0])


def test_loss_ignores_predictions_at_visible_positions(tiny_vit):
    model = tiny_mae(tiny_vit)
    images = torch.randn(2, 3, 16, 16)
    loss, pred, mask = model(images)
    changed = pred.detach().clone()
    changed[mask == 0] = 1e3
    assert torch.allclose(model.forward_loss(images, changed, mask), loss)
    changed[mask == 1] += 1.0
    assert not torch.allclose(model.forward_loss(images, changed, mask), loss)


def test_loss_is_mse_against_norm_pix_targets(tiny_vit):
    images = torch.rand(2, 3, 16, 16) * 3 + 2  # patches far from zero mean / unit variance
    mask = torch.zeros(2, 16)
    mask[:, :5] = 1
    target = normalize_patches(patchify(images, 4))
    model = tiny_mae(tiny_vit, norm_pix_loss=True)
    # predicting the normalized targets exactly gives zero loss; the raw pixels do not
    assert model.forward_loss(images, target, mask).item() < 1e-10
    assert model.forward_loss(images, patchify(images, 4), mask).item() > 0.1
    raw = tiny_mae(tiny_vit, norm_pix_loss=False)
    assert raw.forward_loss(images, patchify(images, 4), mask).item() < 1e-10


def test_encoder_only_sees_visible_tokens(tiny_vit):
    model = tiny_mae(tiny_vit)
    seen = []
    model.backbone.blocks[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    model(torch.randn(2, 3, 16, 16))
    assert seen == [torch.Size([2, 1 + 4, 64])]


def test_tiny_model_overfits_one_batch(tiny_vit):
    torch.manual_seed(0)
    model = tiny_mae(tiny_vit)
    images, noise = torch.randn(4, 3, 16, 16), torch.rand(4, 16)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    for _ in range(300):
        loss, _, _ = model(images, noise=noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 8, (losses[0], losses[-1])


def test_gradients_reach_encoder_and_decoder(tiny_vit):
    model = tiny_mae(tiny_vit)
    model(torch.randn(2, 3, 16, 16))[0].backward()
    for name in (
        "backbone.patch_embed.proj.weight",
        "backbone.blocks.1.mlp.fc2.weight",
        "mask_token",
        "decoder_pred.weight",
    ):
        assert model.get_parameter(name).grad.abs().sum() > 0, name


@pytest.mark.parametrize("ratio", [0.0, 1.0, 1.2])
def test_bad_mask_ratio(tiny_vit, ratio):
    with pytest.raises(ValueError, match="mask_ratio"):
        tiny_mae(tiny_vit, mask_ratio=ratio)


def test_bad_decoder_heads(tiny_vit):
    with pytest.raises(ValueError, match="decoder_num_heads"):
        MAE(backbone=tiny_vit, decoder_embed_dim=32, decoder_num_heads=3)


def official_state(model: MAE, decoder: bool = True) -> dict:
    """The state dict in the key layout of facebookresearch/mae's models_mae.py."""
    state = {k.removeprefix("backbone."): v.clone() for k, v in model.state_dict().items()}
    if not decoder:
        state = {k: v for k, v in state.items() if not k.startswith(("decoder", "mask_token"))}
    return state


@pytest.mark.parametrize("decoder", [True, False])
def test_official_checkpoint_loads(tiny_vit, tmp_path, decoder):
    source = tiny_mae(tiny_vit)
    path = tmp_path / "mae.pth"
    torch.save({"model": official_state(source, decoder), "epoch": 3}, path)
    target = tiny_mae(tiny_vit)
    load_official_mae(target, path)
    for key, value in source.state_dict().items():
        if decoder or key.startswith("backbone."):
            assert torch.equal(target.state_dict()[key], value), key
    if not decoder:
        assert not torch.equal(target.decoder_pred.weight, source.decoder_pred.weight)


def test_official_checkpoint_mismatch_lists_keys(tiny_vit, tmp_path):
    state = official_state(tiny_mae(tiny_vit))
    state["head.weight"] = torch.zeros(10, 64)
    del state["blocks.1.norm1.weight"]
    state["decoder_pred.weight"] = torch.zeros(7, 32)
    torch.save({"model": state}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as err:
        load_official_mae(tiny_mae(tiny_vit), tmp_path / "bad.pth")
    text = str(err.value)
    assert "backbone.head.weight" in text and "backbone.blocks.1.norm1.weight" in text
    assert "decoder_pred.weight: checkpoint (7, 32) vs model (48, 32)" in text


def test_unknown_compile_mode_is_a_clear_config_error(tiny_vit):
    with pytest.raises(ConfigError, match="model.compile must be false, true, 'model' or 'blocks', got 'fast'"):
        MAE(backbone=tiny_vit, compile="fast")


@pytest.mark.parametrize("precision", ["32", "bf16-mixed"])
def test_gradients_are_clipped_with_the_fused_optimizer_in_every_precision(tiny_vit, precision, monkeypatch):
    """Regression: under bf16-mixed, Lightning's clipping refused the fused AdamW ("does not allow for gradient
    clipping"), so BEiT and CPC (which clip) could not train in bf16 at all."""
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    norms = []
    clip = torch.nn.utils.clip_grad_norm_

    def recording(parameters, max_norm, *args, **kwargs):
        parameters = [p for p in parameters if p.grad is not None]
        total = clip(parameters, max_norm, *args, **kwargs)
        norms.append((float(total), float(torch.stack([p.grad.norm() for p in parameters]).norm()), max_norm))
        return total

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording)
    model = tiny_mae(tiny_vit, clip_grad=1e-3, warmup_steps=1)
    trainer = L.Trainer(
        accelerator="cpu",
        precision=precision,
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, DataLoader(TensorDataset(torch.randn(8, 3, 16, 16)), batch_size=4))
    assert len(norms) == 2, "clipped at every step"
    for before, after, max_norm in norms:
        assert max_norm == 1e-3 and before > 1e-3 and after == pytest.approx(1e-3, rel=1e-3)

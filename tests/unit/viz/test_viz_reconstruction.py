"""MAE reconstruction figures: un-normalization, the four columns, reproducible masks, loading, pixel size."""

import lightning as L
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from sslvit.errors import ConfigError
from sslvit.methods.base import SSLMethod
from sslvit.methods.mae import MAE
from sslvit.nn.losses import normalize_patches
from sslvit.nn.masking import patchify, unpatchify
from sslvit.viz.figure import GAP_PX, GREY, NOTE_LINE_PX, TITLE_PX, save_png, to_pixels
from sslvit.viz.reconstruction import (
    ReconstructionLogger,
    load_mae,
    reconstruct,
    reconstruction_figure,
    unnormalize_patches,
)

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def tiny_mae(tiny_vit, **kwargs) -> MAE:
    return MAE(backbone=tiny_vit, decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2, **kwargs).eval()


def test_patch_statistics_invert_norm_pix_normalization():
    patches = torch.rand(2, 16, 48, dtype=torch.float64) * 5 + torch.arange(16.0).view(1, 16, 1)  # own mean/scale
    patches[:, :4] = 0.3 + 1e-3 * torch.rand(2, 4, 48)  # nearly flat patches: the eps must be the same one
    restored = unnormalize_patches(normalize_patches(patches), patches, stats="patch")
    assert torch.allclose(restored, patches, rtol=0, atol=1e-9)


def test_visible_statistics_use_only_visible_patches():
    patches = torch.rand(1, 4, 12) * torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 4, 1) + 10
    mask = torch.tensor([[0.0, 1.0, 0.0, 1.0]])  # patches 1 and 3 hidden
    normalized = normalize_patches(patches)
    restored = unnormalize_patches(normalized, patches, mask, stats="visible")
    # visible patches are exact; hidden ones get the mean/variance averaged over patches 0 and 2
    assert torch.allclose(restored[:, [0, 2]], patches[:, [0, 2]], atol=1e-5)
    mean = patches[0, [0, 2]].mean(dim=-1).mean()
    var = (patches[0, [0, 2]].var(dim=-1) + 1e-6).mean()
    assert torch.allclose(restored[0, 1], normalized[0, 1] * var.sqrt() + mean, atol=1e-5)
    # changing a hidden patch's pixels changes nothing: its statistics are never read
    changed = patches.clone()
    changed[0, 3] = changed[0, 3] * 7 - 3
    assert torch.equal(unnormalize_patches(normalized, changed, mask, stats="visible"), restored)
    # when every patch has the same statistics, the honest estimate is exact
    same = normalize_patches(torch.randn(1, 4, 12)) * 2 + 5
    assert torch.allclose(unnormalize_patches(normalize_patches(same), same, mask, "visible"), same, atol=1e-4)
    with pytest.raises(ConfigError, match="stats must be one of"):
        unnormalize_patches(normalized, patches, mask, stats="true")


@pytest.mark.parametrize("norm_pix_loss", [True, False])
@pytest.mark.parametrize("stats", ["patch", "visible"])
def test_columns_and_pasted_visible_patches(tiny_vit, norm_pix_loss, stats):
    model = tiny_mae(tiny_vit, norm_pix_loss=norm_pix_loss)
    images = torch.randn(3, 3, 16, 16)
    result = reconstruct(model, images, MEAN, STD, seed=3, stats=stats)
    original = to_pixels(images, MEAN, STD)
    assert torch.equal(result.original, original)
    hidden = unpatchify(result.mask.unsqueeze(-1).expand(-1, -1, 48), 4).bool()  # [N, 3, H, W]
    assert result.mask.shape == (3, 16) and torch.all(result.mask.sum(1) == 12)
    # pasted column: exactly the original at visible patches, exactly the reconstruction at hidden ones
    assert torch.equal(result.pasted[~hidden], original[~hidden])
    assert torch.equal(result.pasted[hidden], result.reconstruction[hidden])
    assert torch.equal(result.masked[~hidden], original[~hidden]) and torch.all(result.masked[hidden] == GREY)
    for column in result.columns():
        assert column.shape == (3, 3, 16, 16) and column.min() >= 0 and column.max() <= 1
    assert result.stats == (stats if norm_pix_loss else None)


def test_reconstruction_matches_the_model_prediction(tiny_vit):
    model = tiny_mae(tiny_vit, norm_pix_loss=True)
    images = torch.randn(2, 3, 16, 16)
    result = reconstruct(model, images, MEAN, STD, seed=0)
    noise = torch.rand(2, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        loss, pred, mask = model(images, noise=noise)
    patches = patchify(images, 4)
    mean, var = patches.mean(-1, keepdim=True), patches.var(-1, keepdim=True)
    expected = to_pixels(unpatchify(pred * (var + 1e-6).sqrt() + mean, 4), MEAN, STD)
    assert torch.equal(result.mask, mask) and result.loss == pytest.approx(loss.item())
    assert torch.allclose(result.reconstruction, expected, atol=1e-6)


def test_seed_fixes_masks_and_ratio_override_is_temporary(tiny_vit):
    model = tiny_mae(tiny_vit).train()
    images = torch.randn(4, 3, 16, 16)
    a, b = reconstruct(model, images, seed=1), reconstruct(model, images, seed=1)
    assert torch.equal(a.mask, b.mask) and torch.equal(a.reconstruction, b.reconstruction)
    assert not torch.equal(reconstruct(model, images, seed=2).mask, a.mask)
    assert torch.equal(reconstruct(model, images[:2], seed=1).mask, a.mask[:2]), "a mask must not depend on N"
    half = reconstruct(model, images, seed=1, mask_ratio=0.5)
    assert torch.all(half.mask.sum(1) == 8) and half.mask_ratio == 0.5
    assert model.mask_ratio == 0.75 and model.training, "the model's ratio and mode are restored"
    with pytest.raises(ConfigError, match="open interval"):
        reconstruct(model, images, mask_ratio=1.0)
    with pytest.raises(ConfigError, match="use --image-size 16"):
        reconstruct(model, torch.randn(1, 3, 32, 32))


def test_figure_has_the_expected_pixel_size(tiny_vit, tmp_path):
    result = reconstruct(tiny_mae(tiny_vit), torch.randn(3, 3, 16, 16), MEAN, STD)
    path = save_png(reconstruction_figure(result, panel_px=80), tmp_path / "sub" / "recon.png")
    width, height = Image.open(path).size
    assert width == 4 * (80 + GAP_PX) + GAP_PX
    grid_height = TITLE_PX + 3 * (80 + GAP_PX)
    note = height - grid_height  # the wrapped note under the grid: two or more whole lines
    assert note >= 2 * NOTE_LINE_PX and note % NOTE_LINE_PX == 0, height


def test_load_mae_rebuilds_encoder_and_decoder(tiny_vit, tmp_path):
    model = tiny_mae(tiny_vit, mask_ratio=0.6)
    hparams = {"_class_path": "sslvit.methods.MAE", **model.hparams}
    data = {"mean": list(MEAN), "std": list(STD), "image_size": 16}
    torch.save(
        {"state_dict": model.state_dict(), "hyper_parameters": hparams, "datamodule_hyper_parameters": data},
        tmp_path / "mae.ckpt",
    )
    loaded, info = load_mae(tmp_path / "mae.ckpt")
    assert not loaded.training and loaded.mask_ratio == 0.6
    assert info.mean == MEAN and info.std == STD and info.image_size == 16
    images, noise = torch.randn(2, 3, 16, 16), torch.rand(2, 16)
    with torch.no_grad():
        assert torch.equal(loaded(images, noise=noise)[1], model(images, noise=noise)[1])
    encoder_only = {k: v for k, v in model.state_dict().items() if k.startswith("backbone.")}
    hparams = {"_class_path": "sslvit.methods.BEiT", "backbone": tiny_vit.to_dict()}
    torch.save({"state_dict": encoder_only, "hyper_parameters": hparams}, tmp_path / "beit.ckpt")
    with pytest.raises(ConfigError, match="holds sslvit.methods.BEiT weights, but MAE is needed"):
        load_mae(tmp_path / "beit.ckpt")


def test_callback_with_plain_dataloaders_and_its_errors(tiny_vit, tmp_path):
    """Without an sslvit data module the grid shows the first validation images (ImageNet mean/std)."""
    data = TensorDataset(torch.randn(8, 3, 16, 16), torch.zeros(8, dtype=torch.long))
    trainer = L.Trainer(
        max_epochs=2,
        limit_train_batches=1,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[ReconstructionLogger(every_n_epochs=2, num_images=2, panel_px=32, folder="grids")],
    )
    # lr set: base_lr scaling needs the batch size, which SSLMethod only finds through a data module
    model = MAE(backbone=tiny_vit, decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2, lr=1e-3, warmup_steps=1)
    trainer.fit(model, DataLoader(data, batch_size=4), DataLoader(data, batch_size=4))
    assert [p.name for p in (tmp_path / "grids").iterdir()] == ["epoch001-step0000002.png"]
    assert Image.open(tmp_path / "grids" / "epoch001-step0000002.png").size[0] == 4 * (32 + GAP_PX) + GAP_PX
    with pytest.raises(ConfigError, match="needs an MAE model, got SSLMethod"):
        ReconstructionLogger().setup(trainer, SSLMethod(backbone=tiny_vit), "fit")
    with pytest.raises(ConfigError, match="every_n_epochs"):
        ReconstructionLogger(every_n_epochs=0)

"""RankMe: the measure against spectra whose value is known, and the online callback on unlabelled images."""

import csv
import math

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from PIL import Image

from conftest import TINY_CONFIGS
from sslvit.cli import run_cli
from sslvit.data import SSLDataModule
from sslvit.errors import ConfigError
from sslvit.eval import OnlineRankMe, effective_rank
from sslvit.eval.rankme import EPSILON, image_subset
from sslvit.methods.mae import MAE
from sslvit.nn.backbone import VisionTransformer

# What the paper's epsilon can add to ln(RankMe): each of the m normalised singular values gains epsilon, and
# -p log p grows by at most epsilon * ln(1 / epsilon) for each: a relative tolerance of m * epsilon * ln(1 / epsilon).
EPSILON_LOG = EPSILON * math.log(1 / EPSILON)


def with_spectrum(singular_values: list[float], n: int, d: int, seed: int = 0) -> torch.Tensor:
    """An [n, d] matrix U diag(s) V^T with random orthonormal U, V: its singular values are exactly ``s``."""
    g = torch.Generator().manual_seed(seed)
    k = len(singular_values)
    u = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=torch.float64))[0]
    return u @ torch.diag(torch.tensor(singular_values, dtype=torch.float64)) @ v.T


def test_a_collapsed_encoder_has_rank_one():
    # float64: float32 rounding alone leaves singular values of ~1e-7 of the first (RankMe 1 + 3e-6)
    same = torch.randn(1, 48, dtype=torch.float64).expand(200, 48)  # every image the same feature
    scaled = torch.rand(200, 1, dtype=torch.float64) * torch.randn(1, 48, dtype=torch.float64)  # all on one line
    m = 48
    for features in (same, scaled):
        assert 1.0 <= effective_rank(features) <= 1 + 1.1 * m * EPSILON_LOG
        assert effective_rank(features, epsilon=0) == pytest.approx(1.0, abs=1e-9)
    assert effective_rank(torch.zeros(10, 8)) == 1.0, "the limit of collapse"


def test_isotropic_gaussian_features_reach_nearly_full_rank():
    # N >> D: the singular values of Z / sqrt(N) spread around 1 by sqrt(D / N) (Marchenko-Pastur), which costs
    # about D * D / (8 N) (0.032 here); twice that is the tolerance. Squared singular values (another
    # "effective rank") would lose 4x more, D * D / (2 N) = 0.128, and fail.
    n, d = 4000, 32
    rank = effective_rank(torch.randn(n, d, generator=torch.Generator().manual_seed(0)))
    assert d * (1 - d / (4 * n)) < rank <= d * (1 + 1.1 * d * EPSILON_LOG)
    # fewer samples than dimensions: bounded by N
    assert effective_rank(torch.randn(20, 64)) <= 20 * (1 + 1.1 * 20 * EPSILON_LOG)


@pytest.mark.parametrize("k", [1, 3, 10])
def test_k_equal_singular_values_give_k(k):
    features = with_spectrum([2.5] * k, n=60, d=32, seed=k)
    assert effective_rank(features, epsilon=0) == pytest.approx(k, rel=1e-9)
    assert k <= effective_rank(features) <= k * (1 + 1.1 * 32 * EPSILON_LOG)


def test_an_uneven_spectrum_against_the_value_by_hand():
    # s = (4, 2, 1, 1): p = (1/2, 1/4, 1/8, 1/8), entropy 1.75 ln 2, RankMe 2 ** 1.75 (p from s, not s squared)
    features = with_spectrum([4.0, 2.0, 1.0, 1.0], n=50, d=20)
    assert effective_rank(features, epsilon=0) == pytest.approx(2**1.75, rel=1e-9)
    # the paper's epsilon, written out: p_k = s_k / sum(s) + eps over all min(N, D) = 20 singular values
    p = [s / 8 + EPSILON for s in (4, 2, 1, 1)] + [EPSILON] * 16
    assert effective_rank(features) == pytest.approx(math.exp(-sum(x * math.log(x) for x in p)), rel=1e-9)


def test_invariant_to_scale_and_rotation_but_not_centred():
    features = torch.randn(300, 24) * torch.linspace(0.1, 3, 24)
    reference = effective_rank(features)
    for scale in (1e-4, 3.0, 1e4):
        assert effective_rank(scale * features) == pytest.approx(reference, rel=1e-9)
    rotation = torch.linalg.qr(torch.randn(24, 24, dtype=torch.float64))[0]
    assert effective_rank(features.double() @ rotation) == pytest.approx(reference, rel=1e-9)
    assert effective_rank(features.to(torch.bfloat16)) == pytest.approx(reference, rel=1e-2), "computed in float64"
    # as in the paper, the mean is not removed: a large common offset is one dominant direction
    assert effective_rank(100 + torch.randn(300, 24)) < 2 < 20 < effective_rank(torch.randn(300, 24))


def test_bad_input():
    with pytest.raises(ValueError, match=r"\[N, D\] matrix"):
        effective_rank(torch.randn(10))
    with pytest.raises(ValueError, match="epsilon"):
        effective_rank(torch.randn(4, 4), epsilon=-1)
    assert math.isnan(effective_rank(torch.tensor([[1.0, float("nan")], [0.0, 1.0]])))


def test_the_subset_is_seeded_and_needs_no_labels():
    assert image_subset(100, 10, seed=3) == image_subset(100, 10, seed=3) != image_subset(100, 10, seed=4)
    assert len(set(image_subset(100, 10, seed=3))) == 10 and image_subset(10, 10, seed=0) is None
    assert image_subset(100, None, seed=0) is None


# ---- the callback ------------------------------------------------------------------------------------
def write_unlabelled(folder, count: int = 40, size: int = 16):
    """Image files directly in ``folder`` (no class folders, no val/): pretraining data only."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        colour = rng.integers(0, 255, 3)
        pixels = np.clip(colour + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    return folder


def unlabelled_data(folder) -> SSLDataModule:
    return SSLDataModule(dataset="imagefolder", root=str(folder), image_size=16, batch_size=8, num_workers=0)


def fit(tiny_vit, root, callbacks, folder, epochs=3):
    L.seed_everything(0)
    model = MAE(backbone=tiny_vit, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2, warmup_steps=1)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        limit_train_batches=2,
        callbacks=callbacks,
        num_sanity_val_steps=0,
        logger=CSVLogger(root, name="", version=""),
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        log_every_n_steps=1,
    )
    trainer.fit(model, datamodule=unlabelled_data(folder))
    return trainer, model


def test_logs_rankme_on_unlabelled_images_and_leaves_training_unchanged(tiny_vit, tmp_path):
    folder = write_unlabelled(tmp_path / "flat")
    callback = OnlineRankMe(every_n_epochs=2, num_images=30, compare_random_init=True)
    trainer, model = fit(tiny_vit, tmp_path / "watched", [callback], folder)
    assert [h["epoch"] for h in callback.history] == [2, 3], "every 2 epochs, and after the last"
    last = callback.history[-1]
    assert (last["num_images"], last["dim"]) == (30, 64) and 1 < last["rank"] <= 30.01
    assert trainer.callback_metrics["rankme"].item() == pytest.approx(last["rank"])
    assert trainer.callback_metrics["rankme/normalized"].item() == pytest.approx(last["rank"] / 30)
    assert "rankme" in trainer.progress_bar_metrics and "rankme/random_init" in trainer.callback_metrics
    with open(tmp_path / "watched" / "metrics.csv") as f:
        logged = [row for row in csv.DictReader(f) if row.get("rankme")]
    assert [int(row["epoch"]) for row in logged] == [1, 2] and all(row["rankme/normalized"] for row in logged)
    # the number is that of the same 30 images encoded apart (MAE's native feature is its CLS token)
    again = OnlineRankMe(num_images=30, pooling="cls").evaluate(model.backbone, unlabelled_data(folder))
    assert again["rank"] == pytest.approx(last["rank"], rel=1e-6)
    _, plain = fit(tiny_vit, tmp_path / "plain", [], folder)
    for (name, a), b in zip(plain.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b), f"{name}: the monitor changed training"


def test_a_collapsed_encoder_reads_one_and_a_random_one_reads_high(tiny_vit, tmp_path):
    data = unlabelled_data(write_unlabelled(tmp_path / "flat"))
    monitor = OnlineRankMe(num_images=32, pooling="cls")
    random = monitor.evaluate(VisionTransformer(tiny_vit).eval(), data)
    collapsed = VisionTransformer(tiny_vit).eval()
    with torch.no_grad():  # the final norm's output no longer depends on the image: every feature is its bias
        collapsed.norm.weight.zero_()
        collapsed.norm.bias.normal_()
    assert monitor.evaluate(collapsed, data)["rank"] == pytest.approx(1.0, abs=1e-3)
    # A random encoder is far from collapsed but not white either: its uncentred CLS features share a large
    # mean direction (12.4 of at most 32 here).
    assert random["rank"] > 0.25 * min(32, tiny_vit.embed_dim), random


def test_clear_errors_before_training(tiny_vit, tmp_path):
    folder = write_unlabelled(tmp_path / "flat")
    with pytest.raises(ConfigError, match="num_images must be at least 2"):
        OnlineRankMe(num_images=1)
    with pytest.raises(ConfigError, match="split='test' is not a split"):
        OnlineRankMe(split="test")
    with pytest.raises(ConfigError, match="split='val'.*no val/ folder.*pretrain split always exists"):
        fit(tiny_vit, tmp_path / "run", [OnlineRankMe(split="val")], folder)
    with pytest.raises(ConfigError, match="pooling='token'"):
        fit(tiny_vit, tmp_path / "run", [OnlineRankMe(pooling="token")], folder)


def test_from_yaml_in_a_seconds_long_sslvit_fit_on_an_unlabelled_folder(tmp_path):
    folder = write_unlabelled(tmp_path / "flat")
    extra = tmp_path / "rankme.yaml"
    extra.write_text(
        "trainer:\n  callbacks:\n    - class_path: sslvit.eval.OnlineRankMe\n"
        "      init_args: {every_n_epochs: 5, num_images: 24}\n"
    )
    run = tmp_path / "run"
    cli = run_cli(["fit", "--config", TINY_CONFIGS["mae"], "--config", str(extra), "--data.dataset", "imagefolder",
                   "--data.root", str(folder), "--trainer.default_root_dir", str(run)])  # fmt: skip
    rank = cli.trainer.callback_metrics["rankme"].item()
    assert 1 < rank <= 24.01, "evaluated when max_steps ends training in epoch 1 of 5"
    with open(run / "metrics.csv") as f:
        (row,) = [row for row in csv.DictReader(f) if row.get("rankme")]
    assert float(row["rankme"]) == pytest.approx(rank) and float(row["rankme/normalized"]) == pytest.approx(rank / 24)

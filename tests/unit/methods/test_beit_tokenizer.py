"""The k-means visual tokenizer: codes, determinism, files, features, coverage statistics, data sampling."""

import json

import pytest
import torch

from sslvit.data import SSLDataModule
from sslvit.errors import ConfigError
from sslvit.methods.beit.tokenizer import KMeansTokenizer, load_tokenizer, patch_features
from sslvit.methods.beit.tokenizer_fit import (
    CodebookConfig,
    codebook_stats,
    fit_kmeans_tokenizer,
    fit_tokenizer_on_data,
    sample_patches,
)
from sslvit.nn.backbone import ViTConfig
from sslvit.nn.masking import patchify

P = 4  # patch side of every test here


def pattern_images(n: int, patterns: torch.Tensor, generator: torch.Generator, noise: float = 0.02) -> torch.Tensor:
    """[n, 3, 16, 16] images whose 16 patches are drawn from ``patterns`` [K, 3, 4, 4], plus a little noise."""
    ids = torch.randint(len(patterns), (n, 4, 4), generator=generator)
    images = patterns[ids].permute(0, 3, 1, 4, 2, 5).reshape(n, 3, 16, 16)  # [n, C, 4 rows, p, 4 cols, p]
    return images + noise * torch.randn(images.shape, generator=generator)


@pytest.fixture
def patterns() -> torch.Tensor:
    return torch.randn(6, 3, P, P, generator=torch.Generator().manual_seed(1))


def fitted(patches: torch.Tensor, vocab: int = 6, seed: int = 0, **kwargs) -> KMeansTokenizer:
    return fit_kmeans_tokenizer(patches, vocab, P, 16, seed=seed, iterations=10, **kwargs)


def test_codes_in_range_and_same_patch_same_code(patterns):
    images = pattern_images(32, patterns, torch.Generator().manual_seed(0))
    tokenizer = fitted(patchify(images, P).flatten(0, 1), vocab=12)
    codes = tokenizer(images)
    assert codes.shape == (32, 16) and codes.dtype == torch.int64
    assert codes.min() >= 0 and codes.max() < 12
    # one patch repeated over a whole image, and at another position in another image: one code
    tiled = patterns[2].repeat(1, 4, 4).unsqueeze(0)
    assert len(set(tokenizer(tiled).flatten().tolist())) == 1
    shifted = torch.zeros(1, 3, 16, 16)
    shifted[0, :, 8:12, 4:8] = patterns[2]
    assert tokenizer(shifted)[0, 2 * 4 + 1] == tokenizer(tiled)[0, 0]


def test_distinct_patterns_get_distinct_codes_and_decode_back(patterns):
    images = pattern_images(32, patterns, torch.Generator().manual_seed(0))
    tokenizer = fitted(patchify(images, P).flatten(0, 1), vocab=12)  # spare codes: k-means finds every pattern
    tiles = torch.stack([p.repeat(1, 4, 4) for p in patterns])  # [6, 3, 16, 16], one pattern each
    codes = tokenizer(tiles)
    assert len(set(codes[:, 0].tolist())) == 6
    assert (tokenizer.decode(codes) - tiles).abs().max() < 0.05  # each code's mean patch is its pattern


def test_fitting_twice_with_one_seed_gives_one_codebook():
    patches = torch.randn(600, 3 * P * P, generator=torch.Generator().manual_seed(0))
    a, b, c = fitted(patches, 16, seed=3), fitted(patches, 16, seed=3), fitted(patches, 16, seed=4)
    assert torch.equal(a.centroids, b.centroids) and torch.equal(a.patch_centroids, b.patch_centroids)
    assert not torch.equal(a.centroids, c.centroids)


def test_save_and_load_give_identical_codes(tmp_path, patterns):
    images = pattern_images(16, patterns, torch.Generator().manual_seed(0), noise=0.3)
    tokenizer = fitted(patchify(images, P).flatten(0, 1), vocab=16, color_weight=0.25)
    tokenizer.info = {"fit": {"seed": 0}}
    tokenizer.save(tmp_path / "tok")
    loaded = load_tokenizer(tmp_path / "tok")
    assert torch.equal(loaded(images), tokenizer(images))
    assert loaded.settings() == tokenizer.settings() and loaded.info == {"fit": {"seed": 0}}
    meta = json.loads((tmp_path / "tok" / "tokenizer.json").read_text())
    assert meta["vocab_size"] == 16 and meta["patch_size"] == P and meta["color_weight"] == 0.25
    # Information about the fit never replaces a setting the codebook is rebuilt from.
    tokenizer.info = {"fit": {"seed": 0}, "vocab_size": 999, "color_weight": 9.0}
    tokenizer.save(tmp_path / "tok2")
    assert load_tokenizer(tmp_path / "tok2").settings() == tokenizer.settings()


def test_loading_a_missing_or_foreign_directory_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="is not a tokenizer directory.*tools/fit_tokenizer.py"):
        load_tokenizer(tmp_path)
    tokenizer = fitted(torch.randn(60, 48), vocab=4)
    tokenizer.save(tmp_path)
    meta = json.loads((tmp_path / "tokenizer.json").read_text())
    (tmp_path / "tokenizer.json").write_text(json.dumps({**meta, "type": "dvae"}))
    with pytest.raises(ConfigError, match="'dvae' tokenizer"):
        load_tokenizer(tmp_path)


def test_faiss_and_matmul_assignment_agree():
    patches = torch.randn(2000, 48, generator=torch.Generator().manual_seed(0))
    tokenizer = fitted(patches, 32)
    features = tokenizer.features(patches)
    assert torch.equal(tokenizer.assign(features), tokenizer._assign_matmul(features))


def test_frozen_and_without_gradients(patterns):
    images = pattern_images(4, patterns, torch.Generator().manual_seed(0)).requires_grad_(True)
    tokenizer = fitted(patchify(images.detach(), P).flatten(0, 1), vocab=6)
    assert list(tokenizer.parameters()) == []
    assert not tokenizer(images).requires_grad


def test_unfitted_tokenizer_says_how_to_get_a_codebook():
    with pytest.raises(RuntimeError, match="no codebook yet"):
        KMeansTokenizer(8, P, 16)(torch.randn(1, 3, 16, 16))


def test_features_separate_shape_from_colour():
    patch = torch.randn(1, 48, generator=torch.Generator().manual_seed(0))
    brighter = patch + torch.tensor([0.5, -0.2, 0.1]).repeat(16)  # add a colour to every pixel
    stronger = patch * 2.0
    shape, brighter_shape, stronger_shape = (patch_features(x, 3, 0.5)[:, :48] for x in (patch, brighter, stronger))
    assert torch.allclose(shape, brighter_shape, atol=1e-5)  # shape ignores the patch colour...
    assert torch.allclose(shape, stronger_shape, atol=0.01)  # ...and (nearly) its contrast
    assert shape.norm() <= 1.0
    assert not torch.allclose(patch_features(patch, 3, 0.5)[:, 48:], patch_features(brighter, 3, 0.5)[:, 48:])
    assert torch.equal(patch_features(brighter, 3, 0.0)[:, 48:], torch.zeros(1, 4))  # colour_weight 0: no colour


def test_flat_patches_have_a_small_shape():
    flat = torch.full((1, 48), 0.3) + 1e-3 * torch.randn(1, 48)  # JPEG-level noise on a uniform patch
    assert patch_features(flat, 3, 0.5)[:, :48].norm() < 0.02


def test_coverage_statistics(patterns):
    images = pattern_images(64, patterns[:4], torch.Generator().manual_seed(0), noise=0.0)
    patches = patchify(images, P).flatten(0, 1)
    stats = codebook_stats(fitted(patches, vocab=8), patches, "sample")
    # 4 equally frequent patterns: at most 4 codes used, perplexity ~4, reconstruction exact
    assert stats.used_codes <= 4 and 3.8 < stats.perplexity <= 4.0 and 0.2 < stats.top_code_share < 0.3
    assert stats.mse < 1e-8 and stats.relative_mse < 1e-8 and stats.num_patches == 1024
    noisy = codebook_stats(fitted(torch.randn(400, 48), vocab=8), torch.randn(400, 48), "noise")
    assert noisy.relative_mse > 0.5 and noisy.used_codes == 8


def test_too_few_patches_for_the_vocabulary():
    with pytest.raises(ConfigError, match="lower codebook.vocab_size"):
        fitted(torch.randn(10, 48), vocab=16)


def test_patch_mismatch_with_the_backbone_is_a_clear_error():
    tokenizer = KMeansTokenizer(8, patch_size=4, image_size=32)
    tokenizer.check_matches(ViTConfig(arch="vit_tiny", img_size=32, patch_size=4))
    with pytest.raises(ConfigError, match="4px patches on a 8x8 grid.*patch_size=8 and a 4x4 grid"):
        tokenizer.check_matches(ViTConfig(arch="vit_tiny", img_size=32, patch_size=8))
    with pytest.raises(ConfigError, match="8x8 grid.*16x16 grid"):
        tokenizer.check_matches(ViTConfig(arch="vit_tiny", img_size=64, patch_size=4))


def test_sample_is_seeded_and_sized(image_folder):
    data = SSLDataModule(dataset="imagefolder", root=str(image_folder), image_size=16, batch_size=8, num_workers=0)
    dataset = data.build_dataset("pretrain", data.train_transform())  # 24 images, random crops
    a = sample_patches(dataset, 100, 3, P, 4, seed=0)
    assert a.shape == (100, 48)  # 24 images x ceil(100 / 24) = 5 patches each, cut to 100
    # the seed alone decides: not the loader's batch size or workers, nor the global RNG
    torch.manual_seed(123)
    assert torch.equal(a, sample_patches(dataset, 100, 3, P, 4, seed=0, batch_size=5, num_workers=1))
    assert not torch.equal(a, sample_patches(dataset, 100, 3, P, 4, seed=1))


def test_fit_on_a_data_module_records_how(image_folder):
    data = SSLDataModule(dataset="imagefolder", root=str(image_folder), image_size=16, batch_size=8, num_workers=0)
    backbone = ViTConfig(arch="vit_tiny", img_size=16, patch_size=P)
    tokenizer, stats = fit_tokenizer_on_data(data, backbone, CodebookConfig(vocab_size=8, patches_per_code=20))
    assert [s.split for s in stats] == ["fit sample", "held-out val"]
    assert stats[0].num_patches == 160 and stats[1].num_patches == 40
    assert tokenizer.info["fit"]["dataset"] == "imagefolder" and tokenizer.info["stats"][1]["num_patches"] == 40
    assert tokenizer.pixel_mean.tolist() == pytest.approx(list(data.mean))


def test_default_vocabulary_follows_the_image_size():
    assert CodebookConfig().resolved(32).vocab_size == 1024
    assert CodebookConfig().resolved(224).vocab_size == 8192
    assert CodebookConfig(vocab_size=300).resolved(224).vocab_size == 300
    with pytest.raises(ConfigError, match="codebook.vocab_size"):
        CodebookConfig(vocab_size=1)

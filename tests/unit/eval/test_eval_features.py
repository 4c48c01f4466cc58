"""Frozen feature extraction: poolings, eval mode, caching, RNG, multi-process gathering."""

import os
import shutil
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, TensorDataset

from conftest import write_image_folder
from sslvit.data import SSLDataModule
from sslvit.data.shards import shard_image_folder
from sslvit.errors import ConfigError
from sslvit.eval.features import (
    FeatureCache,
    dataset_features,
    encode,
    extract_features,
    feature_dim,
    feature_key,
    resolve_precision,
)
from sslvit.methods import MAE, BEiT
from sslvit.methods.beit import CodebookConfig
from sslvit.nn.backbone import VisionTransformer, ViTConfig


def test_poolings_match_the_backbone(tiny_vit):
    backbone = VisionTransformer(tiny_vit).eval()
    images = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        tokens = backbone.forward_features(images)
    assert torch.equal(encode(backbone, images, "cls", "fp32"), tokens[:, 0])
    assert torch.allclose(encode(backbone, images, "mean", "fp32"), tokens[:, 1:].mean(1))
    assert torch.allclose(encode(backbone, images, "cls_last1", "fp32"), tokens[:, 0], atol=1e-6)
    last2 = encode(backbone, images, "cls_last2", "fp32")
    assert last2.shape == (3, 2 * 64) == (3, feature_dim(backbone, "cls_last2"))
    assert torch.allclose(last2[:, 64:], tokens[:, 0], atol=1e-6), "the last block's CLS comes last"
    for bad in ("avg", "cls_last0", "cls_last3"):
        with pytest.raises(ConfigError, match=r"use 'cls', 'mean' or 'cls_last<n>' with 1 <= n <= 2"):
            encode(backbone, images, bad)


def test_eval_mode_is_enforced_and_restored(tiny_vit):
    config = ViTConfig(**{**tiny_vit.to_dict(), "drop_path_rate": 0.5})
    backbone = VisionTransformer(config)
    for block in backbone.blocks:  # dropout as well as drop-path
        block.mlp.drop1.p = 0.5
    images = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        reference = backbone.eval()(images)
        backbone.train()
        assert not torch.allclose(backbone(images), reference), "train mode must be stochastic for this test"
    backbone.blocks[1].eval()  # a mixed state must come back exactly as it was
    modes = [m.training for m in backbone.modules()]
    assert torch.equal(encode(backbone, images, precision="fp32"), reference)
    loader = DataLoader(TensorDataset(images, torch.arange(4)), batch_size=3)
    assert torch.equal(extract_features(backbone, loader, precision="fp32").features, reference)
    assert [m.training for m in backbone.modules()] == modes
    assert encode(backbone, images).requires_grad is False


class CountingBackbone(VisionTransformer):
    calls = 0

    def forward_features(self, images):
        CountingBackbone.calls += 1
        return super().forward_features(images)


def test_cache_reuses_features_and_keys_what_matters(tiny_vit, image_folder, tmp_path):
    backbone = CountingBackbone(tiny_vit).eval()
    data = SSLDataModule(dataset="imagefolder", root=str(image_folder), image_size=16, batch_size=5, num_workers=0)
    cache = FeatureCache(tmp_path / "cache")
    first = dataset_features(backbone, data, "train", cache=cache)
    calls = CountingBackbone.calls
    assert calls == 5 and not first.from_cache  # 24 images in batches of 5
    again = dataset_features(backbone, data, "train", cache=cache)
    assert CountingBackbone.calls == calls, "the backbone must not run for cached features"
    assert again.from_cache and torch.equal(again.features, first.features) and torch.equal(again.labels, first.labels)
    # Another split, pooling, image size or weights is another key.
    assert len(dataset_features(backbone, data, "val", cache=cache)) == 12
    assert dataset_features(backbone, data, "train", pooling="mean", cache=cache).from_cache is False
    other_size = SSLDataModule(dataset="imagefolder", root=str(image_folder), image_size=8, num_workers=0)
    assert dataset_features(backbone, other_size, "train", cache=cache).from_cache is False
    with torch.no_grad():
        backbone.norm.bias.add_(0.1)
    changed = dataset_features(backbone, data, "train", cache=cache)
    assert not changed.from_cache and not torch.allclose(changed.features, first.features)
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 5


def test_two_image_folders_never_share_a_cache_entry(tiny_vit, tmp_path):
    """Regression: the caller's tag ({"dataset": "imagefolder", ...}) replaced the dataset's description
    in the key, so a second ImageFolder evaluated with the same weights got the first one's features."""
    backbone = VisionTransformer(tiny_vit).eval()
    small = write_image_folder(tmp_path / "small", classes=3, per_class=4, seed=0)
    large = write_image_folder(tmp_path / "large", classes=2, per_class=9, seed=1)
    cache = FeatureCache(tmp_path / "cache")
    modules = [
        SSLDataModule(dataset="imagefolder", root=str(root), image_size=16, batch_size=8, num_workers=0)
        for root in (small, large)
    ]
    first = dataset_features(backbone, modules[0], "train", cache=cache)
    second = dataset_features(backbone, modules[1], "train", cache=cache)
    uncached = dataset_features(backbone, modules[1], "train")
    assert (len(first), len(second)) == (12, 18) and not second.from_cache
    assert torch.equal(second.features, uncached.features) and torch.equal(second.labels, uncached.labels)
    # The tag is kept apart: it cannot replace what identifies the content.
    key = feature_key(
        backbone,
        modules[1].eval_dataloader("train").dataset,
        "cls",
        torch.device("cpu"),
        tag={"dataset": "imagefolder", "weights": "x", "pooling": "mean"},
    )
    assert key["dataset"]["size"] == 18 and key["pooling"] == "cls" and key["weights"] != "x"
    assert key["tag"] == {"dataset": "imagefolder", "weights": "x", "pooling": "mean"}
    # What cannot be identified (tensors in memory: no root, no listing) is never cached.
    loader = DataLoader(TensorDataset(torch.randn(4, 3, 16, 16), torch.arange(4)), batch_size=2)
    assert not extract_features(backbone, loader, cache=cache).from_cache
    assert not extract_features(backbone, loader, cache=cache).from_cache


def overwrite_images(folder: Path, donor: Path) -> None:
    """Every image below ``folder`` replaced by another image under the same name (new content, same listing)."""
    donors = sorted(donor.rglob("*.png"))
    for i, path in enumerate(sorted(folder.rglob("*.png"))):
        shutil.copyfile(donors[i % len(donors)], path)


@pytest.mark.parametrize("kind", ["imagefolder", "webdataset", "imagefolder-subset"])
def test_the_cache_is_keyed_by_content_not_by_file_names(tiny_vit, tmp_path, kind):
    """Regression: images overwritten under the same names were served from the cache ("from cache", old accuracy)."""
    backbone = VisionTransformer(tiny_vit).eval()
    root = write_image_folder(tmp_path / "images", classes=3, per_class=4, seed=0)
    donor = write_image_folder(tmp_path / "donor", classes=3, per_class=4, seed=1)
    cache = FeatureCache(tmp_path / "cache")
    data_root = root
    if kind == "webdataset":
        shard_image_folder(root, tmp_path / "shards")
        data_root = tmp_path / "shards"
    data = SSLDataModule(
        dataset="webdataset" if kind == "webdataset" else "imagefolder",
        root=str(data_root),
        image_size=16,
        batch_size=8,
        num_workers=0,
    )
    indices = [0, 2, 5] if kind == "imagefolder-subset" else None
    first = dataset_features(backbone, data, "train", cache=cache, indices=indices)
    assert dataset_features(backbone, data, "train", cache=cache, indices=indices).from_cache
    if kind == "webdataset":
        shutil.rmtree(tmp_path / "shards")
        overwrite_images(root, donor)
        shard_image_folder(root, tmp_path / "shards")
    else:
        overwrite_images(root / "train", donor / "train")
    again = dataset_features(backbone, data, "train", cache=cache, indices=indices)
    fresh = dataset_features(backbone, data, "train", indices=indices)
    assert not again.from_cache, "new content under the same names must be a cache miss"
    assert torch.equal(again.features, fresh.features) and not torch.allclose(again.features, first.features)


def test_the_cache_knows_the_label_map(tiny_vit, tmp_path):
    """val's labels follow train's class list: a new train class re-indexes val, and the cache must not serve
    val's old labels although val's files did not change."""
    backbone = VisionTransformer(tiny_vit).eval()
    root = write_image_folder(tmp_path / "images", classes=2, per_class=4)
    cache = FeatureCache(tmp_path / "cache")

    def val_labels() -> list[int]:
        data = SSLDataModule(dataset="imagefolder", root=str(root), image_size=16, batch_size=8, num_workers=0)
        return dataset_features(backbone, data, "val", cache=cache).labels.tolist()

    assert val_labels() == [0, 0, 1, 1]
    shutil.copytree(root / "train" / "class0", root / "train" / "a_first")  # sorts before class0
    with pytest.warns(UserWarning, match="no images of 1 of the train split's 3 classes"):
        assert val_labels() == [1, 1, 2, 2]


def test_extraction_leaves_the_global_rng_alone(tiny_vit):
    backbone = VisionTransformer(tiny_vit)
    loader = DataLoader(TensorDataset(torch.randn(6, 3, 16, 16), torch.arange(6)), batch_size=4)
    state = torch.get_rng_state()
    extract_features(backbone, loader, indices=[5, 0, 3])
    assert torch.equal(torch.get_rng_state(), state), "evaluation during training must not change its randomness"


TINY = dict(arch="vit_tiny", img_size=16, patch_size=4, embed_dim=64, depth=2, num_heads=4)


def _extract_on_rank(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        backbone = VisionTransformer(TINY)
        images = torch.randn(11, 3, 16, 16, generator=torch.Generator().manual_seed(1))
        loader = DataLoader(TensorDataset(images, torch.arange(11)), batch_size=4)
        result = extract_features(backbone, loader, precision="fp32")
        torch.save({"features": result.features, "labels": result.labels}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_processes_extract_shards_and_gather_in_dataset_order(tmp_path):
    mp.spawn(_extract_on_rank, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    torch.manual_seed(0)
    backbone = VisionTransformer(TINY)
    images = torch.randn(11, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    loader = DataLoader(TensorDataset(images, torch.arange(11)), batch_size=4)
    single = extract_features(backbone, loader, precision="fp32")
    for rank in range(2):
        gathered = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert torch.equal(gathered["labels"], torch.arange(11)), "dataset order, each image once (11 = 5 + 6)"
        assert torch.allclose(gathered["features"], single.features, atol=1e-5)


def _cached_extraction_on_rank(rank: int, world: int, init_file: str, folder: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        backbone = VisionTransformer(TINY).eval()
        data = SSLDataModule(dataset="imagefolder", root=folder, image_size=16, batch_size=4, num_workers=0)
        loader = data.eval_dataloader("train")
        picked = [9, 2, 7, 0, 5]  # the online kNN's bank: a subset, in this order
        subset = extract_features(backbone, loader, indices=picked, precision="fp32")
        shared = FeatureCache(os.path.join(out_dir, "shared"))
        first = extract_features(backbone, loader, cache=shared, precision="fp32")  # a miss on both ranks
        dist.barrier()
        second = extract_features(backbone, loader, cache=shared, precision="fp32")  # a hit on both
        # A hit on one rank only (its own cache holds the entry, the other's does not): both encode.
        own = FeatureCache(os.path.join(out_dir, f"own{rank}"))
        if rank == 0:
            own.save(feature_key(backbone, loader.dataset, "cls", torch.device("cpu"), precision="fp32"), first)
        dist.barrier()
        lopsided = extract_features(backbone, loader, cache=own, precision="fp32")
        results = {"subset": subset, "first": first, "second": second, "lopsided": lopsided}
        torch.save(
            {name: (f.features, f.labels, f.from_cache) for name, f in results.items()},
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


def test_two_processes_agree_on_cache_hits_and_subsets(tmp_path):
    """Features paired with the right labels under two processes: with ``indices``, and with a cache that
    hits on both ranks, on one rank only (both must encode, or one would wait for the other forever), or
    on neither (only rank 0 writes)."""
    folder = write_image_folder(tmp_path / "images", classes=3, per_class=4)
    mp.spawn(
        _cached_extraction_on_rank, args=(2, str(tmp_path / "init"), str(folder), str(tmp_path)), nprocs=2, join=True
    )
    torch.manual_seed(0)
    backbone = VisionTransformer(TINY).eval()
    data = SSLDataModule(dataset="imagefolder", root=str(folder), image_size=16, batch_size=4, num_workers=0)
    single = extract_features(backbone, data.eval_dataloader("train"), precision="fp32")
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        features, labels, _ = got["subset"]
        assert torch.equal(labels, single.labels[[9, 2, 7, 0, 5]])
        torch.testing.assert_close(features, single.features[[9, 2, 7, 0, 5]], atol=1e-5, rtol=1e-5)
        assert [got[name][2] for name in ("first", "second", "lopsided")] == [False, True, False]
        for name in ("first", "second", "lopsided"):
            assert torch.equal(got[name][1], single.labels), name
            torch.testing.assert_close(got[name][0], single.features, atol=1e-5, rtol=1e-5)
    assert len(list((tmp_path / "shared").iterdir())) == 1, "one entry, written once (by rank 0)"
    assert not (tmp_path / "own1").exists() or not any((tmp_path / "own1").iterdir()), "rank 1 never writes"


def test_each_method_names_its_native_feature(tiny_vit):
    images = torch.randn(2, 3, 16, 16)
    mae = MAE(backbone=tiny_vit, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)
    beit = BEiT(backbone=tiny_vit, codebook=CodebookConfig(vocab_size=8))
    assert torch.equal(encode(mae, images, "native"), encode(mae.backbone, images, "cls"))
    assert torch.equal(encode(beit, images, "native"), encode(beit.backbone, images, "mean")), (
        "nothing trains BEiT's CLS"
    )
    assert feature_dim(mae, "native") == 64 and mae.training, "the method's mode is restored"
    with pytest.raises(ConfigError, match="pooling='native' needs a method"):
        encode(mae.backbone, images, "native")


def test_progress_bar_shows_images_per_second(tiny_vit, capsys):
    backbone = VisionTransformer(tiny_vit)
    loader = DataLoader(TensorDataset(torch.randn(10, 3, 16, 16), torch.arange(10)), batch_size=4)
    silent = extract_features(backbone, loader)
    assert capsys.readouterr().err == "", "no bar unless asked (online kNN runs inside Lightning's own)"
    shown = extract_features(backbone, loader, progress="train features")
    err = capsys.readouterr().err
    assert "train features" in err and "10/10" in err and "img/s" in err
    assert torch.equal(shown.features, silent.features)


def test_precision_auto_follows_the_hardware_and_keys_the_cache(tiny_vit, image_folder, monkeypatch, tmp_path):
    backbone = VisionTransformer(tiny_vit).eval()
    images = torch.randn(4, 3, 16, 16)
    exact, bf16 = encode(backbone, images, precision="fp32"), encode(backbone, images, precision="bf16")
    assert bf16.dtype == torch.float32 and not torch.equal(exact, bf16)
    assert torch.nn.functional.cosine_similarity(exact, bf16).min() > 0.999
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert resolve_precision("auto", "cpu") == "fp32", "no bf16 matrix units: bf16 would be slow"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert resolve_precision("auto", "cpu") == "bf16" and resolve_precision("fp32", "cpu") == "fp32"
    with pytest.raises(ConfigError, match="precision='fp16' is unknown"):
        resolve_precision("fp16", "cpu")
    data = SSLDataModule(dataset="imagefolder", root=str(image_folder), image_size=16, num_workers=0)
    cache = FeatureCache(tmp_path / "cache")
    dataset_features(backbone, data, "val", cache=cache, precision="fp32")
    assert dataset_features(backbone, data, "val", cache=cache, precision="bf16").from_cache is False
    assert dataset_features(backbone, data, "val", cache=cache, precision="auto").from_cache, "auto is bf16 here"


def test_an_interrupted_cache_write_leaves_nothing_and_a_damaged_entry_is_a_miss(
    tiny_vit, image_folder, tmp_path, monkeypatch
):
    backbone = VisionTransformer(tiny_vit).eval()
    data = SSLDataModule(dataset="imagefolder", root=str(image_folder), image_size=16, batch_size=8, num_workers=0)
    cache = FeatureCache(tmp_path / "cache")
    real_save = torch.save

    def interrupted(obj, path, *args, **kwargs):  # half a file is written, then Ctrl-C
        real_save(obj, path, *args, **kwargs)
        with open(path, "r+b") as f:
            f.truncate(100)
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        dataset_features(backbone, data, "train", cache=cache)
    assert not any(p.is_file() for p in (tmp_path / "cache").rglob("*")), "no partial file may remain"
    monkeypatch.setattr(torch, "save", real_save)
    first = dataset_features(backbone, data, "train", cache=cache)
    (entry,) = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    entry.write_bytes(entry.read_bytes()[:100])  # a damaged entry: read as a miss, encoded again, replaced
    with pytest.warns(UserWarning, match="cannot be read"):
        again = dataset_features(backbone, data, "train", cache=cache)
    assert not again.from_cache and torch.equal(again.features, first.features)
    assert dataset_features(backbone, data, "train", cache=cache).from_cache

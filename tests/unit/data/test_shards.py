"""WebDataset shards: written from a folder, read back byte for byte, ordered per rank, bad shards named."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_image_folder
from sslvit.data import SSLDataModule
from sslvit.data.shards import ShardDataset, ShardSampler, shard_groups, shard_image_folder, write_shards
from sslvit.errors import ConfigError, CorruptImageError, DatasetUnavailableError


@pytest.fixture
def shards(tmp_path) -> Path:
    """3 classes x 10 train images (7 per shard: 5 shards) and 3 x 5 val images."""
    write_image_folder(tmp_path / "images", classes=3, per_class=10)
    shard_image_folder(tmp_path / "images", tmp_path / "shards", samples_per_shard=7)
    return tmp_path / "shards"


def test_shards_hold_the_files_and_labels_of_the_folder(shards):
    train = ShardDataset(shards / "train")
    assert len(train) == 30 and train.sizes == [7, 7, 7, 7, 2] and train.classes == ["class0", "class1", "class2"]
    seen = set()
    for i in range(len(train)):
        image, label = train[i]
        source = train._shard(train.locate(i)[0])[train.locate(i)[1]][".src"].read().decode()
        seen.add(source)
        assert f"class{label}" == Path(source).parent.name  # the label is the file's class
        assert np.array_equal(np.asarray(image), np.asarray(Image.open(source).convert("RGB")))  # same pixels
    assert len(seen) == 30
    assert sorted(train.targets) != train.targets, "training samples are shuffled once when written"
    val = ShardDataset(shards / "val")
    assert len(val) == 15 and val.targets == sorted(val.targets), "val keeps the folder's order"


def test_each_rank_reads_its_own_run_of_shards_and_an_epoch_covers_every_sample_once(shards):
    dataset = ShardDataset(shards / "train")
    groups = shard_groups(dataset)
    shard_of = {index: s for s, group in enumerate(groups) for index in group}
    epochs = []
    for epoch in range(2):
        ranks = []
        for rank in range(2):
            sampler = ShardSampler(dataset, 5, groups=groups, num_replicas=2, rank=rank, seed=3, drop_last=True)
            sampler.set_epoch(epoch)
            ranks.append([index for index, _ in sampler])
        assert [len(r) for r in ranks] == [15, 15] and sorted(ranks[0] + ranks[1]) == list(range(30))
        for indices in ranks:  # a contiguous run: every shard is entered once (at most 3 of the 5 here)
            visits = [shard_of[i] for i in indices]
            runs = [s for k, s in enumerate(visits) if k == 0 or s != visits[k - 1]]
            assert len(runs) == len(set(runs)) <= 3
        epochs.append(ranks)
    assert epochs[0] != epochs[1], "shard order and sample order change with the epoch"
    in_order = ShardSampler(dataset, 5, groups=groups, num_replicas=1, rank=0, shuffle=False, drop_last=False)
    assert [index for index, _ in in_order] == list(range(30))


def test_subset_and_padding_keep_the_shard_order(shards):
    dataset = torch.utils.data.Subset(ShardDataset(shards / "train"), [0, 1, 8, 20, 29])
    assert shard_groups(dataset) == [[0, 1], [2], [3], [4]]
    padded = ShardSampler(
        dataset, 2, groups=shard_groups(dataset), num_replicas=2, rank=1, shuffle=False, drop_last=False
    )
    assert [index for index, _ in padded] == [3, 4, 0]  # wraps around like DistributedSampler


def test_datamodule_trains_from_shards_with_uint8_crops_normalized_on_the_device(shards):
    dm = SSLDataModule(dataset="webdataset", root=str(shards), image_size=16, batch_size=6, num_workers=0)
    batch = next(iter(dm.train_dataloader()))
    assert batch["images"].dtype == torch.uint8 and batch["images"].shape == (6, 3, 16, 16)
    normalized = dm.on_after_batch_transfer(dict(batch), 0)["images"]
    expected = (batch["images"].float() / 255 - torch.tensor(dm.mean).view(1, 3, 1, 1)) / torch.tensor(dm.std).view(
        1, 3, 1, 1
    )
    assert normalized.dtype == torch.float32 and torch.allclose(normalized, expected, atol=1e-5)
    images, labels = next(iter(dm.eval_dataloader("val", batch_size=15)))
    assert images.shape == (15, 3, 16, 16) and labels.tolist() == sorted(labels.tolist())


def test_truncated_shard_and_corrupt_jpeg_are_named_or_skipped(tmp_path):
    root = write_image_folder(tmp_path / "images", classes=2, per_class=6)
    broken = root / "train" / "class1" / "broken.jpg"
    Image.new("RGB", (16, 16), (10, 200, 30)).save(broken, quality=90)
    broken.write_bytes(broken.read_bytes()[:200])
    shard_image_folder(root, tmp_path / "shards", samples_per_shard=5, seed=None)  # folder order: broken.jpg first
    train = ShardDataset(tmp_path / "shards" / "train")
    broken_index = next(
        i
        for i in range(len(train))
        if train._shard(train.locate(i)[0])[train.locate(i)[1]][".src"].read().decode().endswith("broken.jpg")
    )
    key = f"{broken_index:09d}"
    with pytest.raises(CorruptImageError, match=rf"cannot read image {key}\.jpg in shard .*shard-00000\d\.tar"):
        train[broken_index]

    dm = SSLDataModule(
        dataset="webdataset",
        root=str(tmp_path / "shards"),
        image_size=16,
        batch_size=13,
        num_workers=0,
        skip_corrupt=True,
    )
    with pytest.warns(UserWarning, match=key):
        batch = next(iter(dm.train_dataloader()))
    assert batch["images"].shape[0] == 12 and batch["skipped"].item() == 1

    last = tmp_path / "shards" / "train" / "shard-000002.tar"  # 3 samples; cut into the second
    with tarfile.open(last) as tar:
        cut = tar.getmembers()[4].offset_data + 10
    last.write_bytes(last.read_bytes()[:cut])
    with pytest.raises(CorruptImageError, match=r"shard .*shard-000002\.tar cannot give its sample 2 .*truncated"):
        ShardDataset(tmp_path / "shards" / "train")[12]


def test_missing_index_and_unlabelled_shards_say_what_to_do(tmp_path):
    with pytest.raises(DatasetUnavailableError, match="index.json does not exist.*make_shards"):
        ShardDataset(tmp_path / "nowhere")
    folder = tmp_path / "flat"
    folder.mkdir()
    for i in range(4):
        Image.new("RGB", (16, 16), (i * 40, 0, 0)).save(folder / f"{i}.jpg")
    written = shard_image_folder(folder, tmp_path / "shards")
    assert list(written) == ["train"] and written["train"]["sslvit"]["labels"] is None
    dm = SSLDataModule(dataset="webdataset", root=str(tmp_path / "shards"), image_size=16, batch_size=4, num_workers=0)
    assert dm.build_dataset("pretrain", None)[2][1] == -1
    assert next(iter(dm.train_dataloader()))["labels"].tolist() == [-1] * 4
    assert dm.val_dataloader() == [], "no val/ shards: pretraining runs without validation"
    with pytest.raises(ConfigError, match="unlabelled.*evaluation .* needs labels"):
        dm.eval_dataloader("train")


def test_shards_named_by_url_are_fetched_into_a_cache(shards, tmp_path):
    index = json.loads((shards / "train" / "index.json").read_text())
    for shard in index["shardlist"]:
        shard["url"] = (shards / "train" / shard["url"]).as_uri()  # file:///...: read like s3:// or https://
    remote = tmp_path / "remote"
    remote.mkdir()
    (remote / "index.json").write_text(json.dumps(index))
    dataset = ShardDataset(remote, cache_dir=str(tmp_path / "cache"))
    local = ShardDataset(shards / "train")
    assert dataset[9][1] == local[9][1] and np.array_equal(np.asarray(dataset[9][0]), np.asarray(local[9][0]))
    assert len(list((tmp_path / "cache").glob("*shard-000001.tar"))) == 1


# ---- writing onto an existing shard set -----------------------------------------------------------------
def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_an_existing_shard_set_is_refused_and_overwrite_leaves_no_orphan(tmp_path):
    big = write_image_folder(tmp_path / "big", classes=3, per_class=10)  # 30 train, 15 val
    small = write_image_folder(tmp_path / "small", classes=2, per_class=4)  # 8 train, 4 val
    out = tmp_path / "out" / "shards"
    shard_image_folder(big, out, samples_per_shard=4)
    before = files_of(out)
    assert "val/shard-000003.tar" in before
    with pytest.raises(FileExistsError, match=r"out/shards already holds files .*; pass --overwrite to replace it"):
        shard_image_folder(small, out, samples_per_shard=4)
    assert files_of(out) == before, "a refused write changes nothing"

    written = shard_image_folder(small, out, samples_per_shard=4, overwrite=True)
    expected = {f"{split}/{s['url']}" for split, index in written.items() for s in index["shardlist"]}
    assert set(files_of(out)) == expected | {"train/index.json", "val/index.json"}, "no shard of the old set is left"
    assert len(ShardDataset(out / "val")) == 4 and ShardDataset(out / "train").classes == ["class0", "class1"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["shards"], "no temporary folder is left next to it"
    (tmp_path / "plain").mkdir()
    assert out.stat().st_mode == (tmp_path / "plain").stat().st_mode, "the permissions of a folder made by mkdir"
    assert json.loads((out / "train" / "index.json").read_text())["name"] == "train"

    unlabelled = tmp_path / "flat"  # a source without val/: the old val/ split must go too
    unlabelled.mkdir()
    for i in range(3):
        Image.new("RGB", (16, 16), (i * 60, 0, 0)).save(unlabelled / f"{i}.png")
    (tmp_path / "link").symlink_to(out)  # an output given as a link to a folder: the folder is replaced
    shard_image_folder(unlabelled, tmp_path / "link", overwrite=True)
    assert set(files_of(out)) == {"train/shard-000000.tar", "train/index.json"} and (tmp_path / "link").is_symlink()


def test_overwrite_never_deletes_files_that_are_not_shards(tmp_path):
    images = write_image_folder(tmp_path / "images", classes=2, per_class=2)
    out = tmp_path / "data"
    (out / "train").mkdir(parents=True)
    (out / "train" / "index.json").write_text("{}")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"holds files that are not part of an earlier shard set \(notes.txt\)"):
        shard_image_folder(images, out, overwrite=True)
    assert files_of(out) == {"notes.txt": b"mine", "train/index.json": b"{}"}
    with pytest.raises(FileExistsError, match="already holds files"):  # one split, written directly
        write_shards([(str(images / "train" / "class0" / "0.png"), 0)], out / "train")
    with pytest.raises(FileExistsError, match="is a file, not a folder"):
        shard_image_folder(images, out / "train" / "index.json", overwrite=True)


def test_an_interrupted_write_leaves_the_old_set_and_nothing_else(tmp_path):
    images = write_image_folder(tmp_path / "images", classes=2, per_class=6)
    out = tmp_path / "shards"
    shard_image_folder(images, out, samples_per_shard=3)
    before = files_of(out)

    def ctrl_c_after_four(items, **kwargs):
        for i, item in enumerate(items):
            if i == 4:  # a shard is already complete on disk by now
                raise KeyboardInterrupt
            yield item

    with pytest.raises(KeyboardInterrupt) as caught:
        shard_image_folder(images, out, samples_per_shard=3, seed=1, progress=ctrl_c_after_four, overwrite=True)
    assert files_of(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["images", "shards"]
    assert caught.value.args == (f"nothing was written to {out}: a new shard set is moved in only once complete",)
    with pytest.raises(KeyboardInterrupt):  # a new output in new parent folders: the parents go too
        shard_image_folder(images, tmp_path / "a" / "b" / "shards", progress=ctrl_c_after_four)
    assert not (tmp_path / "a").exists()

"""tools/knn_eval.py and tools/linear_probe.py end to end on a tiny checkpoint and a generated ImageFolder."""

import json
import statistics
import subprocess
import sys

import pytest
import torch

from conftest import REPO, load_script, write_image_folder
from sslvit.methods.mae import MAE

knn_eval, linear_probe = load_script("tools/knn_eval.py"), load_script("tools/linear_probe.py")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A checkpoint as Lightning writes it (state dict + hyper-parameters) and 3 colour classes, 70 images each."""
    root = tmp_path_factory.mktemp("tools")
    torch.manual_seed(0)
    model = MAE(
        backbone=dict(arch="vit_tiny", img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2),
        decoder_embed_dim=16,
        decoder_depth=1,
        decoder_num_heads=2,
    )
    hparams = {**dict(model.hparams), "_class_path": "sslvit.methods.MAE"}
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": hparams, "global_step": 3}, root / "m.ckpt")
    write_image_folder(root / "images", classes=3, per_class=70)
    return root


def common(setup, output, *extra):
    return [
        "--checkpoint", str(setup / "m.ckpt"), "--data-root", str(setup / "images"), "--num-workers", "0",
        "--cache-dir", str(setup / "cache"), "--output", str(output), *extra,
    ]  # fmt: skip


def test_knn_tool_writes_json_and_reuses_cached_features(setup, capsys):
    record = knn_eval.main(common(setup, setup / "knn.json"))
    saved = json.loads((setup / "knn.json").read_text())
    assert saved == json.loads(json.dumps(record))
    assert set(saved["per_k"]) == {"10", "20", "100", "200"} and saved["k"] == 20
    assert saved["top1"] == saved["per_k"]["20"]["top1"] > 90, "colour classes are easy even for a random encoder"
    assert saved["top5"] == 100.0  # 3 classes
    assert (saved["num_train"], saved["num_val"], saved["feature_dim"]) == (210, 105, 32)
    assert saved["method"] == "sslvit.methods.MAE" and saved["global_step"] == 3 and not saved["random_init"]
    assert (saved["features"], saved["pooling"], saved["source"]) == ("native", "cls", "lightning"), "MAE's own: CLS"
    assert saved["features_from_cache"] == {"train": False, "val": False}
    out = capsys.readouterr().out
    assert "*  20" in out and "top-1" in out and "IndexFlatIP" in out
    again = knn_eval.main(common(setup, setup / "knn2.json"))
    assert again["features_from_cache"] == {"train": True, "val": True} and again["per_k"] == record["per_k"]


def test_a_second_image_folder_is_never_served_the_first_ones_features(setup, tmp_path):
    """Same checkpoint, same cache directory, two ImageFolders of different content and size."""
    other = write_image_folder(tmp_path / "other", classes=2, per_class=40, seed=7)
    args = ["--ks", "5", "--k", "5", "--cache-dir", str(tmp_path / "cache")]
    first = knn_eval.main(common(setup, tmp_path / "a.json", *args))
    second = knn_eval.main(common(setup, tmp_path / "b.json", *args, "--data-root", str(other)))
    fresh = knn_eval.main(common(setup, tmp_path / "c.json", "--ks", "5", "--k", "5",
                                 "--cache-dir", str(tmp_path / "empty"), "--data-root", str(other)))  # fmt: skip
    assert first["num_train"] == 210 and second["num_train"] == fresh["num_train"] == 80
    assert second["features_from_cache"] == {"train": False, "val": False}
    assert second["per_k"] == fresh["per_k"]


def test_the_tools_classify_the_checkpoints_own_features(setup, tmp_path):
    """Colour classes are easy for any encoder, so accuracy cannot tell the wrong weights or pooling from
    the right ones; the features can. They must be the checkpoint's CLS tokens of the eval images,
    computed here without the tools, and unlike those of a random init or of mean pooling."""
    from sslvit.data import SSLDataModule

    cache = tmp_path / "cache"
    for extra in ([], ["--random-init"]):
        knn_eval.main(common(setup, tmp_path / "k.json", "--ks", "5", "--k", "5", "--precision", "fp32",
                             "--cache-dir", str(cache), *extra))  # fmt: skip
    stored = [torch.load(p, weights_only=True) for p in cache.rglob("*") if p.is_file()]
    val = [entry["features"] for entry in stored if len(entry["labels"]) == 105]  # the trained and the random
    model = MAE(
        **{
            k: v
            for k, v in torch.load(setup / "m.ckpt", weights_only=True)["hyper_parameters"].items()
            if not k.startswith("_")
        }
    )
    model.load_state_dict(torch.load(setup / "m.ckpt", weights_only=True)["state_dict"])
    data = SSLDataModule(dataset="imagefolder", root=str(setup / "images"), image_size=16, num_workers=0)
    images = torch.cat([x for x, _ in data.eval_dataloader("val", batch_size=105)])
    with torch.no_grad():
        expected, mean = model.backbone(images, pooling="cls"), model.backbone(images, pooling="mean")
    distance = sorted((features - expected).abs().max().item() for features in val)
    assert len(val) == 2 and distance[0] < 1e-5, "the tool encoded the checkpoint's CLS tokens"
    assert distance[1] > 0.1 and (expected - mean).abs().max() > 0.1, "random init and mean pooling differ"


def test_knn_tool_random_init_and_ivf(setup):
    trained = knn_eval.main(common(setup, setup / "t.json", "--ks", "5", "--k", "5"))
    random = knn_eval.main(common(setup, setup / "r.json", "--random-init", "--ks", "5", "--k", "5"))
    assert random["random_init"] and random["ks"] == [5] and trained["per_k"]["5"]["top1"] > 90
    assert random["features_from_cache"] == {"train": False, "val": False}, "other weights: not the cached features"
    again = knn_eval.main(common(setup, setup / "r.json", "--random-init", "--ks", "5", "--k", "5"))
    assert again["features_from_cache"]["train"], "--random-init is seeded, so its features are cached too"
    ivf = knn_eval.main(common(setup, setup / "ivf.json", "--index", "ivf", "--nprobe", "2"))
    assert ivf["index"] == "ivf" and 0 < ivf["recall"] <= 1 and ivf["nprobe"] == 2


def test_linear_tool_cached_and_protocol(setup, capsys):
    settings = ("--epochs", "30", "--warmup-epochs", "1", "--probe-batch-size", "32")
    fast = linear_probe.main(common(setup, setup / "lin.json", *settings))
    saved = json.loads((setup / "lin.json").read_text())
    assert saved == json.loads(json.dumps(fast))
    assert saved["path"] == "cached" and saved["top1"] > 90 and saved["top5"] == 100.0
    assert saved["selection"] == "held_out" and saved["per_lr_on"] == "held_out" and len(saved["per_lr"]) == 6
    assert saved["held_out"] == {
        "fraction": 0.1,
        "num_images": 21,
        "seed": 0,
        **saved["per_lr"][f"{saved['base_lr']:g}"],
    }
    assert saved["num_train"] == 210 and saved["optimizer"] == "lars" and saved["epochs"] == 30
    optimistic = linear_probe.main(common(setup, setup / "val.json", *settings, "--select-on-val"))
    assert optimistic["selection"] == "val" and "optimistic" in optimistic["selection_note"]
    assert optimistic["top1"] == max(v["top1"] for v in optimistic["per_lr"].values())
    slow = linear_probe.main(
        common(setup, setup / "proto.json", "--protocol", "--epochs", "1", "--probe-batch-size", "64", "--lrs", "1")
    )
    assert slow["path"] == "protocol" and slow["num_train"] == 210 and list(slow["per_lr"]) == ["1"]
    assert slow["selection"] == "single" and slow["features_from_cache"]["val"] is True, "val features from the cache"
    out = capsys.readouterr().out
    assert "held-out top-1" in out and "val (reported once)" in out and "optimistic" in out
    assert "augmented images" in out and "epoch 1: " in out


def test_low_shot_and_seeds(setup, capsys):
    knn = knn_eval.main(common(setup, setup / "few.json", "--shots", "4", "--seeds", "3"))
    assert knn["ks"] == [10] and knn["k"] == 10, "the default ks that fit a bank of 12 images"
    assert [r["train_subset"]["num_images"] for r in knn["per_seed"]] == [12, 12, 12] and knn["seeds"] == [0, 1, 2]
    top1 = [r["top1"] for r in knn["per_seed"]]
    assert knn["top1"] == pytest.approx(sum(top1) / 3) and knn["top1_std"] == pytest.approx(statistics.stdev(top1))
    probe = linear_probe.main(
        common(setup, setup / "frac.json", "--train-fraction", "0.1", "--epochs", "5", "--probe-batch-size", "8")
    )
    assert probe["num_train"] == 21 and probe["held_out"]["num_images"] == 3, "a tenth of a tenth, one per class"
    out = capsys.readouterr().out
    assert "bank: 4 per class (12 images, seed 2)" in out and "over 3 seeds: top-1" in out


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--checkpoint", "{root}/foreign.ckpt"], "hyper_parameters have no 'backbone'"),
        (["--checkpoint", "{root}/missing.ckpt"], "missing.ckpt does not exist"),
        (["--data-root", "{root}"], "has no train/ or val/ folder"),
        (["--ks", "500"], "k=500 is larger than the bank of 210 training features"),
        (["--pooling", "cls_last9"], "pooling='cls_last9' is not supported"),
    ],
)
def test_bad_inputs_are_one_clear_line(setup, capsys, extra, message):
    torch.save({"state_dict": {"encoder.w": torch.zeros(2)}, "hyper_parameters": {"lr": 0.1}}, setup / "foreign.ckpt")
    with pytest.raises(SystemExit) as exit_info:
        knn_eval.main(common(setup, setup / "x.json") + [arg.format(root=setup) for arg in extra])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and "Traceback" not in err, err


def test_runs_as_a_script(setup):
    args = common(setup, setup / "script.json", "--ks", "5", "--k", "5")
    out = subprocess.run([sys.executable, "tools/knn_eval.py", *args], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads((setup / "script.json").read_text())["k"] == 5 and "wrote" in out.stdout


def test_a_val_split_lacking_a_train_class_is_scored_by_class_name(setup, tmp_path, capsys):
    """Regression: val/ without one of train/'s classes shifted every later label by one (15% instead of ~80%)."""
    import shutil

    images = write_image_folder(tmp_path / "images", classes=3, per_class=30)
    shutil.rmtree(images / "val" / "class1")
    args = ["--checkpoint", str(setup / "m.ckpt"), "--data-root", str(images), "--num-workers", "0", "--no-cache"]
    with pytest.warns(UserWarning, match="no images of 1 of the train split's 3 classes"):
        knn = knn_eval.main([*args, "--k", "5", "--ks", "5"])
    assert knn["top1"] > 90 and knn["val_missing_classes"] == ["class1"], knn["top1"]
    assert "note: val has no images of 1 train class(es) (class1)" in capsys.readouterr().out
    probe = linear_probe.main([*args, "--epochs", "20", "--lrs", "1"])
    assert probe["top1"] > 90, probe["top1"]

"""benchmarks/rankme_vs_knn.py on three tiny checkpoints (plumbing: the numbers of tiny runs mean nothing), its
snapshots, and its RankMe against the online callback's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import TINY_CONFIGS, load_script
from sslvit.cli import run_cli
from sslvit.data import SSLDataModule
from sslvit.eval import OnlineRankMe
from sslvit.methods import load_method

bench = load_script("benchmarks/rankme_vs_knn.py")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("rankme")
    checkpoints = []
    for steps in (1, 2, 4):
        run = root / f"steps{steps}"
        run_cli(["fit", "--config", TINY_CONFIGS["mae"], "--trainer.max_steps", str(steps),
                 "--trainer.default_root_dir", str(run)])  # fmt: skip
        checkpoints.append(str(run / "checkpoints" / "last.ckpt"))
    return checkpoints


def test_rankme_and_knn_of_each_checkpoint_and_their_correlation(runs, tmp_path):
    checkpoints = runs  # on the offline digits (1,497 train, 300 val images), where kNN differs between them
    common = ["--num-workers", "0", "--num-images", "20", "--cache-dir", str(tmp_path / "cache")]
    record = bench.main(["--checkpoints", *checkpoints, *common, "--output", str(tmp_path / "r.json")])
    assert json.loads((tmp_path / "r.json").read_text())["checkpoints"] == record["checkpoints"]
    rows = record["checkpoints"]
    assert [r["global_step"] for r in rows] == [1, 2, 4] and {r["method"] for r in rows} == {"sslvit.methods.MAE"}
    for row in rows:
        assert 0 <= row["knn_top1"] <= 100 and row["rankme_images"] == 20 and row["feature_dim"] == 32
        assert 1 <= row["rankme"] <= 20.01 and row["rankme_normalized"] == pytest.approx(row["rankme"] / 20)
    assert -1 <= record["spearman"] <= 1
    assert record["spearman_per_method"] == {"sslvit.methods.MAE": record["spearman"]}
    # The RankMe of the online callback on the same 20 train images of the same weights (MAE's native = CLS).
    model, info = load_method(checkpoints[-1])
    data = SSLDataModule(dataset="digits", image_size=info.image_size, num_workers=0)
    online = OnlineRankMe(num_images=20, split="train", seed=0).evaluate(model, data)
    assert rows[-1]["rankme"] == pytest.approx(online["rank"], rel=1e-5)
    # The same weights as curve snapshots of the last run's method give the same numbers (features from the cache:
    # the key is the weights' content, so a snapshot loaded wrong would be encoded anew, and differ).
    snapshots = []
    for i, checkpoint in enumerate(checkpoints):
        ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
        snapshots.append(tmp_path / f"{i:02d}.pt")
        torch.save({"state_dict": ckpt["state_dict"], "step": ckpt["global_step"], "minutes": 0.1 * i}, snapshots[-1])
    curve = bench.main(["--snapshots-of", checkpoints[-1], "--checkpoints", *map(str, snapshots), *common])
    for row, again in zip(rows, curve["checkpoints"], strict=True):
        assert again["global_step"] == row["global_step"] and "minutes" in again
        assert (again["knn_top1"], again["rankme"]) == (row["knn_top1"], row["rankme"])
        assert again["features_from_cache"] == {"train": True, "val": True}


def test_spearman_over_rows():
    def rows(knn, rank):
        return [{"knn_top1": a, "rankme": b} for a, b in zip(knn, rank, strict=True)]

    assert bench.spearman(rows([10, 20, 30], [1.0, 5.0, 3.0])) == pytest.approx(0.5)
    assert bench.spearman(rows([10, 20, 30], [9.0, 5.0, 3.0])) == pytest.approx(-1.0)
    assert bench.spearman(rows([10, 10, 30], [1.0, 2.0, 3.0])) == pytest.approx(0.866025, rel=1e-5), "ties: mean rank"
    assert bench.spearman(rows([10, 20, 30], [2.0, 2.0, 2.0])) is None and bench.spearman(rows([1], [1])) is None


def test_runs_give_their_curve_snapshots_or_last_checkpoint_and_a_page(runs, tmp_path, capsys):
    """``--runs``: a run with curve snapshots contributes them (of its last.ckpt's method), one without its
    last.ckpt; Spearman per run; the record is a page tables.py writes; a folder that is no run: one line."""
    common = ["--num-workers", "0", "--num-images", "20", "--cache-dir", str(tmp_path / "cache")]
    direct = bench.main(["--checkpoints", *runs, *common])["checkpoints"]
    curve_run = tmp_path / "curve-run"
    (curve_run / "checkpoints").mkdir(parents=True)
    (curve_run / "snapshots").mkdir()
    (curve_run / "checkpoints" / "last.ckpt").write_bytes(Path(runs[-1]).read_bytes())
    for i, checkpoint in enumerate(runs, start=1):
        ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
        snapshot = {"state_dict": ckpt["state_dict"], "step": ckpt["global_step"], "images_seen": 8 * i}
        torch.save(snapshot, curve_run / "snapshots" / f"{i:02d}.pt")
    plain_run = str(Path(runs[0]).parents[1])
    record = bench.main(["--runs", plain_run, str(curve_run), *common, "--note", "made by a test"])
    rows = record["checkpoints"]
    assert [(r["run"], r["global_step"]) for r in rows] == [(plain_run, 1)] + [(str(curve_run), s) for s in (1, 2, 4)]
    assert rows[0]["checkpoint"].endswith("last.ckpt") and rows[1]["checkpoint"].endswith("01.pt")
    for row, again in zip(direct, rows[1:], strict=True):  # the snapshots are the same weights: the same numbers
        assert (again["knn_top1"], again["rankme"]) == (row["knn_top1"], row["rankme"])
    assert record["spearman_per_run"] == {plain_run: None, str(curve_run): bench.spearman(rows[1:])}
    tables = load_script("benchmarks/tables.py")
    page = tables.page_markdown(record, "rankme_vs_knn")
    assert "## Spearman correlation of RankMe with kNN top-1" in page and "run `curve-run`" in page
    assert "made by a test" in page and "--runs" in page and page.count("| curve-run | MAE |") == 3
    assert "--note" not in record["tables"][0]["commands"][0] and "--note" in record["command"]
    with pytest.raises(SystemExit):
        bench.main(["--runs", str(tmp_path), *common])
    assert f"--runs {tmp_path}: no {tmp_path}/checkpoints/last.ckpt" in capsys.readouterr().err


def test_a_class_balanced_bank_and_rankme_on_its_own_seeded_images(runs, tmp_path):
    """--bank-images/--query-images: kNN against the tools' kNN on the same class-balanced subsets; RankMe still
    reads OnlineRankMe's seeded images of the whole split (not the labelled bank)."""
    from sslvit.data import class_balanced_subset
    from sslvit.eval import FeatureCache, KNNClassifier, dataset_features
    from sslvit.eval.features import dataset_targets

    common = ["--num-workers", "0", "--num-images", "20", "--cache-dir", str(tmp_path / "cache")]
    full = bench.main(["--checkpoints", runs[-1], *common])["checkpoints"][0]
    record = bench.main(["--checkpoints", runs[-1], *common, "--bank-images", "100", "--query-images", "50"])
    row = record["checkpoints"][0]
    assert row["rankme"] == full["rankme"] and row["rankme_images"] == 20, "the same 20 seeded images"
    model, info = load_method(runs[-1])
    data = SSLDataModule(dataset="digits", image_size=info.image_size, num_workers=0)
    picked = {
        split: class_balanced_subset(dataset_targets(data.build_dataset(split, None)), size, seed=0)
        for split, size in (("train", 100), ("val", 50))
    }
    cache = FeatureCache(tmp_path / "cache")
    bank, queries = (dataset_features(model, data, s, "native", cache=cache, indices=picked[s]) for s in picked)
    assert len(bank) == 100 and len(queries) == 50 and len(set(bank.labels.tolist())) == 10
    knn = KNNClassifier(ks=(20,), k=20, temperature=0.07).fit(bank.features, bank.labels)
    assert row["knn_top1"] == knn.evaluate(queries.features, queries.labels).top1
    assert "a class-balanced 100-image train subset as the bank" in record["tables"][0]["about"]

"""benchmarks/: train_step.py's FLOP count is the model's, configs side by side, its loader makes training batches,
compiled variants really compile; step_memory.py: memory per image from fresh processes; extraction.py compares
the same features."""

import json
import subprocess
import sys

import pytest

from conftest import REPO, TINY_CONFIGS, load_script

CONFIG = TINY_CONFIGS["mae"]


def benchmark(tmp_path, *args: str, script: str = "train_step.py", configs: tuple[str, ...] = (CONFIG,)) -> dict:
    out = tmp_path / "bench.json"
    command = [sys.executable, str(REPO / "benchmarks" / script), *(f"--config={c}" for c in configs), "--device",
               "cpu", "--json", str(out), *args]  # fmt: skip
    subprocess.run(command, check=True, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    return json.loads(out.read_text())


def mae_step_flops(width: int, depth: int, patches: int, kept: int, patch_values: int, dec_width: int, dec_depth: int):
    """Multiply-add FLOPs (x2) of one MAE training step for one image, counted by hand from the architecture.

    Linear layers cost 2*n*in*out forward and twice that backward (input and weight gradients), except
    the patch projection, whose input (the image) needs no gradient; attention costs 4*T*T*D forward and
    2.5 times that backward (torch's formula: the scores are recomputed). The encoder sees the kept
    patches and the CLS token only; the decoder sees every position.
    """

    def linear(n, i, o):
        return 2 * n * i * o

    def blocks(tokens, dim, count):
        mlp = linear(tokens, dim, 3 * dim) + linear(tokens, dim, dim) + linear(tokens, dim, 4 * dim)
        return count * (mlp + linear(tokens, 4 * dim, dim)), count * 4 * tokens * tokens * dim

    patch_embed = linear(kept, patch_values, width)
    enc_linear, enc_attention = blocks(kept + 1, width, depth)
    dec_linear, dec_attention = blocks(patches + 1, dec_width, dec_depth)
    heads = linear(kept + 1, width, dec_width) + linear(patches + 1, dec_width, patch_values)
    linears = enc_linear + dec_linear + heads
    attention = enc_attention + dec_attention
    return 2 * patch_embed + 3 * linears + 3.5 * attention


def test_step_flops_are_those_of_the_architecture(tmp_path):
    result = benchmark(tmp_path, "--steps", "2", "--warmup", "1")
    # mae_tiny.yaml: 16 px images, 4 px patches (16 patches, 4 kept at mask ratio 0.75), width 32, one
    # block, decoder 16 wide with one block; a patch holds 4*4*3 values
    expected = mae_step_flops(width=32, depth=1, patches=16, kept=4, patch_values=48, dec_width=16, dec_depth=1)
    assert result["gflop_per_image"] * 1e9 == pytest.approx(expected, rel=1e-9)
    assert result["batch_size"] == 16 and result["method"] == "MAE" and result["rows"]["sslvit"]["images_per_s"] > 0


def test_configs_side_by_side_each_with_its_own_settings(tmp_path):
    cpc = f"{TINY_CONFIGS['cpc']} --data.batch_size=4"  # a setting for this config alone
    result = benchmark(tmp_path, "--steps", "2", "--warmup", "1", configs=(CONFIG, cpc))
    mae, cpc = result["rows"]["configs/mae_tiny"], result["rows"]["configs/cpc_tiny data.batch_size=4"]
    assert (mae["method"], mae["batch_size"], cpc["method"], cpc["batch_size"]) == ("MAE", 16, "CPC", 4)
    assert cpc["gflop_per_image"] > 10 * mae["gflop_per_image"]  # 49 patch sequences per image, 4 directions
    for row in (mae, cpc):
        assert row["gflops"] == pytest.approx(row["gflop_per_image"] * row["images_per_s"])
    assert cpc["gflops_ratio"] == pytest.approx(cpc["gflops"] / mae["gflops"])
    assert cpc["speedup"] == pytest.approx(cpc["images_per_s"] / mae["images_per_s"])


def test_memory_per_image_is_the_slope_of_fresh_processes_peaks(tmp_path):
    result = benchmark(tmp_path, "--batch-sizes", "2", "64", "--budget-gb", "4", script="step_memory.py",
                       configs=(TINY_CONFIGS["cpc"],))  # fmt: skip
    row = result["rows"]["configs/cpc_tiny"]
    small, large = row["points"]
    assert (small["batch_size"], large["batch_size"], small["method"]) == (2, 64, "CPC")
    assert large["peak_bytes"] > small["peak_bytes"] > small["before_steps_bytes"] > 0  # a step's activations
    assert row["bytes_per_image"] == pytest.approx((large["peak_bytes"] - small["peak_bytes"]) / 62)
    assert row["fixed_bytes"] == pytest.approx(small["peak_bytes"] - 2 * row["bytes_per_image"])
    assert row["batch_in_budget"] == int((4e9 - row["fixed_bytes"]) // row["bytes_per_image"])


def test_loader_benchmark_makes_training_batches_on_the_device(tmp_path):
    result = benchmark(tmp_path, "--loader", "--steps", "4", "--", "--data.on_device=true")
    assert result["on_device"] is True and result["num_workers"] == 0
    assert result["image_shape"] == [16, 3, 16, 16], "crops of the configured size, a whole batch"


@pytest.mark.slow  # inductor compiles C++ kernels
def test_compiled_variant_really_runs_compiled_graphs(tmp_path):
    result = benchmark(tmp_path, "--steps", "2", "--warmup", "1", "--compile", "model")
    assert result["rows"]["sslvit"]["compiled_graphs"] >= 1


def test_extraction_benchmark_compares_the_same_features():
    record = load_script("benchmarks/extraction.py").main(
        ["--images", "48", "--batch-size", "16", "--rounds", "1", "--warmup", "0", "--num-workers", "0"]
    )
    rows = record["rows"]
    assert rows["before"]["speedup_vs_before"] == 1.0 and record["images"] == 48 and record["gflop_per_image"] > 0
    for name in ("sslvit-fp32", "timm-fp32", "sslvit-model-fp32", "timm-model-fp32"):
        assert rows[name]["max_abs_difference"] < 1e-4, name  # fp32: the same features, whatever the loop
    assert rows["sslvit"]["min_cosine"] > 0.999 and rows["timm"]["images_per_s"] > 0


def test_knn_scale_benchmark_classifies_its_synthetic_bank():
    record = load_script("benchmarks/knn_scale.py").main(["--bank", "3000", "--dim", "32", "--queries", "200",
                                                          "--classes", "5"])  # fmt: skip
    assert record["top1"] > 90, "well-separated Gaussian classes: a working kNN is near 100%"
    assert record["peak_gib_after_knn"] >= record["peak_gib_after_bank"] > 0 and record["bank_gib"] > 0


def test_results_table_pipeline_trains_evaluates_and_tabulates(tmp_path):
    """benchmarks/results.py end to end for one row (CPC with its short-budget settings, shrunk to one
    32-wide block): pretraining on the clock, kNN and linear probe through the tools, the random
    baseline, the curve, the JSON the issue asks for and the table's margins."""
    from conftest import write_image_folder

    results = load_script("benchmarks/results.py")
    data = write_image_folder(tmp_path / "images", classes=2, per_class=12, size=32)  # a colour per class
    tiny = ["--model.init_args.backbone.embed_dim", "32", "--model.init_args.backbone.depth", "1",
            "--model.init_args.backbone.num_heads", "2", "--model.init_args.context_dim", "32",
            "--model.init_args.context_heads", "2", "--model.init_args.context_depth", "1",
            "--data.batch_size", "8", "--data.num_workers", "0", "--trainer.enable_progress_bar", "false"]  # fmt: skip
    out, runs = tmp_path / "out", tmp_path / "runs"
    results.main(["--data-root", str(data), "--minutes", "0.05", "--finetune-minutes", "0", "--methods", "cpc",
                  "--run-dir", str(runs), "--out", str(out), "--", *tiny])  # fmt: skip
    record = json.loads((out / "cpc.json").read_text())
    for key in ("method", "minutes", "images_seen", "knn_top1", "linear_top1", "finetune_top1", "machine", "command"):
        assert key in record
    trained = json.loads((runs / "cpc" / "trained.json").read_text())
    # images seen count the run's batch (8), not the config's (128)
    assert trained["batch"] == 8 and record["images_seen"] == 8 * trained["steps"] > 0
    assert record["method"] == "cpc" and record["finetune_top1"] is None and record["features"] == "native"
    # Each class is one colour: trained or random, the patch-grid features separate them.
    assert record["knn_top1"] >= 90 and record["random_init"]["knn_top1"] >= 90
    assert 0 <= record["linear_top1"] <= 100 and 0 <= record["random_init"]["linear_top1"] <= 100
    assert all(setting in record["pretrain_command"] for setting in results.BUDGET_SETTINGS["cpc"][::2])
    seen = [point["images_seen"] for point in record["curve"]]
    assert seen and seen == sorted(seen) and all(point["knn_top1"] >= 90 for point in record["curve"])
    table = (out / "results.md").read_text()
    margin = f"{record['knn_top1'] - record['random_init']['knn_top1']:+.2f} / "
    margin += f"{record['linear_top1'] - record['random_init']['linear_top1']:+.2f}"
    row = next(line for line in table.splitlines() if line.startswith("| cpc |"))
    assert row.endswith(f"| {margin} |") and f"| {record['images_seen']:,} |" in row
    assert (runs / "curves.png").stat().st_size > 0


def test_screen_settings_scores_trained_and_random_on_train_images_only(tmp_path):
    from conftest import write_image_folder

    screen = load_script("benchmarks/screen_settings.py")
    data = write_image_folder(tmp_path / "images", classes=2, per_class=20, size=16)  # a colour per class
    for image in (data / "val").rglob("*.png"):
        image.write_bytes(b"not an image")  # the screen never reads val: an unreadable image there changes nothing
    args = ["--config", TINY_CONFIGS["cpc"], "--data-root", str(data), "--minutes", "0.05", "--name", "narrow",
            "--run-dir", str(tmp_path / "runs"), "--bank", "24", "--queries", "10", "--",
            "--trainer.enable_progress_bar", "false"]  # fmt: skip
    first = screen.main(args)
    assert first["steps"] > 0 and first["name"] == "narrow"
    for encoder in ("trained", "random"):
        assert first[f"{encoder}_native_knn"] >= 90 and first[f"{encoder}_native_linear"] >= 90
    checkpoint = tmp_path / "runs" / "narrow" / "checkpoints" / "last.ckpt"
    mtime = checkpoint.stat().st_mtime_ns
    again = screen.main(args)  # evaluated again, not retrained: the same numbers
    assert checkpoint.stat().st_mtime_ns == mtime and again == first
    assert len((tmp_path / "runs" / "screen.jsonl").read_text().splitlines()) == 2
    with pytest.raises(SystemExit):  # another setting under the same name: refused, not scored as this one
        screen.main([*args, "--model.init_args.prediction_steps", "1"])
    assert len((tmp_path / "runs" / "screen.jsonl").read_text().splitlines()) == 2


def test_mae_vs_official_summary_pairs_each_variant_with_the_first_by_seed(capsys):
    summarize = load_script("benchmarks/mae_vs_official.py").summarize
    runs = [{"variant": v, "seed": s, "knn_top1": top1} for v, s, top1 in
            [("reference", 0, 40.0), ("reference", 1, 38.0), ("reference", 2, 39.0),
             ("sslvit", 0, 39.0), ("sslvit", 1, 37.0), ("sslvit", 2, 38.0), ("sslvit", 3, 50.0)]]  # fmt: skip
    summary = summarize(runs, ["reference", "sslvit", "official"])
    assert summary["reference"]["knn_top1"]["mean"] == 39.0 and "official" not in summary
    diff = summary["sslvit"]["minus_reference"]
    assert diff["values"] == [-1.0, -1.0, -1.0] and diff["low"] == diff["high"] == -1.0, "paired over seeds 0-2"
    assert "-1.00 (95% CI -1.00 to -1.00)" in capsys.readouterr().out

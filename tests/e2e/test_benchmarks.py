"""benchmarks/: the numbers train_step.py reports are consistent, compiled variants really compile, and
extraction.py compares the same features."""

import json
import subprocess
import sys

import pytest

from conftest import REPO, TINY_CONFIGS, load_script

CONFIG = TINY_CONFIGS["mae"]


def benchmark(tmp_path, *args: str) -> dict:
    out = tmp_path / "bench.json"
    command = [sys.executable, str(REPO / "benchmarks" / "train_step.py"), "--config", CONFIG, "--device", "cpu",
               "--json", str(out), *args]  # fmt: skip
    subprocess.run(command, check=True, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    return json.loads(out.read_text())


def test_step_benchmark_reports_consistent_rates(tmp_path):
    result = benchmark(tmp_path, "--steps", "3", "--warmup", "1")
    row = result["rows"]["sslvit"]
    assert result["batch_size"] == 16 and result["method"] == "MAE" and result["gflop_per_image"] > 0
    assert row["ms_per_step"] == pytest.approx(1e3 * 16 / row["images_per_s"])
    assert row["gflops"] == pytest.approx(row["gflop_per_image"] * row["images_per_s"])
    assert "compiled_graphs" not in row


def test_loader_benchmark_makes_the_crops_of_a_device_resident_dataset(tmp_path):
    result = benchmark(tmp_path, "--loader", "--steps", "4", "--", "--data.on_device=true")
    assert result["on_device"] is True and result["num_workers"] == 0 and result["loader_images_per_s"] > 0


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

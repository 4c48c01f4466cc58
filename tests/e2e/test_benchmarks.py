"""benchmarks/train_step.py: the numbers it reports are consistent, and compiled variants really compile."""

import json
import subprocess
import sys

import pytest

from conftest import REPO, TINY_CONFIGS

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

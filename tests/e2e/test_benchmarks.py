"""benchmarks/: train_step.py's FLOP count is the model's, its loader makes training batches, compiled variants
really compile, and extraction.py compares the same features."""

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

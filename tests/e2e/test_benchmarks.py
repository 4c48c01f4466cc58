"""benchmarks/: train_step.py's FLOP count is the model's, configs side by side, its loader makes training batches,
compiled variants really compile; step_memory.py: memory per image from fresh processes; extraction.py compares
the same features; the harness trains on a FLOP budget and evaluates as the tools do; results.py, screen_settings.py
and mae_vs_official.py on it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, TINY_CONFIGS, load_script
from sslvit.errors import ConfigError

CONFIG = TINY_CONFIGS["mae"]


def benchmark(tmp_path, *args: str, script: str = "train_step.py", configs: tuple[str, ...] = (CONFIG,)) -> dict:
    out = tmp_path / "bench.json"
    command = [sys.executable, str(REPO / "benchmarks" / script), *(f"--config={c}" for c in configs), "--device",
               "cpu", "--output", str(out), *args]  # fmt: skip
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


# ---- the harness, and the scripts on it -----------------------------------------------------------
MAE_TINY_STEP = 16 * mae_step_flops(width=32, depth=1, patches=16, kept=4, patch_values=48, dec_width=16, dec_depth=1)
IDLE = '{"class_path": "faults.IdleAroundTraining", "init_args": {"seconds": 1.0}}'  # before and after training


@pytest.fixture(scope="module")
def colour_run(tmp_path_factory):
    """A tiny MAE (tests/configs/mae_tiny.yaml, batch 16) trained by the harness for 2.5 steps' FLOPs on 24
    colour-class images, with a second of idling before and after training; and how long fit() took."""
    import time

    from conftest import write_image_folder
    from harness import RunBudget, fit

    root = tmp_path_factory.mktemp("harness")
    data = write_image_folder(root / "images", classes=2, per_class=12, size=16)
    budget = RunBudget(petaflops=2.5 * MAE_TINY_STEP / 1e15)
    start = time.monotonic()
    idle = ["--trainer.callbacks+", IDLE]
    trained = fit(TINY_CONFIGS["mae"], root / "run", budget, seed=0, overrides=idle, data_root=str(data))
    return {"trained": trained, "data": data, "budget": budget, "wall": time.monotonic() - start, "root": root}


def test_harness_trains_the_steps_a_flop_budget_buys_and_times_training_alone(colour_run):
    from harness import RunBudget, Trained, fit

    trained = colour_run["trained"]
    assert trained.flops_per_step == MAE_TINY_STEP, "the FlopBudget's count: torch's, equal to the hand count"
    assert trained.steps == 3, "ceil(2.5 steps of FLOPs)"
    assert (trained.images_seen, trained.petaflops) == (48, pytest.approx(3 * MAE_TINY_STEP / 1e15))
    assert 0 < trained.train_seconds < colour_run["wall"] - 2.0, "the idle seconds before and after are not training"
    assert Trained.read(colour_run["root"] / "run" / "trained.json") == trained
    # Done: read again, not retrained; under another budget: refused, never reported as this one.
    checkpoint = Path(trained.checkpoint)
    mtime = checkpoint.stat().st_mtime_ns
    config, overrides, data = trained.setting["config"], trained.setting["overrides"], trained.setting["data_root"]
    run = colour_run["root"] / "run"
    again = fit(config, run, colour_run["budget"], 0, overrides, data_root=data)
    assert again == trained and checkpoint.stat().st_mtime_ns == mtime
    with pytest.raises(ConfigError, match="was trained with"):
        fit(config, run, RunBudget(steps=5), 0, overrides, data_root=data)


def test_harness_keys_a_run_by_its_config_content_and_claims_it_before_training(tmp_path):
    """A finished run is not reused after its config file was edited (same path, other content); a stopped run
    resumes only with the setting it started with; a start that fails before training claims nothing."""
    from conftest import write_image_folder
    from harness import RunBudget, file_sha256, fit

    data = str(write_image_folder(tmp_path / "images", classes=2, per_class=8, size=16))
    config, run, one_step = tmp_path / "mae.yaml", tmp_path / "run", RunBudget(steps=1)
    config.write_text(Path(TINY_CONFIGS["mae"]).read_text())
    with pytest.raises((SystemExit, ConfigError)):
        fit(str(config), run, one_step, overrides=["--model.init_args.no_such_setting", "1"], data_root=data)
    assert not run.exists(), "a failed start leaves no claim, so the corrected setting can use the folder"
    trained = fit(str(config), run, one_step, data_root=data)
    assert trained.steps == 1 and trained.setting["config_sha256"] == file_sha256(config)
    assert fit(str(config), run, one_step, data_root=data) == trained, "the same file: reused"
    config.write_text(config.read_text().replace("base_lr: 1.0e-3", "base_lr: 3.0e-3"))  # the weights still fit
    assert "base_lr: 3.0e-3" in config.read_text()
    with pytest.raises(ConfigError, match="was trained with"):
        fit(str(config), run, one_step, data_root=data)
    stopped = tmp_path / "stopped"  # started with the old config, stopped before it finished
    stopped.mkdir()
    (stopped / "setting.json").write_text((run / "setting.json").read_text())
    with pytest.raises(ConfigError, match="was started with"):
        fit(str(config), stopped, one_step, data_root=data)


def test_the_reference_loop_is_reused_only_for_the_setting_it_trained(tmp_path, monkeypatch, capsys):
    """mae_vs_official.py's reference variant (a script of its own, run in a process): its checkpoint is reused for
    the same steps, seed, subset and script content, and another setting in its folder is refused; a run that
    failed before saving a checkpoint claims nothing."""
    script = load_script("benchmarks/mae_vs_official.py")
    reference = tmp_path / "reference_loop.py"
    reference.write_text("# a reference loop\n")
    calls = []

    def run(command, **kwargs):
        calls.append(command)
        if "--fail" in reference.read_text():
            raise subprocess.CalledProcessError(1, command)
        Path(command[command.index("--save") + 1]).write_bytes(b"weights")

    monkeypatch.setattr(script.subprocess, "run", run)
    flags = ["--data-root", "data", "--mae-repo", "mae", "--reference-script", str(reference), "--steps", "5"]
    run_dir = tmp_path / "reference-seed0"
    args = script.build_parser().parse_args(flags)
    assert script.pretrain(args, "reference", 0, run_dir) == str(run_dir / "mae.pth") and len(calls) == 1
    assert script.pretrain(args, "reference", 0, run_dir) == str(run_dir / "mae.pth") and len(calls) == 1, "reused"
    for other in (["--steps", "6"], ["--train-images", "500"]):
        with pytest.raises(ConfigError, match="was started with"):
            script.pretrain(script.build_parser().parse_args([*flags, *other]), "reference", 0, run_dir)
    reference.write_text("# a reference loop, edited\n")
    with pytest.raises(ConfigError, match="was started with"):
        script.pretrain(args, "reference", 0, run_dir)
    reference.write_text("--fail\n")
    with pytest.raises(subprocess.CalledProcessError):
        script.pretrain(args, "reference", 0, tmp_path / "failed")
    assert not (tmp_path / "failed").exists(), "a failed start claims nothing"


def test_frozen_evaluation_prints_what_the_tools_print(colour_run, tmp_path, monkeypatch):
    """The encoder and its random twin, kNN and linear probe on val: the numbers of tools/knn_eval.py and
    tools/linear_probe.py for the same checkpoint, bank and seed (trained need not win at this scale)."""
    from harness import frozen_evaluation

    monkeypatch.setenv("SSLVIT_CACHE", str(tmp_path / "cache"))
    checkpoint, data = colour_run["trained"].checkpoint, str(colour_run["data"])
    both = frozen_evaluation(checkpoint, data, seed=3)
    for encoder, result in both.items():
        flags = ["--checkpoint", checkpoint, "--data-root", data, "--seed", "3", "--no-cache"]
        flags += ["--random-init"] if encoder == "random" else []
        knn = load_script("tools/knn_eval.py").main(flags)
        linear = load_script("tools/linear_probe.py").main(flags)
        assert (result["knn_top1"], result["knn_top5"]) == (knn["top1"], knn["top5"]), encoder
        assert (result["linear_top1"], result["linear_base_lr"]) == (linear["top1"], linear["base_lr"]), encoder
        assert (result["num_bank"], result["num_queries"], result["features"]) == (24, 12, "cls")
        assert result["tool_commands"][0].endswith("--seed 3" + " --random-init" * (encoder == "random"))
    assert both["trained"]["knn_top1"] >= 90 and both["random"]["knn_top1"] >= 90, "a colour per class"


def test_screening_on_held_out_train_images_never_reads_val(colour_run, tmp_path, monkeypatch):
    import shutil

    from harness import EvalSplit, evaluate_encoder

    monkeypatch.setenv("SSLVIT_CACHE", str(tmp_path / "cache"))
    data = shutil.copytree(colour_run["data"], tmp_path / "images")
    for image in (data / "val").rglob("*.png"):
        image.write_bytes(b"not an image")  # an unreadable val changes nothing
    split = EvalSplit("held-out", train_images=20, held_out_fraction=0.25, seed=1)
    result = evaluate_encoder(colour_run["trained"].checkpoint, str(data), split)
    assert (result["num_bank"], result["num_queries"]) == (14, 6), "ceil(25% of 10) = 3 of each class held out"
    assert result["knn_top1"] >= 90 and "tool_commands" not in result


def test_results_records_each_seed_resumes_and_tabulates(tmp_path, monkeypatch, capsys):
    """benchmarks/results.py end to end for the MAE row shrunk to one 32-wide block, 2 seeds, a FLOP budget,
    fine-tuning and the curve: a record per seed, a rerun that trains nothing, the table from the records."""
    import yaml

    from conftest import write_image_folder

    monkeypatch.setenv("SSLVIT_CACHE", str(tmp_path / "cache"))
    results = load_script("benchmarks/results.py")
    data = write_image_folder(tmp_path / "images", classes=2, per_class=12, size=32)  # a colour per class
    recipe = yaml.safe_load((REPO / results.FINETUNE_CONFIG).read_text())
    recipe["data"].update(batch_size=8, num_workers=0)
    recipe["trainer"].update(enable_progress_bar=False, enable_model_summary=False)
    (tmp_path / "finetune.yaml").write_text(yaml.safe_dump(recipe))
    tiny = ["--model.init_args.backbone.embed_dim", "32", "--model.init_args.backbone.depth", "1",
            "--model.init_args.backbone.num_heads", "2", "--model.init_args.decoder_embed_dim", "16",
            "--model.init_args.decoder_depth", "1", "--model.init_args.decoder_num_heads", "2",
            "--data.batch_size", "8", "--data.num_workers", "0", "--trainer.enable_progress_bar", "false"]  # fmt: skip
    out, runs = tmp_path / "out", tmp_path / "runs"
    argv = ["--data-root", str(data), "--petaflops", "1e-7", "--seeds", "0", "1", "--methods", "mae",
            "--finetune-petaflops", "1e-7", "--finetune-config", str(tmp_path / "finetune.yaml"), "--curve",
            "--run-dir", str(runs), "--output", str(out), "--", *tiny]  # fmt: skip
    results.main(argv)
    records = [json.loads((out / f"mae-seed{seed}.json").read_text()) for seed in (0, 1)]
    for seed, record in enumerate(records):
        assert record["seed"] == seed and record["method"] == "mae"
        assert record["steps"] == -(-1e8 // record["flops_per_step"]) > 1, "ceil(budget / step FLOPs)"
        assert record["images_seen"] == 8 * record["steps"] and record["petaflops"] >= 1e-7
        assert record["train_seconds"] > 0 and record["budget"]["petaflops"] == 1e-7
        for encoder in (record, record["random_init"]):
            assert encoder["knn_top1"] >= 90 and 0 <= encoder["linear_top1"] <= 100
            assert 0 <= encoder["finetune_top1"] <= 100 and encoder["features"] == "cls"
        assert all(setting in record["pretrain_command"] for setting in tiny[::2])
        assert [p["step"] for p in record["curve"]] == sorted(p["step"] for p in record["curve"])
        assert record["curve"][-1]["step"] == record["steps"]
    assert records[0]["steps"] == records[1]["steps"], "the same budget, the same steps, whatever the seed"
    assert records[0]["invocation"].endswith(f"--curve --run-dir {runs} --output {out} -- {' '.join(tiny)}")
    assert records[0]["random_init"]["finetune_command"] != records[1]["random_init"]["finetune_command"]
    assert len(list((runs / "finetune-random").glob("*.json"))) == 2, "one random twin fine-tuned per seed"
    # Rerun: every record is skipped, nothing is trained or rewritten.
    times = {p: p.stat().st_mtime_ns for p in [*out.glob("*.json"), *runs.rglob("*.ckpt")]}
    results.main(argv)
    assert {p: p.stat().st_mtime_ns for p in times} == times
    table = (out / "results.md").read_text()
    knn = [r["knn_top1"] for r in records]
    assert f"| mae | 0 | {records[0]['steps']} | {records[0]['images_seen']:,} |" in table
    assert f"{sum(knn) / 2:.2f} ± {abs(knn[0] - knn[1]) / 2**0.5:.2f}" in table
    assert (runs / "curves.png").stat().st_size > 0
    # The recipe edited under the same name: fine-tuned again (a new run), the pretraining reused as it is.
    pretrained = {p: p.stat().st_mtime_ns for p in runs.glob("mae-seed*/checkpoints/*.ckpt")}
    recipe_file = tmp_path / "finetune.yaml"
    recipe_file.write_text(recipe_file.read_text() + "# edited\n")
    results.main(argv)
    again = [json.loads((out / f"mae-seed{seed}.json").read_text()) for seed in (0, 1)]
    assert all(a["finetune_config_sha256"] != r["finetune_config_sha256"] for a, r in zip(again, records, strict=True))
    assert {p: p.stat().st_mtime_ns for p in pretrained} == pretrained
    assert (
        len(list(runs.glob("mae-seed0/finetune-*/"))) == 2 and len(list((runs / "finetune-random").glob("*.json"))) == 4
    )
    # A seed at another budget into the same folder is refused before anything trains: a table is one setting.
    before = sorted(runs.rglob("*"))
    other = [*argv[:3], "2e-7", "--seeds", "2", *argv[argv.index("--methods") :]]
    with pytest.raises(SystemExit):
        results.main(other)
    assert "differ in pretraining budget" in capsys.readouterr().err and sorted(runs.rglob("*")) == before


def test_results_table_spread_and_paired_intervals_by_hand(tmp_path):
    """--table from records alone: mean ± sample std (a metric on fewer seeds than its row names them), and
    differences paired by seed with Student's t interval."""
    results = load_script("benchmarks/results.py")
    rows = {"mae": ([40.0, 42.0, 44.0], [30.0, 31.0, 35.0]), "official-mae": ([39.0, 41.0, 40.0], [30.0, 30.0, 30.0])}
    for method, (knn, twin) in rows.items():
        for seed in range(3):
            record = {
                **{"method": method, "seed": seed, "steps": 10, "images_seen": 1280, "petaflops": 0.1},
                **{"train_seconds": 60.0, "images_per_s": 21.3, "date": "2026-12-07"},
                "machine": "m (1 torch thread)" if (method, seed) == ("mae", 2) else "m (2 torch threads)",
                **{"knn_top1": knn[seed], "linear_top1": None},
                "finetune_top1": 45.0 if (method, seed) == ("mae", 0) else None,  # fine-tuned on one seed alone
                "random_init": {"knn_top1": twin[seed]},
                "invocation": "python benchmarks/results.py ...",
                "curve": [
                    {"petaflops": 0.05, "knn_top1": knn[seed] - 10},
                    {"petaflops": 0.1, "knn_top1": knn[seed] - 5 * seed},
                ]
                if method == "mae"
                else [],
            }
            (tmp_path / f"{method}-seed{seed}.json").write_text(json.dumps(record))
    (tmp_path / "mae.json").write_text(json.dumps({"method": "mae", "knn_top1": 99.0}))  # an older record: not read
    results.main(["--table", "--output", str(tmp_path), "--run-dir", str(tmp_path / "runs")])
    lines = (tmp_path / "results.md").read_text().splitlines()
    mae = next(line for line in lines if line.startswith("| mae | 3 |"))
    assert "| 42.00 ± 2.00 | – | 45.00 (1 seed: 0) |" in mae, "mean 42, sample std 2; one seed's says so"
    twin = next(line for line in lines if line.startswith("| random twin of mae |"))
    assert "| 32.00 ± 2.65 |" in twin, "sample std of 30, 31, 35: sqrt(7)"
    # mae - twin: 10, 11, 9 (std 1); mae - official: 1, 1, 4 (std sqrt 3); t(0.975, 2) = 4.3027
    differences = next(line for line in lines if line.startswith("| mae | +"))
    assert differences.startswith("| mae | +10.00 [+7.52, +12.48] | – | – | +2.00 [-2.30, +6.30] |")
    assert "| official-mae | 0 | 10 | 1,280 |" in "\n".join(lines) and "mae.json" not in "\n".join(lines)
    # The curves (mae only): each seed's points, then their mean ± sample std per point (40, 37, 34 at 2/2).
    assert "## Learning curves: kNN top-1 on val at every 1/2 of the budget (%)" in lines
    assert "| mae | 2 | 34.00 | 34.00 |" in lines and "| official-mae | 0 |" not in "\n".join(lines[-12:])
    assert "| mae | mean ± std | 32.00 ± 2.00 | 37.00 ± 3.00 |" in lines
    # Each machine with the records made on it: images/s and training time are read against their machine.
    assert "- m (1 torch thread): mae 2." in lines
    assert "- m (2 torch threads): mae 0, mae 1, official-mae 0, official-mae 1, official-mae 2." in lines


def test_results_table_is_one_setting_per_folder(tmp_path, capsys):
    """A mean over seeds of two budgets, a row whose seeds had other overrides, or rows with other extra settings
    are refused in one line; another setting has its own folder, and tables.py writes that folder's page too."""
    results, tables = load_script("benchmarks/results.py"), load_script("benchmarks/tables.py")

    def record(method: str, seed: int, petaflops: float = 0.1, extra: tuple[str, ...] = (), config: str = "") -> dict:
        overrides = [*results.BUDGET_SETTINGS[method], *extra]
        return {"method": method, "seed": seed, "steps": 10, "images_seen": 1280, "petaflops": petaflops,
                "budget": {"petaflops": petaflops, "minutes": None, "steps": None, "warmup_fraction": 0.05},
                "setting": {"config": config or f"configs/{method}/c.yaml", "overrides": overrides, "seed": seed,
                            "train_images": 100, "data_root": "data"},
                "train_images": 100, "knn_top1": 40.0 + seed, "random_init": {"knn_top1": 30.0}, "curve": [],
                "invocation": "python benchmarks/results.py ...", "machine": "m", "date": "2026-12-07"}  # fmt: skip

    cases = {
        "budget": ([record("mae", 0), record("beit", 0, petaflops=0.4)], "differ in pretraining budget"),
        "row": ([record("cpc", 0), record("cpc", 1, config="configs/cpc/c12.yaml")], "cpc's config"),
        "extra": ([record("mae", 0, extra=("--data.batch_size", "6")), record("cpc", 0)], "extra fit settings"),
    }  # fmt: skip
    for name, (records, message) in cases.items():
        folder = tmp_path / name
        folder.mkdir()
        for r in records:
            (folder / f"{r['method']}-seed{r['seed']}.json").write_text(json.dumps(r))
        with pytest.raises(SystemExit):
            results.main(["--table", "--output", str(folder), "--run-dir", str(tmp_path / "runs")])
        err = capsys.readouterr().err
        assert message in err and "its own --output folder" in err and len(err.strip().splitlines()) == 1, err
        assert not (folder / "results.md").exists()
    long = tmp_path / "ok" / "budget-0.4pflop"
    long.mkdir(parents=True)
    (tmp_path / "ok" / "mae-seed0.json").write_text(json.dumps(record("mae", 0)))
    (long / "mae-seed0.json").write_text(json.dumps(record("mae", 0, petaflops=0.4)))
    pages = tables.pages(tmp_path / "ok")
    assert set(pages) == {"results.md", "budget-0.4pflop/results.md"}
    assert (
        "Every row: 0.4 PFLOP of pretraining (warm-up 5% of it) on a class-balanced subset of 100"
        in pages["budget-0.4pflop/results.md"]
    )


def test_a_budget_parses_back_from_the_flags_its_commands_carry():
    """Every part of a budget is in the command that remakes its run: a warmup left out of a record's command
    (its reuse key) would let a run of another schedule pass for it."""
    results = load_script("benchmarks/results.py")
    parse, budget_of = results.build_parser().parse_args, results.RunBudget.from_args
    for argv in (["--petaflops", "0.1"], ["--petaflops", "0.1", "--warmup-fraction", "0.2"],
                 ["--minutes", "8", "--warmup-fraction", "0.1"], ["--steps", "300"]):  # fmt: skip
        budget = budget_of(parse(argv))
        assert budget_of(parse(budget.flags())) == budget
        assert (
            results.command_line(parse(argv), ["mae"], [0]).split()[4 : 6 + 2 * ("--warmup-fraction" in argv)] == argv
        )
    assert "--warmup-fraction" not in results.command_line(parse(["--petaflops", "0.1"]), ["mae"], [0])


def test_screen_settings_scores_trained_and_random_on_train_images_only(tmp_path, monkeypatch):
    from conftest import write_image_folder

    monkeypatch.setenv("SSLVIT_CACHE", str(tmp_path / "cache"))
    screen = load_script("benchmarks/screen_settings.py")
    data = write_image_folder(tmp_path / "images", classes=2, per_class=20, size=16)  # a colour per class
    for image in (data / "val").rglob("*.png"):
        image.write_bytes(b"not an image")  # the screen never reads val: an unreadable image there changes nothing
    args = ["--config", TINY_CONFIGS["cpc"], "--data-root", str(data), "--steps", "2", "--name", "narrow",
            "--run-dir", str(tmp_path / "runs"), "--bank", "24", "--queries", "10", "--",
            "--trainer.enable_progress_bar", "false"]  # fmt: skip
    first = screen.main(args)
    assert first["steps"] == 2 and first["name"] == "narrow" and (first["num_bank"], first["num_queries"]) == (24, 10)
    assert first["warmup_fraction"] == 0.05 and first["budget"] == "2 steps"
    for encoder in ("trained", "random"):
        assert first[f"{encoder}_native_knn"] >= 90 and first[f"{encoder}_native_linear"] >= 90
        assert f"{encoder}_mean_knn" in first
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


def test_mae_vs_official_merges_parts_of_the_same_settings_into_one_page(tmp_path, capsys):
    script, tables = load_script("benchmarks/mae_vs_official.py"), load_script("benchmarks/tables.py")
    settings = {"config": "c.yaml", "train_images": 100, "warmup_steps": 10, "budget": {"steps": 50}}

    def part(name, runs, **changed):
        runs = [{"variant": v, "seed": s, "knn_top1": top1, "machine": "m", "date": "2026-12-07",
                 "settings": {**settings, **changed}} for v, s, top1 in runs]  # fmt: skip
        (tmp_path / name).write_text(json.dumps({"runs": runs}))
        return str(tmp_path / name)

    first = part("a.json", [("sslvit", 0, 39.0), ("reference", 0, 40.0)])
    second = part("b.json", [("reference", 1, 38.0), ("sslvit", 1, 38.0), ("sslvit", 0, 39.0)])
    lockstep = {"steps": 3, "max_loss_difference": 1e-7, "final_loss": {"sslvit": 0.7, "official": 0.7001},
                "losses": {"sslvit": [0.9, 0.8, 0.7], "official": [0.9, 0.8, 0.7001]},
                "sslvit": {"knn_top1": 30.0, "plain_knn_top1": 30.0},
                "official": {"knn_top1": 30.5, "plain_knn_top1": 30.5},
                "settings": {"steps": 3, "warmup_steps": 1, "train_images": 100, "seed": 0}, "machine": "m",
                "date": "2026-12-07"}  # fmt: skip
    (tmp_path / "lockstep.json").write_text(json.dumps(lockstep))
    script.main(
        [
            "--merge",
            first,
            second,
            "--lockstep",
            str(tmp_path / "lockstep.json"),
            "--note",
            "made twice",
            "--output",
            str(tmp_path / "page.json"),
        ]
    )
    page = json.loads((tmp_path / "page.json").read_text())
    assert "losses" not in page["lockstep"] and page["tables"][0]["notes"] == ["made twice"]
    assert [(r["variant"], r["seed"]) for r in page["runs"]] == [
        ("reference", 0),
        ("sslvit", 0),
        ("reference", 1),
        ("sslvit", 1),
    ]
    assert page["summary"]["sslvit"]["minus_reference"]["values"] == [-1.0, 0.0]
    text = tables.page_markdown(page, "page")
    assert "| `reference`: the reference loop" in text and "| 40.00, 38.00 | 39.00 | 1.41 | – |" in text
    assert "| 39.00, 38.00 | 38.50 | 0.71 | -0.50 [-6.85 to +5.85] |" in text
    assert (
        "| facebookresearch/mae's model and update | 0.7001 | 0.7001 | 30.50 | 30.50 |" in text
        and "--seeds 0 1 --variants reference sslvit" in text
    )
    for bad, message in [
        (part("c.json", [("sslvit", 2, 30.0)], warmup_steps=20), "only runs of the same settings merge"),
        (part("d.json", [("sslvit", 0, 30.0)]), "sslvit seed 0 is 30.0, another record says 39.0"),
    ]:
        with pytest.raises(SystemExit):
            script.main(["--merge", first, bad, "--output", str(tmp_path / "bad.json")])
        assert message in capsys.readouterr().err
    assert not (tmp_path / "bad.json").exists()


def test_result_pages_are_what_their_records_give():
    """benchmarks/results/*.md are written from the JSON records beside them (results.md by results.py --table,
    the others by tables.py): a page edited by hand, or a record changed without rewriting its page, fails."""
    tables = load_script("benchmarks/tables.py")
    folder = REPO / "benchmarks" / "results"
    pages = tables.pages(folder)
    assert {"results.md", "speed.md", "settings.md"} <= set(pages)
    assert set(pages) == {p.relative_to(folder).as_posix() for p in folder.rglob("*.md")}, "records <-> pages"
    for name, text in pages.items():
        assert (folder / name).read_text() == text, f"{name} differs from its records: run python benchmarks/tables.py"


def test_every_measured_table_names_its_command_machine_and_date(tmp_path):
    tables = load_script("benchmarks/tables.py")
    table = {"title": "t", "columns": [{"key": "x", "label": "x", "format": ".1f", "suffix": "x"}],
             "rows": [{"x": 1.25}, {"x": [1, 2]}, {"x": {"value": 3, "range": [2, 4]}}, {"x": None}],
             "commands": ["python benchmarks/train_step.py"], "machine": "m", "date": "2026-12-07"}  # fmt: skip
    text = tables.page_markdown({"title": "p", "tables": [table]}, "p")
    assert "| 1.2x |\n| 1.0-2.0x |\n| 3.0x [2.0-4.0x] |\n| – |" in text and "Machine: m. Date: 2026-12-07." in text
    for key in ("commands", "machine", "date"):
        (tmp_path / "p.json").write_text(json.dumps({"title": "p", "tables": [{**table, key: ""}]}))
        with pytest.raises(ValueError, match=f"has no {key}"):
            tables.pages(tmp_path)


def test_every_record_names_the_torch_threads_it_ran_with():
    """Two runs sharing 2 cores with one thread each train at half the images/s, and float reductions round
    by thread count: a record that said only "2 cores" would hide both."""
    from harness import machine

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert "(1 torch thread)" in machine()
        torch.set_num_threads(2)
        assert "(2 torch threads)" in machine()
    finally:
        torch.set_num_threads(before)

"""BEiT through `sslvit fit` and `tools/fit_tokenizer.py`, on a seconds-long config."""

import logging
import shutil
import sys
from pathlib import Path

import pytest
import torch

from conftest import TINY_CONFIGS, load_script, sslvit
from sslvit.checkpoints import safe_load
from sslvit.cli import main, run_cli
from sslvit.methods import BEiT
from sslvit.methods.beit.tokenizer import KMeansTokenizer, load_tokenizer

TINY = TINY_CONFIGS["beit"]


def fit(run: Path, *extra: str):
    return run_cli(["fit", "--config", TINY, "--trainer.default_root_dir", str(run), *extra])


def fit_tokenizer_tool():
    return load_script("tools/fit_tokenizer.py")


def test_fit_fits_a_tokenizer_stores_it_in_checkpoints_and_resumes_without_refitting(tmp_path, caplog):
    run = tmp_path / "run"
    lightning_log = logging.getLogger("lightning.pytorch")  # where Lightning's console messages go
    lightning_log.addHandler(caplog.handler)
    try:
        cli = fit(run)
    finally:
        lightning_log.removeHandler(caplog.handler)
    assert cli.trainer.global_step == 3
    last, tokenizer_dir = run / "checkpoints" / "last.ckpt", run / "tokenizer"
    assert "k-means tokenizer: 16 codes" in caplog.text and "held-out val" in caplog.text  # coverage table
    assert f"tokenizer saved to {tokenizer_dir}" in caplog.text
    assert (tokenizer_dir / "tokenizer.json").is_file() and (tokenizer_dir / "codebook.safetensors").is_file()
    assert "train/masked_acc" in (run / "metrics.csv").read_text()
    ckpt = safe_load(last)  # weights_only: the checkpoint holds tensors and plain values only
    saved = load_tokenizer(tokenizer_dir)
    assert torch.equal(ckpt["state_dict"]["tokenizer.centroids"], saved.centroids)
    assert (
        ckpt["tokenizer_info"]["source"] == str(tokenizer_dir)
        and ckpt["hyper_parameters"]["codebook"]["vocab_size"] == 16
    )

    # the checkpoint alone is enough: no tokenizer directory needed to evaluate or resume
    shutil.rmtree(tokenizer_dir)
    model = BEiT.load_from_checkpoint(last, weights_only=True)
    images = torch.randn(2, 3, 16, 16)
    assert torch.equal(model.tokenizer(images), saved(images))
    cli = fit(run, "--ckpt_path", "last", "--trainer.max_steps", "5")
    assert cli.trainer.global_step == 5 and not tokenizer_dir.exists()  # restored, not refitted


def test_fit_tokenizer_tool_reads_the_fit_config_and_training_uses_its_tokenizer(tmp_path, capsys):
    out = tmp_path / "tok"
    tool = fit_tokenizer_tool()
    tool.main(["--config", TINY, "--data.batch_size", "32", "--output", str(out)])
    printed = capsys.readouterr().out
    assert "k-means tokenizer: 16 codes for 4x4 patches (4x4 grid of 16px images)" in printed
    assert "held-out val" in printed
    assert f"sslvit fit --config {TINY} --data.batch_size 32 --model.init_args.tokenizer {out}" in printed
    with pytest.raises(SystemExit):  # an existing tokenizer is not replaced by accident
        tool.main(["--config", TINY, "--output", str(out)])
    cli = fit(tmp_path / "run", "--model.tokenizer", str(out), "--trainer.max_steps", "1")
    assert torch.equal(cli.model.tokenizer.centroids, load_tokenizer(out).centroids)
    assert not (tmp_path / "run" / "tokenizer").exists()


def test_fit_tokenizer_tool_needs_a_beit_config(tmp_path, capsys):
    with pytest.raises(SystemExit):
        fit_tokenizer_tool().main(["--config", TINY_CONFIGS["mae"], "--output", str(tmp_path)])
    assert "sslvit.methods.MAE does not correspond to a subclass of BEiT" in capsys.readouterr().err


def write_tokenizer(folder: Path, patch_size: int = 4, image_size: int = 16, **kwargs) -> str:
    tokenizer = KMeansTokenizer(16, patch_size, image_size, **kwargs)
    tokenizer.fitted.fill_(True)
    return str(tokenizer.save(folder))


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda d: write_tokenizer(d, patch_size=8), "codes 8px patches on a 2x2 grid (16px images, 3 channels) but"),
        (lambda d: write_tokenizer(d, image_size=32), "on a 8x8 grid (32px images"),
        (lambda d: write_tokenizer(d, mean=(0.5, 0.5, 0.5)), "normalized with mean=[0.5, 0.5, 0.5]"),
        (lambda d: str(d / "missing"), "is not a tokenizer directory"),
    ],
)
def test_unusable_tokenizer_is_one_clear_line(tmp_path, monkeypatch, capsys, make, message):
    tokenizer = make(tmp_path / "tok")
    argv = ["sslvit", "fit", "--config", TINY, "--trainer.default_root_dir", str(tmp_path / "run")]
    monkeypatch.setattr(sys, "argv", [*argv, "--model.init_args.tokenizer", tokenizer])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("sslvit: error: ") and message in err, err[-2000:]
    assert "Traceback" not in err and not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_ddp_shares_one_codebook_and_trains_like_one_process(tmp_path):
    """Rank 0 fits the codebook and broadcasts it; two processes then match one on the same global batch."""
    common = ["--data.train_subset", "128", "--trainer.max_steps", "4", "--trainer.limit_val_batches", "1"]

    def run(name: str, *extra: str) -> dict:
        args = ["fit", "--config", TINY, "--trainer.default_root_dir", str(tmp_path / name), *common, *extra]
        out = sslvit(*args)
        assert out.returncode == 0, out.stderr[-4000:]
        return safe_load(tmp_path / name / "checkpoints" / "last.ckpt")

    single = run("single", "--data.batch_size", "32")
    ddp = run("ddp", "--trainer.devices", "2", "--trainer.strategy", "ddp", "--data.batch_size", "16")
    assert (tmp_path / "ddp" / "tokenizer" / "tokenizer.json").is_file()
    for key, value in single["state_dict"].items():
        assert torch.allclose(ddp["state_dict"][key], value, atol=2e-5), key  # codebook and trained weights


@pytest.fixture(scope="module")
def beit_run(tmp_path_factory):
    """A finished seconds-long BEiT run that fitted its own 16-code tokenizer (saved to <run>/tokenizer)."""
    run = tmp_path_factory.mktemp("beit") / "run"
    fit(run)
    return run


@pytest.mark.parametrize(
    "subcommand,extra,message",
    [
        ("fit", ["--data.mean", "[0.5, 0.5, 0.5]"], "was fitted on images normalized with mean="),
        ("validate", ["--data.std", "[0.5, 0.5, 0.5]"], "was fitted on images normalized with mean="),
        ("fit", ["--model.init_args.tokenizer", "{other}"], "is not the codebook this run was trained with"),
        ("validate", ["--model.init_args.tokenizer", "{other}"], "is not the codebook this run was trained with"),
        ("fit", ["--model.init_args.codebook.color_weight", "0.1"], "codebook.color_weight=0.1 but the checkpoint"),
    ],
)
def test_resuming_refuses_tokenizer_settings_the_codebook_does_not_have(
    beit_run, tmp_path, monkeypatch, capsys, subcommand, extra, message
):
    run = tmp_path / "run"
    shutil.copytree(beit_run, run)
    other = write_tokenizer(tmp_path / "other")  # same shape (16 codes of 4x4 patches), other centroids
    ckpt = str(run / "checkpoints" / "last.ckpt")
    args = ["sslvit", subcommand, "--config", TINY, "--trainer.default_root_dir", str(run), "--ckpt_path", ckpt]
    monkeypatch.setattr(sys, "argv", [*args, "--trainer.max_steps", "5", *[a.format(other=other) for a in extra]])
    with pytest.raises(SystemExit) as done:
        main()
    err = capsys.readouterr().err
    assert done.value.code == 2 and "Traceback" not in err and message in err, err[-3000:]


def test_resuming_with_the_runs_own_tokenizer_directory_is_fine(beit_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(beit_run, run)
    cli = fit(
        run, "--ckpt_path", "last", "--trainer.max_steps", "4", "--model.init_args.tokenizer", str(run / "tokenizer")
    )
    assert cli.trainer.global_step == 4

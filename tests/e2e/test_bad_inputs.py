"""A table of bad inputs: each is one line naming the file or setting and the fix, and nothing is lost.

Every row runs the `sslvit` command (or a tool) in-process on a broken setting, file or dataset and
checks that (1) it exits with status 2 and one ``<prog>: error:`` line, no traceback, (2) the line
says what the row expects, and (3) the run directory is byte for byte what it was before (new
folders are gone, an existing run's config.yaml, metrics and checkpoints untouched).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import sys
import zlib
from pathlib import Path

import pytest

from conftest import TINY_CONFIGS, load_script, write_image_folder
from sslvit.cli import main, run_cli

MAE, CPC = TINY_CONFIGS["mae"], TINY_CONFIGS["cpc"]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file below ``folder`` with the SHA-256 of its bytes (empty when the folder does not exist)."""
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


def bomb_png(path: Path, side: int = 30000) -> Path:
    """A tiny PNG whose header claims ``side`` x ``side`` pixels (far beyond PIL's decompression-bomb limit)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Finished seconds-long MAE and CPC runs to resume from, and broken copies of a checkpoint."""
    root = tmp_path_factory.mktemp("runs")
    for name, config in (("mae", MAE), ("cpc", CPC)):
        run_cli(["fit", "--config", config, "--trainer.default_root_dir", str(root / name)])
    good = (root / "mae" / "checkpoints" / "last.ckpt").read_bytes()
    (root / "empty.ckpt").write_bytes(b"")
    (root / "truncated.ckpt").write_bytes(good[: len(good) // 2])
    (root / "empty.yaml").write_text("")
    data = write_image_folder(root / "loop")
    os.symlink("..", data / "train" / "class0" / "loopdir")
    data = write_image_folder(root / "empty_class")
    (data / "train" / "class9").mkdir()
    data = write_image_folder(root / "bomb")
    bomb_png(data / "train" / "class1" / "bomb.png")
    return root


# (id, arguments after `sslvit fit`, what the line must say); {runs} is the folder of the fixture, {run}
# the run directory the row points at (a new one unless the row resumes the existing MAE run).
ROWS = [
    ("unknown key", ["--config", MAE, "--model.init_args.mask_ratoi", "0.5"],
     "model.init_args.mask_ratoi is not a setting of sslvit.methods.MAE (did you mean mask_ratio?)"),
    ("unknown nested key", ["--config", MAE, "--model.init_args.backbone.depht", "2"],
     "model.init_args.backbone.depht is not a setting of sslvit.ViTConfig (did you mean depth?)"),
    ("unknown option", ["--config", MAE, "--data.bach_size", "3"],
     "unrecognized arguments: --data.bach_size 3 (did you mean --data.batch_size"),
    ("wrong type", ["--config", MAE, "--data.batch_size", "many"],
     "data.batch_size: Expected a <class 'int'>. Got value: many"),
    ("not a choice", ["--config", MAE, "--data.dataset", "imagenet"],
     "data.dataset: Expected a typing.Literal['digits'"),
    ("unknown class", ["--config", MAE, "--model.class_path", "sslvit.methods.MAEE"],
     "did you mean sslvit.methods.MAE?"),
    ("empty config", ["--config", "{runs}/empty.yaml"], "the config file {runs}/empty.yaml is empty"),
    ("invalid value", ["--config", MAE, "--model.init_args.mask_ratio", "1.5"],
     "model.mask_ratio must be in the open interval"),
    ("another method's checkpoint", ["--config", MAE, "--ckpt_path", "{runs}/cpc/checkpoints/last.ckpt"],
     "it is a CPC run but the config trains MAE"),
    ("another architecture", ["--config", MAE, "--ckpt_path", "last", "--model.init_args.backbone.depth", "2"],
     "its backbone differs from the config's (checkpoint vs config: depth 1 vs 2)"),
    ("another decoder", ["--config", MAE, "--ckpt_path", "last", "--model.init_args.decoder_embed_dim", "32"],
     "its weights do not fit the configured MAE (checkpoint vs config: mask_token (1, 1, 16) vs (1, 1, 32)"),
    ("another image size", ["--config", MAE, "--ckpt_path", "last", "--data.image_size", "32",
                            "--model.init_args.backbone.img_size", "32"], "its backbone differs"),
    ("empty checkpoint", ["--config", MAE, "--ckpt_path", "{runs}/empty.ckpt"], "{runs}/empty.ckpt is empty (0 bytes)"),
    ("truncated checkpoint", ["--config", MAE, "--ckpt_path", "{runs}/truncated.ckpt"],
     "{runs}/truncated.ckpt is not a readable checkpoint: it is truncated or not a torch file"),
    ("missing checkpoint", ["--config", MAE, "--ckpt_path", "{runs}/nothing.ckpt"], "no such checkpoint file"),
    ("symlink loop", ["--config", MAE, "--data.dataset", "imagefolder", "--data.root", "{runs}/loop"],
     "loopdir is a link to {runs}/loop/train, a folder the dataset already holds"),
    ("empty class folder", ["--config", MAE, "--data.dataset", "imagefolder", "--data.root", "{runs}/empty_class"],
     "Found no valid file for the classes class9"),
    ("decompression bomb", ["--config", MAE, "--data.dataset", "imagefolder", "--data.root", "{runs}/bomb",
                            "--data.batch_size", "4"], "cannot read image {runs}/bomb/train/class1/bomb.png"),
    ("missing data", ["--config", MAE, "--data.dataset", "imagefolder", "--data.root", "{runs}/nowhere"],
     "{runs}/nowhere/train does not exist"),
    ("unwritable run directory", ["--config", MAE], "cannot be written (Not a directory)"),
]  # fmt: skip


@pytest.mark.parametrize("args,expected", [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_bad_input_is_one_line_and_loses_nothing(runs, args, expected, tmp_path, monkeypatch, capsys):
    resumes = "last" in args
    if resumes:  # the row resumes a copy of the finished MAE run
        run = tmp_path / "run"
        shutil.copytree(runs / "mae", run)
    elif "unwritable" in expected or "cannot be written" in expected:
        (tmp_path / "file").write_text("a file where a folder should be")
        run = tmp_path / "file" / "run"
    else:
        run = tmp_path / "run"
    before = snapshot(run)
    args = [a.format(runs=runs) for a in args]
    monkeypatch.setattr(sys, "argv", ["sslvit", "fit", *args, "--trainer.default_root_dir", str(run)])
    with pytest.raises(SystemExit) as done:
        main()
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("sslvit: error:")]
    assert done.value.code == 2 and len(lines) == 1 and "Traceback" not in err, err[-3000:]
    assert expected.format(runs=runs) in lines[0], lines[0]
    assert snapshot(run) == before, "a failed start must leave the run directory as it was"
    assert run.exists() == bool(before), "a new run directory must not be left behind"


def test_the_decompression_bomb_is_skipped_with_skip_corrupt(runs, tmp_path):
    cli = run_cli(["fit", "--config", MAE, "--trainer.default_root_dir", str(tmp_path / "run"), "--data.dataset",
                   "imagefolder", "--data.root", str(runs / "bomb"), "--data.batch_size", "4", "--data.skip_corrupt",
                   "true", "--trainer.max_steps", "-1", "--trainer.max_epochs", "1"])  # fmt: skip
    assert cli.trainer.callback_metrics["data/skipped_images"] == 1


@pytest.mark.parametrize(
    "tool,args,expected",
    [
        ("knn_eval", ["--checkpoint", "{runs}/empty.ckpt"], "{runs}/empty.ckpt is empty (0 bytes)"),
        ("linear_probe", ["--checkpoint", "{runs}/truncated.ckpt"], "it is truncated or not a torch file"),
        ("visualize_mae", ["--checkpoint", "{runs}/cpc/checkpoints/last.ckpt"], "but MAE is needed"),
        ("export", ["--checkpoint", "{runs}/nothing.ckpt"], "checkpoint {runs}/nothing.ckpt does not exist"),
        (
            "knn_eval",
            ["--checkpoint", "{runs}/mae/checkpoints/last.ckpt", "--data-root", "{runs}/loop"],
            "symlink loop",
        ),
        (
            "knn_eval",
            ["--checkpoint", "x", "--pooing", "mean"],
            "unrecognized arguments: --pooing mean (did you mean --pooling?)",
        ),
    ],
)
def test_tools_print_one_line(runs, tool, args, expected, capsys):
    with pytest.raises(SystemExit) as done:
        load_script(f"tools/{tool}.py").main([a.format(runs=runs) for a in args])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith(f"{tool}.py: error:")]
    assert done.value.code == 2 and len(lines) == 1 and "Traceback" not in err, err[-3000:]
    assert expected.format(runs=runs) in lines[0], lines[0]

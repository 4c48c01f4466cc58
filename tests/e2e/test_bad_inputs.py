"""A table of bad inputs: each is one line naming the file or setting and the fix, and nothing is lost.

Every row runs the `sslvit` command (or a tool) in-process on a broken setting, file or dataset and
checks that (1) it exits with status 2 and one ``<prog>: error:`` line, no traceback, (2) the line
says what the row expects, and (3) the run directory is byte for byte what it was before (new
folders are gone, an existing run's config.yaml, metrics and checkpoints untouched); for a tool,
its inputs, the outputs it refused to replace and its working directory. Ctrl-C is one line too
(status 130) saying what it left, and resuming a finished run says so and changes nothing.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY_CONFIGS, load_script, write_image_folder
from sslvit.cli import main, run_cli
from sslvit.data.shards import shard_image_folder
from sslvit.nn.backbone import VisionTransformer

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
    (root / "random.pth").write_bytes(np.random.default_rng(0).bytes(4096))  # not a checkpoint at all
    images = write_image_folder(root / "images")
    shard_image_folder(images, root / "shards", samples_per_shard=4)  # outputs a tool must not replace unasked
    load_script("tools/export.py").main(["--checkpoint", str(root / "mae/checkpoints/last.ckpt"), "--output",
                                         str(root / "exported")])  # fmt: skip
    (root / "foreign").mkdir()
    (root / "foreign" / "notes.txt").write_text("not an output of any tool")
    renamed = write_image_folder(root / "renamed")  # val's class folders named differently from train's
    for c, name in enumerate(("a_dog", "b_cat", "c_airplane")):
        (renamed / "train" / f"class{c}").rename(renamed / "train" / name)
        (renamed / "val" / f"class{c}").rename(renamed / "val" / name.split("_")[1])
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
    ("trainer setting Lightning refuses", ["--config", MAE, "--trainer.max_epochs", "-5"],
     "trainer.max_epochs must be a non-negative integer or -1. You passed in -5; change --trainer.max_epochs"),
    ("not a checkpoint", ["--config", MAE, "--ckpt_path", "{runs}/random.pth"],
     "{runs}/random.pth is not a checkpoint: it is neither a torch file (zip archive) nor a pickle"),
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


LAST = "{runs}/mae/checkpoints/last.ckpt"
# (tool, arguments, what the line must say); relative paths are in an empty working directory.
TOOL_ROWS = [
    ("knn_eval", ["--checkpoint", "{runs}/empty.ckpt"], "{runs}/empty.ckpt is empty (0 bytes)"),
    ("linear_probe", ["--checkpoint", "{runs}/truncated.ckpt"], "it is truncated or not a torch file"),
    ("visualize_mae", ["--checkpoint", "{runs}/cpc/checkpoints/last.ckpt"], "but MAE is needed"),
    ("export", ["--checkpoint", "{runs}/nothing.ckpt"], "checkpoint {runs}/nothing.ckpt does not exist"),
    ("knn_eval", ["--checkpoint", LAST, "--data-root", "{runs}/loop"], "symlink loop"),
    ("knn_eval", ["--checkpoint", "x", "--pooing", "mean"],
     "unrecognized arguments: --pooing mean (did you mean --pooling?)"),
    ("knn_eval", ["--checkpoint", "{runs}/random.pth"],
     "{runs}/random.pth is not a checkpoint: it is neither a torch file (zip archive) nor a pickle"),
    ("finetune", ["--checkpoint", LAST, "--epochs", "-3"], "argument --epochs: must be an integer >= 1, got -3"),
    ("finetune", ["--checkpoint", LAST, "--epochs", "0", "--run-dir", "ft"],
     "argument --epochs: must be an integer >= 1, got 0"),
    ("finetune", ["--checkpoint", LAST, "--run-dir", "ft", "--", "--trainer.max_epochs", "-3"],
     "trainer.max_epochs must be a non-negative integer or -1. You passed in -3; change --trainer.max_epochs"),
    ("visualize_mae", ["--checkpoint", LAST, "--num-images", "0"],
     "argument --num-images: must be an integer >= 1, got 0"),
    ("visualize_features", ["--checkpoint", LAST, "--num-images", "0"],
     "argument --num-images: must be an integer >= 1, got 0"),
    ("make_shards", ["--data-root", "{runs}/images", "--output", "out", "--samples-per-shard", "0"],
     "argument --samples-per-shard: must be an integer >= 1, got 0"),
    ("export", ["--checkpoint", "{runs}/cpc/checkpoints/last.ckpt", "--output", "{runs}/exported"],
     "{runs}/exported already holds files (config.json, model.safetensors); pass --overwrite to replace it whole"),
    ("export", ["--checkpoint", LAST, "--output", "{runs}/foreign", "--overwrite"],
     "{runs}/foreign holds files that are not part of an earlier export (notes.txt); --overwrite replaces only"),
    ("make_shards", ["--data-root", "{runs}/bomb", "--output", "{runs}/shards"],
     "{runs}/shards already holds files (train/index.json, train/shard-000000.tar, train/shard-000001.tar and 8 "
     "more); pass --overwrite"),
    ("make_shards", ["--data-root", "{runs}/images", "--output", "{runs}/foreign", "--overwrite"],
     "holds files that are not part of an earlier shard set (notes.txt)"),
    # Settings are checked on the labels before any image is encoded (nothing lands in the cache: the
    # working directory stays empty).
    ("knn_eval", ["--checkpoint", LAST, "--data-root", "{runs}/images", "--k", "30"],
     "k=30 is larger than the bank of 24 training features"),
    ("knn_eval", ["--checkpoint", LAST, "--data-root", "{runs}/images", "--ks", "10", "500"],
     "k=500 is larger than the bank of 24 training features"),
    ("knn_eval", ["--checkpoint", LAST, "--data-root", "{runs}/images", "--shots", "2", "--k", "7"],
     "k=7 is larger than the bank of 6 training features"),
    ("knn_eval", ["--checkpoint", LAST, "--data-root", "{runs}/images", "--train-fraction", "0"],
     "--train-fraction must be in (0, 1], got 0.0"),
    ("linear_probe", ["--checkpoint", LAST, "--data-root", "{runs}/images", "--lrs", "0.1", "-1"],
     "--lrs must be positive"),
    ("linear_probe", ["--checkpoint", LAST, "--data-root", "{runs}/images", "--cache-dir", "{runs}/random.pth"],
     "--cache-dir {runs}/random.pth cannot be written"),
    ("knn_eval", ["--checkpoint", LAST, "--data-root", "{runs}/images", "--no-cache", "--cache-dir", "c"],
     "--no-cache and --cache-dir contradict each other"),
    # Labels are matched by class name: a val class that train lacks is refused, naming it.
    ("knn_eval", ["--checkpoint", LAST, "--data-root", "{runs}/renamed"],
     "has 3 class(es) that the train split lacks: 'airplane', 'cat', 'dog'"),
    ("linear_probe", ["--checkpoint", LAST, "--data-root", "{runs}/renamed"], "that the train split lacks"),
    ("finetune", ["--checkpoint", LAST, "--data-root", "{runs}/renamed", "--run-dir", "ft"],
     "that the train split lacks"),
    # Architecture flags are applied or refused.
    ("knn_eval", ["--checkpoint", LAST, "--arch", "vit_small_patch16_224"],
     "records its architecture, which the flags cannot change: --arch vit_small_patch16_224 is 384 wide"),
    ("finetune", ["--checkpoint", LAST, "--num-heads", "4", "--run-dir", "ft"],
     "records its architecture, which the flags cannot change: --num-heads 4 but it has 2 heads"),
    ("knn_eval", ["--checkpoint", "{runs}/exported/model.safetensors", "--arch", "vit_tiny"],
     "--arch vit_tiny is 192 wide, 12 blocks deep with 4px patches, but checkpoint"),
]  # fmt: skip


@pytest.mark.parametrize("tool,args,expected", TOOL_ROWS, ids=[f"{r[0]}: {' '.join(r[1][-2:])}" for r in TOOL_ROWS])
def test_tools_print_one_line(runs, tool, args, expected, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("SSLVIT_CACHE", str(work / "cache"))
    before = snapshot(runs)
    with pytest.raises(SystemExit) as done:
        load_script(f"tools/{tool}.py").main([a.format(runs=runs) for a in args])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith(f"{tool}.py: error:")]
    assert done.value.code == 2 and len(lines) == 1 and "Traceback" not in err, err[-3000:]
    assert expected.format(runs=runs) in lines[0], lines[0]
    assert snapshot(runs) == before, "inputs and existing outputs are untouched"
    assert not any(work.iterdir()), f"nothing may be left in the working directory: {list(work.iterdir())}"


# ---- Ctrl-C: one line, status 130, and it says what it left --------------------------------------------
@pytest.fixture
def ctrl_c(monkeypatch):
    """``ctrl_c(cls, name, when)`` makes ``cls.name`` send SIGINT to this process when ``when()`` is true (a real
    Ctrl-C: Python raises KeyboardInterrupt wherever the process is). SIGINT's handler is restored after."""
    handler = signal.getsignal(signal.SIGINT)

    def patch(cls, name, when):
        real = getattr(cls, name)

        def interrupted(*args, **kwargs):
            if when():
                os.kill(os.getpid(), signal.SIGINT)
            return real(*args, **kwargs)

        monkeypatch.setattr(cls, name, interrupted)

    yield patch
    signal.signal(signal.SIGINT, handler)  # Lightning ignores SIGINT after its own shutdown


def interrupted_line(prog: str, run, capsys) -> str:
    """The one line ``run()`` prints for Ctrl-C (exit status 130); a KeyboardInterrupt escaping it fails the test."""
    try:
        run()
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped as a KeyboardInterrupt traceback")
    except SystemExit as done:
        status = done.code
    else:
        pytest.fail("the command finished as if it had not been interrupted")
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith(f"{prog}: ")]
    assert status == 130 and len(lines) == 1 and "Traceback" not in err, err[-3000:]
    assert lines[0].startswith(f"{prog}: interrupted (Ctrl-C); "), lines[0]
    return lines[0]


def ctrl_c_at_step(step: int) -> list[str]:
    return ["--trainer.callbacks", f'[{{"class_path": "faults.CtrlCAtStep", "init_args": {{"step": {step}}}}}]']


def test_ctrl_c_before_the_first_step_leaves_the_run_directory_as_it_was(tmp_path, ctrl_c, monkeypatch, capsys):
    run = tmp_path / "run"
    argv = ["sslvit", "fit", "--config", MAE, "--trainer.default_root_dir", str(run), *ctrl_c_at_step(0)]
    monkeypatch.setattr(sys, "argv", argv)
    line = interrupted_line("sslvit", main, capsys)
    assert line.endswith(f"nothing was kept: the run directory {run} is as it was before the command"), line
    assert not run.exists()


def test_ctrl_c_during_training_says_where_to_resume(tmp_path, ctrl_c, monkeypatch, capsys):
    run = tmp_path / "run"
    argv = ["sslvit", "fit", "--config", MAE, "--trainer.default_root_dir", str(run), "--trainer.max_steps", "6",
            "--checkpoint.last_every_n_steps", "1", *ctrl_c_at_step(5)]  # Ctrl-C as step 6 begins  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    line = interrupted_line("sslvit", main, capsys)
    last = run / "checkpoints" / "last.ckpt"
    assert f"training stopped at step 5; {last} holds the last saved state" in line, line
    assert line.endswith(f"continue with `sslvit fit --config {run}/config.yaml --ckpt_path last`"), line
    assert torch.load(last, weights_only=True)["global_step"] == 5


def test_ctrl_c_during_feature_extraction_keeps_only_whole_cache_entries(runs, tmp_path, ctrl_c, capsys):
    cache = tmp_path / "cache"
    # Ctrl-C in the first forward pass after the train features were stored: while val is encoded
    ctrl_c(VisionTransformer, "forward_features", lambda: any(cache.glob("*.pt")))
    knn = load_script("tools/knn_eval.py")
    args = [
        "--checkpoint",
        str(runs / "mae/checkpoints/last.ckpt"),
        "--data-root",
        str(runs / "images"),
        "--batch-size",
        "8",
        "--num-workers",
        "0",
        "--cache-dir",
        str(cache),
        "--output",
        str(tmp_path / "k.json"),
    ]
    line = interrupted_line("knn_eval.py", lambda: knn.main(args), capsys)
    assert line.endswith(
        f"the feature cache {cache} holds only whole entries (a rerun reuses the splits encoded before)"
    ), line
    assert [p.suffix for p in cache.iterdir()] == [".pt"], "the train entry, whole; nothing of val"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]


def test_ctrl_c_while_writing_shards_leaves_the_old_set(runs, tmp_path, ctrl_c, capsys):
    import webdataset

    out = tmp_path / "shards"
    shutil.copytree(runs / "shards", out)
    before, written = snapshot(out), []
    ctrl_c(webdataset.ShardWriter, "write", lambda: written.append(1) or len(written) == 6)  # in the second shard
    make_shards = load_script("tools/make_shards.py")
    args = ["--data-root", str(runs / "bomb"), "--output", str(out), "--overwrite", "--no-progress"]
    line = interrupted_line("make_shards.py", lambda: make_shards.main(args), capsys)
    assert line.endswith(f"nothing was written to {out}: a new shard set is moved in only once complete"), line
    assert snapshot(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["shards"]


# ---- resuming a run that is done ---------------------------------------------------------------------
def test_resuming_a_claim_run_says_so_and_changes_nothing(runs, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    shutil.copytree(runs / "mae", run)  # finished: trainer.max_steps=3
    before = snapshot(run)
    monkeypatch.setattr(sys, "argv", ["sslvit", "fit", "--config", MAE, "--trainer.default_root_dir", str(run),
                                      "--ckpt_path", "last"])  # fmt: skip
    main()  # not an error: a requeued job resumes a finished run
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("sslvit: ")]
    assert lines == [
        f"sslvit: nothing to train: the run in {run} already reached trainer.max_steps=3 (step 3), so resuming it "
        "trained no step and changed nothing; to train longer, resume with a larger --trainer.max_steps"
    ], err[-3000:]
    assert snapshot(run) == before

"""Every flag of every tool is read by the run: a flag that nothing reads is a flag silently ignored.

Regression: ``tools/finetune.py`` parsed ``--arch``/``--num-heads`` and never passed them on, so a 4-head state
dict fine-tuned as 3 heads with exit status 0. Each tool runs once here on a tiny checkpoint and folder, and
its parsed options (:class:`sslvit.cli.parser.ReadTrackingArgs`) must all have been read. A new flag that
is parsed but not used fails this test, whatever its name.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import TINY_CONFIGS, load_script, write_image_folder
from sslvit.cli import run_cli
from sslvit.cli.parser import ToolParser


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("flags")
    run_cli(["fit", "--config", TINY_CONFIGS["mae"], "--trainer.default_root_dir", str(root / "run")])
    write_image_folder(root / "images", classes=2, per_class=4)
    return root


def tool_runs(root: Path) -> dict[str, list[str]]:
    ckpt, images = str(root / "run" / "checkpoints" / "last.ckpt"), str(root / "images")
    data = ["--data-root", images, "--num-workers", "0"]
    return {
        "knn_eval": ["--checkpoint", ckpt, *data, "--no-cache"],
        "linear_probe": ["--checkpoint", ckpt, *data, "--no-cache", "--epochs", "2", "--lrs", "0.1"],
        "finetune": ["--checkpoint", ckpt, *data, "--epochs", "1", "--batch-size", "4", "--run-dir",
                     str(root / "ft"), "--", "--trainer.enable_progress_bar", "false"],
        "visualize_mae": ["--checkpoint", ckpt, *data, "--num-images", "2", "--output", str(root / "r.png")],
        "visualize_features": ["--checkpoint", ckpt, *data, "--num-images", "2", "--output", str(root / "f.png")],
        "export": ["--checkpoint", ckpt, "--output", str(root / "exported")],
        "plot_metrics": [str(root / "run"), "--output", str(root / "c.png")],
        "make_shards": ["--data-root", images, "--output", str(root / "shards"), "--no-progress"],
    }  # fmt: skip


@pytest.mark.parametrize("tool", list(tool_runs(Path("."))))
def test_every_flag_of_the_tool_is_read(setup, tool, monkeypatch):
    parsed = []
    original = ToolParser.parse_known_args

    def keep(self, args=None, namespace=None):
        result = original(self, args, namespace)
        parsed.append(result[0])
        return result

    monkeypatch.setattr(ToolParser, "parse_known_args", keep)
    load_script(f"tools/{tool}.py").main(tool_runs(setup)[tool])
    assert parsed, f"tools/{tool}.py does not parse with ToolParser"
    assert parsed[0].unread() == [], f"tools/{tool}.py ignores these flags: {parsed[0].unread()}"
    json.dumps(vars(parsed[0]))  # the options alone: scripts write vars(args) into their JSON records

"""Run directories named after the clock: one per run, however many start in the same second."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

import sslvit.cli.run_dir as run_dir

REPO = Path(__file__).resolve().parents[3]


def test_runs_started_in_the_same_second_get_their_own_directories(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(run_dir.time, "strftime", lambda pattern: pattern.replace("%Y%m%d-%H%M%S", "20261207-142500"))
    claimed = []
    for _ in range(3):
        with run_dir.new_run_dir("runs/finetune") as path:
            (path / "metrics.csv").write_text("step\n")
            claimed.append(str(path))
    stamp = "runs/finetune-20261207-142500"
    assert claimed == [stamp, f"{stamp}-2", f"{stamp}-3"]


def test_a_failed_command_leaves_no_empty_run_directory_but_keeps_a_used_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError), run_dir.new_run_dir("runs/ft") as empty:
        raise ValueError("refused before training")
    assert not empty.exists() and (tmp_path / "runs").is_dir()
    with pytest.raises(KeyboardInterrupt), run_dir.new_run_dir("runs/ft") as used:
        (used / "metrics.csv").write_text("step\n0\n")
        raise KeyboardInterrupt
    assert (used / "metrics.csv").is_file(), "what a run wrote is never deleted"


def test_make_quickstart_claims_a_folder_that_no_run_holds(tmp_path):
    """The Makefile's own claim command (not a copy of it) never returns a folder that exists already, even
    when every stamp of the next seconds is taken: two quickstarts in one second train into two folders."""
    makefile = (REPO / "Makefile").read_text()
    claim = re.search(r"^CLAIM_RUN_DIR := (.+)$", makefile, re.M).group(1).replace("$(PY)", shlex.quote(sys.executable))
    assert "run=$$($(CLAIM_RUN_DIR))" in makefile, "make quickstart names its run folder with CLAIM_RUN_DIR"
    now = time.time()
    taken = {time.strftime("runs/quickstart-%Y%m%d-%H%M%S", time.localtime(now + s)) for s in range(0, 30)}
    for path in taken:
        (tmp_path / path).mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(REPO / "ssl")}
    out = subprocess.run(claim, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    claimed = out.stdout.strip()
    assert claimed not in taken and claimed.startswith("runs/quickstart-") and claimed.endswith("-2")
    assert (tmp_path / claimed).is_dir() and not any((tmp_path / claimed).iterdir())

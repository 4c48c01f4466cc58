"""Run directories named after the clock: one per run, however many start in the same second."""

from __future__ import annotations

import pytest

import sslvit.cli.run_dir as run_dir


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

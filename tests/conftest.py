"""Shared helpers and fixtures: tiny models, tiny generated datasets, `sslvit` and tools/ as tests run them.

Tests never need a download. ``tests/unit/<area>/`` mirrors the package; ``tests/e2e/`` runs the
command line, the tools, resumes, DDP, compile and packaging.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from sslvit.nn.backbone import ViTConfig

REPO = Path(__file__).resolve().parents[1]
# Seconds-long configs of each method for the command-line tests.
TINY_CONFIGS = {name: str(REPO / "tests" / "configs" / f"{name}_tiny.yaml") for name in ("mae", "beit", "cpc")}

# Tiny models gain nothing from a second thread, and on a busy machine idle OpenMP threads spinning
# against other processes cost a lot: one thread per process, inherited by `sslvit` subprocesses.
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _ctrl_c_raises():
    """Every test starts with Python's own Ctrl-C handler: Lightning ignores SIGINT after it handled one
    (``signal.SIG_IGN`` during its shutdown) and never restores it, which would make a later Ctrl-C test
    run to the end as if nothing had been pressed."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def tiny_vit() -> ViTConfig:
    """A 2-block, 64-wide ViT on 16px images with 4px patches (a 4x4 grid)."""
    return ViTConfig(arch="vit_tiny", img_size=16, patch_size=4, embed_dim=64, depth=2, num_heads=4)


def write_image_folder(root: Path, classes: int = 3, per_class: int = 8, size: int = 16, seed: int = 0) -> Path:
    """An ImageFolder with train/ and val/, each class a distinct colour plus noise."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", per_class), ("val", max(2, per_class // 2))):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            base = np.zeros(3)
            base[c % 3] = 200
            for i in range(count):
                pixels = np.clip(base + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return write_image_folder(tmp_path / "images")


# ---- the command line and the scripts, as a user runs them ------------------------------------------
def sslvit(*args: str, timeout: float = 600, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m sslvit.cli ARGS`` in the repository root; ``tests/`` is importable (``faults.*`` callbacks)."""
    path = os.pathsep.join(p for p in (str(REPO / "tests"), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, **(env or {})}
    command = [sys.executable, "-m", "sslvit.cli", *args]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def load_script(path: str) -> ModuleType:
    """A script of ``tools/`` or ``benchmarks/`` (e.g. ``"tools/knn_eval.py"``) as a module: they are not a package."""
    file = REPO / path
    spec = importlib.util.spec_from_file_location(file.stem, file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_run(run_dir: Path) -> dict[str, Any]:
    """The logged ``train/loss`` values of a run directory and its ``last.ckpt`` (weights_only)."""
    with open(run_dir / "metrics.csv") as f:
        losses = [float(row["train/loss"]) for row in csv.DictReader(f) if row.get("train/loss")]
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return {"losses": losses, "ckpt": ckpt}

"""What a run directory holds besides the config: metrics that survive resumes, checkpoints written atomically.

``<run dir>/metrics.csv`` is appended to when a run resumes (Lightning's CSV logger would delete it),
and ``<run dir>/checkpoints/last.ckpt`` is refreshed every N steps by a write-then-rename, so a crash
never leaves half a checkpoint.
"""

from __future__ import annotations

import csv
import os
from typing import Any
from weakref import proxy

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from sslvit.errors import ConfigError


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer, but a resumed run appends to ``metrics.csv`` instead of deleting it."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = next(csv.reader(file), [])


class RunCSVLogger(CSVLogger):
    """CSV metrics in the run directory, kept across resumes (rows after the resumed step repeat)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint (per epoch by default) that also refreshes ``last.ckpt`` every N steps.

    Lightning makes per-step and per-epoch saving mutually exclusive; a long run wants both: an
    epoch history and a ``last.ckpt`` that is never more than ``last_every_n_steps`` steps old.
    Files are written atomically (to a temporary file, then renamed), so a crash mid-write
    leaves the previous ``last.ckpt`` intact.

    Args:
        last_every_n_steps: refresh ``last.ckpt`` every this many optimizer steps (None: only
            when Lightning saves a checkpoint anyway).
        **kwargs: Lightning's ``ModelCheckpoint`` arguments.
    """

    def __init__(self, last_every_n_steps: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if last_every_n_steps is not None and last_every_n_steps < 1:
            raise ConfigError(f"checkpoint.last_every_n_steps must be >= 1 or null, got {last_every_n_steps}")
        self.last_every_n_steps = last_every_n_steps

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        # Lightning writes through a temporary file in the system temp folder and moves it into
        # place, which is a plain (interruptible) copy when that folder is on another file system.
        # Writing next to the target and renaming is atomic on any local file system.
        if "://" in str(filepath):
            return super()._save_checkpoint(trainer, filepath)
        partial = f"{filepath}.partial"
        trainer.save_checkpoint(partial, self.save_weights_only)
        if trainer.is_global_zero:
            os.replace(partial, filepath)
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any) -> None:
        super().on_train_batch_end(trainer, pl_module, *args, **kwargs)
        n, step = self.last_every_n_steps, trainer.global_step
        if (
            n
            and step % n == 0
            and self._last_global_step_saved != step
            and not self._should_skip_saving_checkpoint(trainer)
        ):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

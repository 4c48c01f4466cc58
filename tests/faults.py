"""Fault injection for the reliability tests, loaded by `sslvit fit` subprocesses through `class_path`."""

from __future__ import annotations

import os
import shutil
import signal
import time

import lightning as L
import torch


class KillAtStep(L.Callback):
    """SIGKILL the training process right after optimizer step ``step`` (before its checkpoint, if any)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class KillWhileWritingCheckpoint(L.Callback):
    """At ``step``, the next checkpoint file is moved into place by a copy that dies halfway.

    Lightning writes checkpoints to the system temp folder and moves them into place; across file
    systems that move is a copy, and a crash during it is what would truncate a checkpoint.
    """

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step != self.step:
            return

        def dying_copy(src, dst, *args, **kwargs):
            data = open(src, "rb").read()
            with open(dst, "wb") as out:
                out.write(data[: len(data) // 2])
                out.flush()
                os.fsync(out.fileno())
            os.kill(os.getpid(), signal.SIGKILL)

        shutil.move = dying_copy


class PoisonBatchAtStep(L.Callback):
    """From training batch ``step`` on (0-based count of steps done), feed NaN images."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            batch["images"].fill_(float("nan"))
            assert torch.isnan(batch["images"]).all()


class FailAtTrainStart(L.Callback):
    """At ``on_train_start`` (the run directory's config.yaml and loggers are written, no step is taken yet):
    copy config.yaml as it is then to ``copy_config_to``, then raise ``error`` (``RuntimeError`` or
    ``KeyboardInterrupt``, Ctrl-C; ``None``: only copy)."""

    def __init__(self, copy_config_to: str, error: str | None = "RuntimeError") -> None:
        self.copy_config_to, self.error = copy_config_to, error

    def on_train_start(self, trainer, pl_module) -> None:
        shutil.copyfile(os.path.join(trainer.default_root_dir, "config.yaml"), self.copy_config_to)
        if self.error == "KeyboardInterrupt":
            raise KeyboardInterrupt
        if self.error is not None:
            raise RuntimeError("injected failure at train start")


class CtrlCAtStep(L.Callback):
    """Ctrl-C (SIGINT to this process) as training batch ``step`` begins (0-based count of steps done)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


class IdleAroundTraining(L.Callback):
    """Sleeps ``seconds`` before training starts and after it ended: time a run spends that is not training."""

    def __init__(self, seconds: float = 1.0) -> None:
        self.seconds = seconds

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        time.sleep(self.seconds)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        time.sleep(self.seconds)

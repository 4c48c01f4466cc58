"""Train for a wall-clock budget: the learning-rate schedule follows the clock, and training stops when time is up.

Planning a step count from a short throughput probe misjudges runs whose speed changes (data loading
that warms up, validation, methods slower than the probe); following the clock does not: however
fast the machine, the method or the loader, the cosine ends exactly when the budget does.

    trainer:
      callbacks:
        - class_path: sslvit.cli.TimeBudget
          init_args: {minutes: 20}
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from sslvit.errors import ConfigError
from sslvit.optim import WarmupCosine

RESOLUTION = 100_000  # schedule positions per budget: progress is handed to WarmupCosine as a step count


class TimeBudget(Callback):
    """Fit the warmup + cosine schedule to ``minutes`` of wall clock, then stop training.

    Progress is elapsed / budget, where elapsed counts every second since training started
    (validation and checkpointing included) and is carried across resumes in the checkpoint. Each
    LambdaLR of the model (sslvit's methods have one, stepped per optimizer step) is given a
    schedule of progress instead of steps: linear warmup over ``warmup_fraction`` of the budget,
    then cosine decay to the floor of the model's own schedule (``min_lr``). Every optimizer group
    keeps its base rate, so layer-wise decay and lr scaling are unchanged. Training stops after the
    step that spends the budget, followed by the validation Lightning runs when a run stops early.
    ``trainer.max_epochs``/``max_steps`` still stop it if they come first; when neither is set
    (-1), the budget alone decides.

    Args:
        minutes: the budget.
        warmup_fraction: part of the budget spent warming up (0.05: 5 of 100 epochs, as MAE's fine-tuning
            and its pretraining, 40 of 800, do).
    """

    def __init__(self, minutes: float, warmup_fraction: float = 0.05) -> None:
        if minutes <= 0:
            raise ConfigError(f"TimeBudget.minutes must be positive, got {minutes}")
        if not 0.0 <= warmup_fraction < 1.0:
            raise ConfigError(f"TimeBudget.warmup_fraction must be in [0, 1), got {warmup_fraction}")
        self.budget_s, self.warmup_fraction = minutes * 60.0, warmup_fraction
        self.elapsed_before = 0.0  # seconds spent by the run before it was resumed
        self._start: float | None = None

    @property
    def elapsed(self) -> float:
        """Seconds of the budget spent so far."""
        return self.elapsed_before + (time.monotonic() - self._start if self._start is not None else 0.0)

    @property
    def progress(self) -> float:
        """Fraction of the budget spent, in [0, 1]."""
        return min(1.0, self.elapsed / self.budget_s)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and trainer.max_steps == -1 and trainer.max_epochs in (None, -1):
            # Only the budget ends this run. A step limit that never binds keeps the model's own
            # schedule (which needs a length, and which this callback replaces) well defined.
            trainer.fit_loop.epoch_loop.max_steps = 2**62

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.monotonic()
        for config in trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            if not isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
                raise ConfigError(
                    f"TimeBudget drives LambdaLR schedules (every sslvit method's); "
                    f"{type(scheduler).__name__} is not one"
                )
            floors = [getattr(f, "min_ratio", 0.0) for f in scheduler.lr_lambdas]
            scheduler.lr_lambdas = [progress_schedule(self, floor) for floor in floors]
            # the learning rate of the coming step, from the clock
            groups = scheduler.optimizer.param_groups
            for group, base, factor in zip(groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True):
                group["lr"] = base * factor(scheduler.last_epoch)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self.elapsed >= self.budget_s:
            trainer.should_stop = True

    def state_dict(self) -> dict[str, float]:
        return {"elapsed": self.elapsed, "budget_s": self.budget_s}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.elapsed_before = float(state["elapsed"])


def progress_schedule(budget: TimeBudget, min_ratio: float) -> Callable[[int], float]:
    """A LambdaLR factor that ignores the step: warmup + cosine of the budget's progress.

    A closure rather than an object: LambdaLR saves the attributes of callable objects in checkpoints,
    and a reference to the callback would make them unloadable with ``weights_only=True``.
    """
    shape = WarmupCosine(int(round(budget.warmup_fraction * RESOLUTION)), RESOLUTION, min_ratio=min_ratio)

    def factor(step: int) -> float:
        return shape(int(budget.progress * RESOLUTION))

    return factor

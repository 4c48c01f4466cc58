"""Train for a budget of wall clock or of FLOPs: the learning-rate schedule follows what is spent, and
training stops when the budget is.

Planning a step count from a short throughput probe misjudges runs whose speed changes; following the
budget does not. A **wall-clock** budget ends the cosine exactly when the time is up, however fast the
machine. A **FLOP** budget makes a run mean the same on any machine: the step count is the budget over
the FLOPs of one training step (counted by torch from the shapes, :mod:`sslvit.flops`), so an Intel AMX
VM, an AMD AVX2 VM, a GPU, or two runs sharing one machine train the same steps on the same schedule.

    trainer:
      callbacks:
        - class_path: sslvit.cli.FlopBudget      # or sslvit.cli.TimeBudget with init_args: {minutes: 20}
          init_args: {petaflops: 0.05}
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from sslvit.errors import ConfigError
from sslvit.flops import flop_counter
from sslvit.optim import WarmupCosine

RESOLUTION = 100_000  # schedule positions per budget: progress is handed to WarmupCosine as a step count


class Budget(Callback):
    """Fit the model's warmup + cosine schedule to a budget, then stop training (subclasses say what is spent).

    Each LambdaLR of the model (sslvit's methods have one, stepped per optimizer step) is given a
    schedule of progress (spent / budget) instead of steps: linear warmup over ``warmup_fraction`` of
    the budget, then cosine decay to the floor of the model's own schedule (``min_lr``). Every optimizer
    group keeps its base rate, so layer-wise decay and lr scaling are unchanged. Training stops after
    the step that spends the budget, followed by the validation Lightning runs when a run stops early.
    ``trainer.max_epochs``/``max_steps`` still stop it if they come first; when neither is set (-1),
    the budget alone decides. What was spent travels in checkpoints, so a resumed run continues it.
    """

    name = "budget"

    def __init__(self, warmup_fraction: float = 0.05) -> None:
        if not 0.0 <= warmup_fraction < 1.0:
            raise ConfigError(f"{type(self).__name__}.warmup_fraction must be in [0, 1), got {warmup_fraction}")
        self.warmup_fraction = warmup_fraction

    @property
    def progress(self) -> float:
        """Fraction of the budget spent, in [0, 1]."""
        raise NotImplementedError

    def progress_at(self, step: int) -> float:
        """Fraction of the budget spent when ``step`` optimizer steps are done (the schedule's position)."""
        return self.progress

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and trainer.max_steps == -1 and trainer.max_epochs in (None, -1):
            # Only the budget ends this run. A step limit that never binds keeps the model's own
            # schedule (which needs a length, and which this callback replaces) well defined.
            trainer.fit_loop.epoch_loop.max_steps = 2**62

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for config in trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            if not isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
                raise ConfigError(
                    f"{type(self).__name__} drives LambdaLR schedules (every sslvit method's); "
                    f"{type(scheduler).__name__} is not one"
                )
            floors = [getattr(f, "min_ratio", 0.0) for f in scheduler.lr_lambdas]
            scheduler.lr_lambdas = [progress_schedule(self, floor) for floor in floors]
            # the learning rate of the coming step, from what has been spent
            groups = scheduler.optimizer.param_groups
            for group, base, factor in zip(groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True):
                group["lr"] = base * factor(scheduler.last_epoch)
        if self.progress_at(trainer.global_step) >= 1.0:  # resumed from the end of the budget: no step more
            trainer.should_stop = True

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self.progress_at(trainer.global_step) >= 1.0:
            trainer.should_stop = True


class TimeBudget(Budget):
    """A budget of wall-clock ``minutes``: progress is elapsed / budget, where elapsed counts every second
    since training started (validation and checkpointing included) and is carried across resumes.

    Args:
        minutes: the budget.
        warmup_fraction: part of the budget spent warming up (0.05: 5 of 100 epochs, as MAE's fine-tuning
            and its pretraining, 40 of 800, do).
    """

    def __init__(self, minutes: float, warmup_fraction: float = 0.05) -> None:
        if minutes <= 0:
            raise ConfigError(f"TimeBudget.minutes must be positive, got {minutes}")
        super().__init__(warmup_fraction)
        self.budget_s = minutes * 60.0
        self.elapsed_before = 0.0  # seconds spent by the run before it was resumed
        self._start: float | None = None

    @property
    def elapsed(self) -> float:
        """Seconds of the budget spent so far."""
        return self.elapsed_before + (time.monotonic() - self._start if self._start is not None else 0.0)

    @property
    def progress(self) -> float:
        return min(1.0, self.elapsed / self.budget_s)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.monotonic()
        super().on_train_start(trainer, pl_module)

    def state_dict(self) -> dict[str, float]:
        return {"elapsed": self.elapsed, "budget_s": self.budget_s}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.elapsed_before = float(state["elapsed"])


class StepFlops(Callback):
    """Counts the FLOPs of one optimizer step: the run's first (forward and backward, up to its optimizer
    step: every accumulated batch; x the number of processes), with torch's ``FlopCounterMode`` (matrix
    products, convolutions and attention, from their shapes: :mod:`sslvit.flops`). The count is a property
    of the model and the batch, so it is the same on any machine; it is kept in checkpoints.

    :class:`FlopBudget` plans its steps with one; a run on another budget adds one to report what it spent.
    """

    def __init__(self) -> None:
        self.flops_per_step: float | None = None
        self._counter: Any = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self.flops_per_step is None and self._counter is None:
            self._counter = flop_counter()
            self._counter.__enter__()

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self._counter is not None:  # the first step's forward and backward passes: counted, before the schedule
            self._counter.__exit__(None, None, None)
            self.flops_per_step = float(self._counter.get_total_flops()) * trainer.world_size
            self._counter = None
            if self.flops_per_step <= 0:
                raise ConfigError("the training step counts no FLOPs (no matrix products?)")

    def state_dict(self) -> dict[str, float | None]:
        return {"flops_per_step": self.flops_per_step}

    def load_state_dict(self, state: dict[str, float | None]) -> None:
        self.flops_per_step = state["flops_per_step"]


class FlopBudget(Budget):
    """A budget of ``petaflops`` (10^15 floating-point operations) of training steps, forward and backward.

    The FLOPs of one optimizer step are counted on the run's first (:class:`StepFlops`), so the run trains
    ``ceil(budget / step FLOPs)`` steps whatever the machine; progress after step s is
    ``s x step FLOPs / budget``. Logged: ``budget/petaflops`` (spent so far). The count is kept in
    checkpoints: a resumed run continues the same schedule.

    Args:
        petaflops: the budget (``configs/mae/cifar10_vit_tiny.yaml``: 0.893 GFLOP per image, forward and
            backward, so 0.1 PFLOP is 112,000 images).
        warmup_fraction: part of the budget spent warming up.
    """

    def __init__(self, petaflops: float, warmup_fraction: float = 0.05) -> None:
        if petaflops <= 0:
            raise ConfigError(f"FlopBudget.petaflops must be positive, got {petaflops}")
        super().__init__(warmup_fraction)
        self.budget = petaflops * 1e15
        self.step_flops = StepFlops()
        self.steps = 0  # optimizer steps trained, this run and the ones it resumed

    @property
    def flops_per_step(self) -> float | None:
        return self.step_flops.flops_per_step

    @property
    def spent(self) -> float:
        """FLOPs spent so far."""
        return self.steps * (self.flops_per_step or 0.0)

    @property
    def progress(self) -> float:
        return self.progress_at(self.steps)

    def progress_at(self, step: int) -> float:
        return min(1.0, step * (self.flops_per_step or 0.0) / self.budget)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.steps = trainer.global_step
        super().on_train_start(trainer, pl_module)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self.step_flops.on_train_batch_start(trainer, pl_module, *args)

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self.step_flops.on_before_optimizer_step(trainer, pl_module, *args)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self.steps = trainer.global_step
        pl_module.log("budget/petaflops", self.spent / 1e15, on_step=True, on_epoch=False)
        super().on_train_batch_end(trainer, pl_module, *args)

    def state_dict(self) -> dict[str, float | None]:
        return {**self.step_flops.state_dict(), "steps": self.steps, "budget": self.budget}

    def load_state_dict(self, state: dict[str, float | None]) -> None:
        self.step_flops.load_state_dict(state)


def progress_schedule(budget: Budget, min_ratio: float) -> Callable[[int], float]:
    """A LambdaLR factor that ignores the step: warmup + cosine of the budget's progress.

    A closure rather than an object: LambdaLR saves the attributes of callable objects in checkpoints,
    and a reference to the callback would make them unloadable with ``weights_only=True``.
    """
    shape = WarmupCosine(int(round(budget.warmup_fraction * RESOLUTION)), RESOLUTION, min_ratio=min_ratio)

    def factor(step: int) -> float:
        return shape(int(budget.progress_at(step) * RESOLUTION))

    return factor

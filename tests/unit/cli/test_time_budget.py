"""TimeBudget: the learning rate follows the wall clock, training stops when the budget is spent, resumes keep it."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import sslvit.cli.time_budget as time_budget
from sslvit.cli import TimeBudget
from sslvit.errors import ConfigError
from sslvit.eval import FineTune
from sslvit.optim import WarmupCosine

TINY = dict(arch="vit_tiny", img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2)
SECONDS_PER_STEP = 6.0


class FakeClock:
    """time.monotonic for the callback: advanced by hand, SECONDS_PER_STEP per training step."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


class Tick(L.Callback):
    def __init__(self, clock: FakeClock) -> None:
        self.clock, self.lrs = clock, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.lrs.append([group["lr"] for group in trainer.optimizers[0].param_groups])

    def on_train_batch_end(self, *args) -> None:
        self.clock.now += SECONDS_PER_STEP


def fit(tmp_path, clock, budget, max_epochs=-1, ckpt_path=None, max_steps=-1):
    torch.manual_seed(0)
    model = FineTune(backbone=TINY, num_classes=2, layer_decay=0.5, min_lr=1e-5, base_lr=3.2e-2, mixup=0, cutmix=0)
    images, labels = torch.randn(32, 3, 16, 16), torch.arange(32) % 2
    loader = DataLoader(TensorDataset(images, labels), batch_size=8)
    tick = Tick(clock)
    trainer = L.Trainer(
        max_epochs=max_epochs, max_steps=max_steps, callbacks=[tick, budget], logger=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp_path, enable_checkpointing=False,
    )  # fmt: skip
    trainer.fit(model, loader, ckpt_path=ckpt_path)
    return trainer, tick


def test_the_schedule_follows_the_clock_and_training_stops_at_the_budget(tmp_path, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(time_budget, "time", clock)
    budget = TimeBudget(minutes=1.0, warmup_fraction=0.2)  # 60 s: 10 steps of 6 s, warmup over the first 12 s
    trainer, tick = fit(tmp_path, clock, budget)
    assert trainer.global_step == 10, "the step that spends the budget is the last (no max_steps, no max_epochs)"
    shape = WarmupCosine(20_000, 100_000, min_ratio=1e-5 / 1e-3)
    base = [group["initial_lr"] for group in trainer.optimizers[0].param_groups]
    assert sorted(set(base)) == [2.5e-4, 5e-4, 1e-3], "each layer-decay group keeps its own base rate"
    for step, lrs in enumerate(tick.lrs):
        # the scheduler sets the rate of step n right after step n - 1, before the clock moves on; the
        # first step's is set when training starts
        elapsed = max(0, step - 1) * SECONDS_PER_STEP
        factor = shape(int(elapsed / 60.0 * 100_000))
        assert lrs == pytest.approx([b * factor for b in base], rel=1e-6), f"step {step}"
    assert tick.lrs[2][-1] > tick.lrs[1][-1] and tick.lrs[-1][-1] < tick.lrs[3][-1], "warmup, then decay"


def test_the_first_limit_reached_stops_training(tmp_path, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(time_budget, "time", clock)
    trainer, _ = fit(tmp_path, clock, TimeBudget(minutes=10.0), max_epochs=1)
    assert trainer.global_step == 4, "one epoch of 4 steps ends before the budget of 100 steps"


def test_a_resumed_run_continues_the_budget(tmp_path, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(time_budget, "time", clock)
    first = TimeBudget(minutes=1.0)
    trainer, _ = fit(tmp_path, clock, first, max_steps=4)
    trainer.save_checkpoint(tmp_path / "four.ckpt")
    state = torch.load(tmp_path / "four.ckpt", weights_only=True)  # the callback's state loads safely
    assert state["callbacks"]["TimeBudget"]["elapsed"] == pytest.approx(4 * SECONDS_PER_STEP)
    clock.now += 3600  # time between the crash and the resume does not count
    trainer, _ = fit(tmp_path, clock, TimeBudget(minutes=1.0), ckpt_path=str(tmp_path / "four.ckpt"))
    assert trainer.global_step == 10, "6 more steps spend the remaining 36 s"


def test_bad_budgets_are_config_errors():
    with pytest.raises(ConfigError, match="TimeBudget.minutes"):
        TimeBudget(minutes=0)
    with pytest.raises(ConfigError, match="TimeBudget.warmup_fraction"):
        TimeBudget(minutes=1, warmup_fraction=1.0)

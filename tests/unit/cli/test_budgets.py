"""TimeBudget: the learning rate follows the wall clock, training stops when the budget is spent, resumes keep it."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import sslvit.cli.budgets as time_budget
from sslvit.cli import FlopBudget, TimeBudget
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
        max_epochs=max_epochs,
        max_steps=max_steps,
        callbacks=[tick, budget],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
        enable_checkpointing=False,
    )
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
    with pytest.raises(ConfigError, match="FlopBudget.petaflops"):
        FlopBudget(petaflops=-1)


def vit_step_flops(
    batch: int,
    tokens: int = 17,
    patches: int = 16,
    dim: int = 32,
    depth: int = 1,
    patch_values: int = 3 * 4 * 4,
    classes: int = 2,
) -> int:
    """FLOPs (2 per multiply-add) of one training step of the tiny FineTune ViT, written out by hand: every
    linear layer's product again twice in the backward pass (input and weight gradients), the patch
    projection once (its input, the images, needs no gradient), and attention's two products five times
    (fused attention's backward recomputes the scores: torch counts it as 2.5 forwards)."""
    linear = depth * tokens * 2 * (3 * dim * dim + dim * dim + 4 * dim * dim + 4 * dim * dim)  # qkv, proj, fc1, fc2
    attention = depth * 2 * 2 * tokens * tokens * dim  # q k^T and (attention) v
    head, patch = 2 * dim * classes, 2 * patches * patch_values * dim
    return batch * (3 * (linear + head) + 2 * patch) + batch * attention * 7 // 2


def test_a_flop_budget_trains_the_steps_it_buys_on_any_machine(tmp_path):
    """The step's FLOPs are counted from the shapes (no clock): the budget of 7.5 steps trains 8, on a
    schedule of spent FLOPs, and a resumed run continues it."""
    per_step = vit_step_flops(batch=8)
    budget = FlopBudget(petaflops=7.5 * per_step / 1e15, warmup_fraction=0.2)
    trainer, tick = fit(tmp_path, FakeClock(), budget)
    assert budget.flops_per_step == per_step, "torch's count of the step equals the hand count"
    assert trainer.global_step == 8, "the step that spends the budget is the last"
    shape = WarmupCosine(20_000, 100_000, min_ratio=1e-5 / 1e-3)
    base = [group["initial_lr"] for group in trainer.optimizers[0].param_groups]
    for step, lrs in enumerate(tick.lrs):  # the rate of step n follows the FLOPs of the n steps before it
        factor = shape(int(min(1.0, step / 7.5) * 100_000))
        assert lrs == pytest.approx([b * factor for b in base], rel=1e-6), f"step {step}"
    # Stopped after 3 steps and resumed: the same 8 steps on the same schedule.
    first = FlopBudget(petaflops=7.5 * per_step / 1e15, warmup_fraction=0.2)
    fit(tmp_path, FakeClock(), first, max_steps=3)[0].save_checkpoint(tmp_path / "three.ckpt")
    again = FlopBudget(petaflops=7.5 * per_step / 1e15, warmup_fraction=0.2)
    trainer, resumed = fit(tmp_path, FakeClock(), again, ckpt_path=str(tmp_path / "three.ckpt"))
    assert trainer.global_step == 8 and again.flops_per_step == per_step
    assert sum(resumed.lrs, []) == pytest.approx(sum(tick.lrs[3:], []), rel=1e-6)
    # Resumed from its end (a rerun of a finished run): the budget is spent, no step more.
    trainer.save_checkpoint(tmp_path / "end.ckpt")
    done = FlopBudget(petaflops=7.5 * per_step / 1e15, warmup_fraction=0.2)
    assert fit(tmp_path, FakeClock(), done, ckpt_path=str(tmp_path / "end.ckpt"))[0].global_step == 8


def test_a_flop_budget_from_the_command_line_resumes_from_a_weights_only_checkpoint(tmp_path):
    from conftest import TINY_CONFIGS
    from sslvit.cli import run_cli

    budget = '[{"class_path": "sslvit.cli.FlopBudget", "init_args": {"petaflops": 1e-7}}]'
    args = ["fit", "--config", TINY_CONFIGS["mae"], "--trainer.default_root_dir", str(tmp_path / "run"),
            "--trainer.max_steps", "-1", "--trainer.max_epochs", "-1", "--trainer.callbacks", budget]  # fmt: skip
    cli = run_cli(args)
    (callback,) = [c for c in cli.trainer.callbacks if isinstance(c, FlopBudget)]
    steps = cli.trainer.global_step
    assert steps == -(-1e8 // callback.flops_per_step) and steps > 1
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["callbacks"]["FlopBudget"]["flops_per_step"] == callback.flops_per_step

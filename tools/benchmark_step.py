"""Images per second of a training step of any sslvit method, measured inside a real `sslvit fit` run.

    python tools/benchmark_step.py --steps 20 --warmup 5 -- --config configs/beit/cifar10_vit_tiny.yaml \\
        --data.root ../shared/data/cifar10 --data.dataset imagefolder --model.init_args.tokenizer runs/tokenizer-cifar10

Everything after `--` is passed to `sslvit fit` unchanged; the run goes to a temporary directory on
one device, without validation. A step is timed from the start of a batch (already loaded) to the end
of its optimizer step: forward, loss, backward, clipping, update (for BEiT: tokenization and masking too).
Prints the median over the timed steps and the throughput including data loading.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from lightning.pytorch import Callback
from sslvit.cli import SSLCLI
from sslvit.data import SSLDataModule
from sslvit.methods.base import SSLMethod


class StepTimer(Callback):
    """Wall-clock seconds of each training step (compute only) and between step starts (with data loading)."""

    def __init__(self) -> None:
        self.compute: list[float] = []
        self.starts: list[float] = []

    @staticmethod
    def _now(trainer) -> float:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.starts.append(self._now(trainer))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.compute.append(self._now(trainer) - self.starts[-1])


class TimedCLI(SSLCLI):
    timer = StepTimer()

    def instantiate_trainer(self, **kwargs):
        trainer = super().instantiate_trainer(**kwargs)
        trainer.callbacks.append(self.timer)
        return trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("fit_args", nargs=argparse.REMAINDER, help="-- then the arguments of `sslvit fit`")
    args = parser.parse_args()
    fit_args = args.fit_args[1:] if args.fit_args[:1] == ["--"] else args.fit_args
    with tempfile.TemporaryDirectory() as run_dir:
        forced = [
            "--trainer.default_root_dir", run_dir, "--trainer.max_steps", str(args.warmup + args.steps),
            "--trainer.limit_val_batches", "0", "--trainer.devices", "1",
            "--trainer.num_nodes", "1", "--trainer.strategy", "auto", "--trainer.enable_progress_bar", "false",
            "--trainer.accumulate_grad_batches", "1",
        ]  # fmt: skip
        cli = TimedCLI(
            SSLMethod, SSLDataModule, subclass_mode_model=True, save_config_kwargs={"overwrite": True},
            args=["fit", *fit_args, *forced],
        )  # fmt: skip
    timer, batch = cli.timer, cli.datamodule.batch_size
    compute = timer.compute[args.warmup :]
    between = [b - a for a, b in zip(timer.starts[args.warmup :], timer.starts[args.warmup + 1 :], strict=False)]
    step = statistics.median(compute)
    trainer = cli.trainer
    print(
        f"{type(cli.model).__name__} {cli.model.backbone_config.arch} {cli.model.backbone_config.img_size}px/"
        f"{cli.model.backbone_config.patch_size}, batch {batch}, {trainer.strategy.root_device}, precision "
        f"{trainer.precision}, {torch.get_num_threads()} torch threads"
    )
    print(
        f"training step: {step:.3f} s median over {len(compute)} steps (after {args.warmup} warm-up) "
        f"-> {batch / step:.1f} images/s"
    )
    if between:
        print(f"with data loading: {batch / statistics.median(between):.1f} images/s")


if __name__ == "__main__":
    main()

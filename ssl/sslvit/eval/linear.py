"""Linear probe on frozen features, MAE protocol: BatchNorm1d(affine=False) + Linear, no weight decay.

Optimizer: LARS (MAE) or SGD, both with momentum 0.9; linear warmup then cosine decay, updated every
step; ``lr = base_lr * batch_size / 256``. Several base learning rates are trained at once as
parallel heads fed the same batches (their BatchNorm, having no parameters, is shared exactly).

The learning rate is chosen on a held-out, class-balanced 10% of the train split; the chosen one is
retrained on the whole train split and val is evaluated once (:mod:`sslvit.eval.selection`).
Choosing on val, as the sweeps of MAE and DINO report, is ``selection="val"``, labelled optimistic.

Two ways to feed the heads, both trained as :class:`ProbeSettings` say:
- :func:`linear_probe`: cached features of the deterministic eval transform, no augmentation
  (seconds on a CPU once the features exist);
- :func:`sslvit.eval.linear_protocol.linear_probe_protocol`: RandomResizedCrop + horizontal flip
  through the frozen backbone every epoch, as the papers do.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from sslvit.errors import ConfigError
from sslvit.eval.features import Features
from sslvit.eval.knn import topk_accuracy
from sslvit.eval.selection import LinearProbeResult, Selection, TrainHeads, choose_and_report
from sslvit.optim import WarmupCosine

OptimizerName = Literal["lars", "sgd"]
# Base learning rates (per 256 images) tried in parallel. LARS steps are relative to the weight
# norm (trust coefficient 0.001), so its useful range sits far above SGD's.
DEFAULT_BASE_LRS: dict[str, tuple[float, ...]] = {
    "lars": (0.3, 1.0, 3.0, 10.0, 30.0, 100.0),
    "sgd": (0.01, 0.03, 0.1, 0.3, 1.0, 3.0),
}
SMALL_STEP_MACS = 1 << 24  # below this many multiply-adds per step, the heads train on one CPU thread


class ParallelLinearHeads(nn.Module):
    """H linear classifiers behind one BatchNorm1d(affine=False): features [N, D] -> logits [H, N, C]."""

    def __init__(self, dim: int, num_classes: int, num_heads: int, seed: int = 0) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        self.weight = nn.Parameter(torch.empty(num_heads, num_classes, dim))  # [H, C, D]
        self.bias = nn.Parameter(torch.zeros(num_heads, num_classes))  # [H, C]
        # MAE's head initialisation, from its own generator: the same seed gives the same probe.
        nn.init.trunc_normal_(self.weight, std=0.01, generator=torch.Generator().manual_seed(seed))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        h, c, d = self.weight.shape
        logits = F.linear(self.norm(features), self.weight.reshape(h * c, d), self.bias.reshape(h * c))
        return logits.view(-1, h, c).transpose(0, 1)


class HeadwiseSGD:
    """Momentum SGD (no weight decay) for parameters stacked along a leading head axis ``[H, ...]``.

    Head h steps with learning rate ``lrs[h] * factor``. With ``lars``, the gradient of each head's
    weight matrix is first scaled by its trust ratio ``eta * ||w_h|| / ||g_h||`` (1 where a norm is
    zero); biases are not scaled, as in MAE's LARS, which exempts one-dimensional parameters.
    """

    def __init__(
        self,
        weight: nn.Parameter,
        bias: nn.Parameter,
        lrs: torch.Tensor,
        momentum: float = 0.9,
        lars: bool = True,
        trust_coefficient: float = 0.001,
    ) -> None:
        self.weight, self.bias, self.lrs = weight, bias, lrs.to(weight)
        self.momentum, self.lars, self.trust_coefficient = momentum, lars, trust_coefficient
        self.buffers = [torch.zeros_like(weight), torch.zeros_like(bias)]

    @torch.no_grad()
    def step(self, factor: float = 1.0) -> None:
        for param, buffer, scaled in ((self.weight, self.buffers[0], self.lars), (self.bias, self.buffers[1], False)):
            grad = param.grad
            if scaled:
                w_norm = param.flatten(1).norm(dim=1)
                g_norm = grad.flatten(1).norm(dim=1)
                trust = torch.where((w_norm > 0) & (g_norm > 0), self.trust_coefficient * w_norm / g_norm, 1.0)
                grad = grad * trust.view(-1, *[1] * (grad.ndim - 1))
            buffer.mul_(self.momentum).add_(grad)
            lr = (self.lrs * factor).view(-1, *[1] * (param.ndim - 1))
            param.sub_(lr * buffer)

    def zero_grad(self) -> None:
        self.weight.grad = self.bias.grad = None


class ProbeTrainer:
    """Parallel heads, their optimizer and schedule; fed batches by one of the two probe paths."""

    def __init__(
        self,
        dim: int,
        num_classes: int,
        base_lrs: Sequence[float],
        batch_size: int,
        total_steps: int,
        warmup_steps: int,
        optimizer: OptimizerName = "lars",
        momentum: float = 0.9,
        device: torch.device | str = "cpu",
        seed: int = 0,
    ) -> None:
        if optimizer not in DEFAULT_BASE_LRS:
            raise ConfigError(f"optimizer={optimizer!r} is unknown; choose 'lars' (MAE) or 'sgd'")
        if not base_lrs or min(base_lrs) <= 0:
            raise ConfigError(f"learning rates must be positive, got {list(base_lrs)}")
        self.base_lrs = [float(lr) for lr in base_lrs]
        self.heads = ParallelLinearHeads(dim, num_classes, len(self.base_lrs), seed).to(device)
        lrs = torch.tensor(self.base_lrs) * batch_size / 256
        self.optimizer = HeadwiseSGD(self.heads.weight, self.heads.bias, lrs, momentum, lars=optimizer == "lars")
        self.schedule = WarmupCosine(min(warmup_steps, total_steps), total_steps)
        self.step_count, self.device = 0, torch.device(device)
        self.loss_sum, self.loss_count = torch.zeros(len(self.base_lrs), device=device), 0

    def train_step(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """One step of every head on features [B, D] with labels [B]."""
        self.heads.train()
        logits = self.heads(features.to(self.device))  # [H, B, C]
        h, b, c = logits.shape
        labels = labels.to(self.device)
        per_head = F.cross_entropy(logits.reshape(h * b, c), labels.repeat(h), reduction="none").view(h, b).mean(1)
        self.optimizer.zero_grad()
        per_head.sum().backward()  # heads are independent: each gets the gradient of its own mean loss
        self.optimizer.step(self.schedule(self.step_count))
        self.step_count += 1
        self.loss_sum += per_head.detach()
        self.loss_count += 1

    @torch.no_grad()
    def evaluate(self, val: Features) -> dict[float, dict[str, float]]:
        """Top-1/top-5 of every head on val features; BatchNorm uses its running statistics."""
        self.heads.eval()
        logits = torch.cat(
            [self.heads(chunk.to(self.device)) for chunk in val.features.split(4096)], dim=1
        ).cpu()  # [H, N, C]
        train_loss = (self.loss_sum / max(1, self.loss_count)).tolist()
        results = {}
        for lr, head_logits, loss in zip(self.base_lrs, logits, train_loss, strict=True):
            top1, top5 = topk_accuracy(head_logits, val.labels)
            results[lr] = {"top1": top1, "top5": top5, "train_loss": loss}
        return results


@contextmanager
def _threads_for(device: torch.device | str, macs_per_step: int) -> Iterator[None]:
    """One CPU thread for steps too small to split: OpenMP barriers cost more than they save there,
    and far more on a shared, oversubscribed machine (measured: 2 ms vs 78 ms per step)."""
    previous = torch.get_num_threads()
    small = torch.device(device).type == "cpu" and macs_per_step < SMALL_STEP_MACS
    if small:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if small:
            torch.set_num_threads(previous)


def check_probe_settings(epochs: int, batch_size: int) -> None:
    if epochs < 1 or batch_size < 2:
        raise ConfigError(f"epochs ({epochs}) must be >= 1 and batch_size ({batch_size}) >= 2 (BatchNorm)")


def num_classes_of(*label_sets: torch.Tensor) -> int:
    return int(max(int(labels.max()) for labels in label_sets if len(labels))) + 1


@dataclass(frozen=True)
class ProbeSettings:
    """How a linear probe's heads train and how their learning rate is chosen; both paths take them
    (:func:`linear_probe` on cached features, :func:`~sslvit.eval.linear_protocol.linear_probe_protocol`
    on augmented images; their defaults: :data:`CACHED_SETTINGS`, :data:`PROTOCOL_SETTINGS`).

    ``base_lrs`` (per 256 images; None: ``DEFAULT_BASE_LRS[optimizer]``) are scaled by ``batch_size / 256``
    and trained in parallel; ``selection``/``held_out_fraction`` choose among them
    (:func:`~sslvit.eval.selection.choose_and_report`); ``seed`` draws the heads, the shuffling and the
    held-out part.
    """

    base_lrs: tuple[float, ...] | None = None
    epochs: int = 100
    batch_size: int = 1024
    warmup_epochs: float = 10
    optimizer: OptimizerName = "lars"
    momentum: float = 0.9
    seed: int = 0
    selection: Selection = "held_out"
    held_out_fraction: float = 0.1

    def __post_init__(self) -> None:
        check_probe_settings(self.epochs, self.batch_size)
        if self.base_lrs is not None:  # a list from the command line or a config: hashable and immutable here
            object.__setattr__(self, "base_lrs", tuple(self.base_lrs))

    @property
    def lrs(self) -> tuple[float, ...]:
        """The base learning rates tried: ``base_lrs``, or the optimizer's defaults."""
        return tuple(self.base_lrs or DEFAULT_BASE_LRS.get(self.optimizer, ()))

    def trainer(
        self, dim: int, num_classes: int, lrs: Sequence[float], steps_per_epoch: int, device: torch.device | str
    ) -> ProbeTrainer:
        """Heads for ``lrs`` on ``dim`` features, scheduled over ``epochs`` of ``steps_per_epoch`` steps."""
        return ProbeTrainer(
            dim,
            num_classes,
            lrs,
            self.batch_size,
            self.epochs * steps_per_epoch,
            int(round(self.warmup_epochs * steps_per_epoch)),
            self.optimizer,
            self.momentum,
            device,
            self.seed,
        )

    def choose(
        self,
        train_heads: TrainHeads,
        held_features: Callable[[Sequence[int]], Features],
        train_labels: torch.Tensor,
        val: Features,
    ) -> LinearProbeResult:
        """Train heads for every learning rate and report the chosen one (:func:`choose_and_report`)."""
        return choose_and_report(
            train_heads, held_features, train_labels, val, self.lrs, self.selection, self.held_out_fraction, self.seed
        )

    def record(self) -> dict[str, Any]:
        """The settings a result's JSON record carries."""
        return {
            "optimizer": self.optimizer,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "warmup_epochs": self.warmup_epochs,
            "momentum": self.momentum,
            "base_lrs": list(self.lrs),
        }


# The defaults of each path: 100 epochs at batch 1024 on cached features; MAE's protocol, 90 epochs at batch 256.
CACHED_SETTINGS = ProbeSettings()
PROTOCOL_SETTINGS = ProbeSettings(epochs=90, batch_size=256)


def linear_probe(
    train: Features, val: Features, settings: ProbeSettings = CACHED_SETTINGS, device: torch.device | str = "cpu"
) -> LinearProbeResult:
    """Fast path: train heads on cached features [N, D] (shuffled each epoch, no augmentation)."""
    start = time.perf_counter()
    num_classes = num_classes_of(train.labels, val.labels)

    def train_heads(positions, test, lrs):
        data = train if positions is None else train.subset(positions)
        trainer = settings.trainer(data.dim, num_classes, lrs, -(-len(data) // settings.batch_size), device)
        features, labels = data.features.to(device), data.labels.to(device)
        generator = torch.Generator().manual_seed(settings.seed)
        with _threads_for(device, settings.batch_size * data.dim * len(lrs) * num_classes):
            for _ in range(settings.epochs):
                order = torch.randperm(len(data), generator=generator).to(device)
                for batch in order.split(settings.batch_size):
                    if len(batch) > 1:  # BatchNorm needs two samples
                        trainer.train_step(features[batch], labels[batch])
        return trainer.evaluate(test)

    result = settings.choose(train_heads, train.subset, train.labels, val)
    result.settings = {
        "path": "cached",
        **settings.record(),
        "num_train": len(train),
        "num_val": len(val),
        "feature_dim": train.dim,
    }
    result.seconds = time.perf_counter() - start
    return result

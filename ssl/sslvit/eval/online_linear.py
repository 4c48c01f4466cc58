"""Online linear probe during pretraining (solo-learn style): a Lightning callback for every method.

A linear head learns from the training batches as they pass, on features the frozen backbone gives
without gradients, with its own optimizer; at each validation it classifies the val batches and
logs ``online_linear/top1`` (progress bar) and ``online_linear/top5``. It costs one forward pass of
the encoder per training batch it learns from (``every_n_steps``) and follows the encoder as it
changes, so it is a trend line, not the final probe (``tools/linear_probe.py``).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.distributed as dist
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import nn

from sslvit.distributed import comm_device, world_is_distributed
from sslvit.errors import ConfigError
from sslvit.eval.features import dataset_targets, encode, feature_dim
from sslvit.eval.online import encoded_model


def _images_and_labels(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(batch, dict):
        return batch["images"], batch["labels"]
    return batch[0], batch[1]


class OnlineLinearProbe(Callback):
    """BatchNorm1d(affine=False) + Linear (MAE's probe head) on detached features of the training batches.

    The features come from :func:`sslvit.eval.features.encode`: eval mode (restored afterwards), no
    gradients, no random numbers drawn, so no gradient reaches the backbone and pretraining is the same
    with or without this callback. The head steps with its own SGD (momentum, no weight decay,
    constant learning rate); images labelled -1 (unlabelled, e.g. STL-10's) are skipped. Under DDP
    the head's gradients and BatchNorm statistics are averaged over ranks, so every rank holds the same
    head and logs the same accuracy. Its weights and optimizer state travel in checkpoints.

    Args:
        pooling: the features: ``cls``, ``mean``, ``cls_last<n>``, or ``native`` (the method's own).
        lr: learning rate of the head's SGD; the BatchNorm puts every feature on a unit scale.
        momentum: SGD momentum.
        every_n_steps: learn from every n-th training batch (each costs a forward pass of the encoder).
        seed: the head's initialisation.
    """

    def __init__(
        self, pooling: str = "cls", lr: float = 0.1, momentum: float = 0.9, every_n_steps: int = 1, seed: int = 0
    ) -> None:
        if lr <= 0 or every_n_steps < 1 or not 0.0 <= momentum < 1.0:
            raise ConfigError(
                f"OnlineLinearProbe: lr ({lr}) must be positive, every_n_steps ({every_n_steps}) >= 1 and momentum "
                f"({momentum}) in [0, 1)"
            )
        self.pooling, self.lr, self.momentum, self.every_n_steps, self.seed = pooling, lr, momentum, every_n_steps, seed
        self.head: nn.Sequential | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self._pending_state: dict[str, Any] | None = None
        self._hits = torch.zeros(3, dtype=torch.long)  # top-1 hits, top-5 hits, count

    def _model(self, pl_module: L.LightningModule) -> Any:
        return encoded_model(pl_module, self.pooling)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "build_dataset"):
            raise ConfigError("OnlineLinearProbe needs the trainer's datamodule to be an sslvit.data.SSLDataModule")
        if self.head is not None:
            return
        dim = feature_dim(self._model(pl_module), self.pooling)  # a bad pooling fails before training starts
        num_classes = max(dataset_targets(datamodule.build_dataset("train", None))) + 1
        linear = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(linear.weight, std=0.01, generator=torch.Generator().manual_seed(self.seed))
        nn.init.zeros_(linear.bias)
        self.head = nn.Sequential(nn.BatchNorm1d(dim, affine=False, eps=1e-6), linear)
        self.optimizer = torch.optim.SGD(self.head.parameters(), lr=self.lr, momentum=self.momentum)
        if self._pending_state is not None:  # resumed: the checkpoint was read before setup
            self.load_state_dict(self._pending_state)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._to(pl_module.device)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._to(pl_module.device)  # `sslvit validate` starts here, with the head of the checkpoint

    def _to(self, device: torch.device) -> None:
        self.head.to(device)
        for state in self.optimizer.state.values():  # momentum buffers restored on the CPU
            for key, value in state.items():
                if isinstance(value, torch.Tensor):
                    state[key] = value.to(device)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if batch_idx % self.every_n_steps:
            return
        images, labels = _images_and_labels(batch)
        labelled = labels >= 0
        features = encode(self._model(pl_module), images[labelled], self.pooling)  # detached, eval mode
        self.head.train()
        self.optimizer.zero_grad(set_to_none=False)
        if len(features) > 1:  # BatchNorm needs two samples
            with torch.enable_grad():
                loss = F.cross_entropy(self.head(features), labels[labelled].to(features.device))
                loss.backward()
        for param in self.head.parameters():  # every rank steps together, with or without labelled images here
            if param.grad is None:
                param.grad = torch.zeros_like(param)
        self._average_over_ranks([p.grad for p in self.head.parameters()])
        self.optimizer.step()

    @staticmethod
    def _average_over_ranks(tensors: list[torch.Tensor]) -> None:
        if not world_is_distributed():
            return
        for tensor in tensors:
            shared = tensor.to(comm_device())
            dist.all_reduce(shared)
            tensor.copy_(shared / dist.get_world_size())

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._hits.zero_()
        norm = self.head[0]
        self._average_over_ranks([norm.running_mean, norm.running_var])

    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int, *args: Any
    ) -> None:
        images, labels = _images_and_labels(batch)
        features = encode(self._model(pl_module), images, self.pooling)
        self.head.eval()
        with torch.no_grad():
            ranked = self.head(features).topk(min(5, self.head[1].out_features), dim=1).indices.cpu()
        hits = ranked == labels.cpu()[:, None]
        self._hits += torch.tensor([int(hits[:, 0].sum()), int(hits.any(dim=1).sum()), len(labels)])

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        counts = self._hits.clone().to(comm_device()) if world_is_distributed() else self._hits.clone()
        if world_is_distributed():
            dist.all_reduce(counts)
        top1, top5 = (100.0 * counts[:2].double() / max(1, int(counts[2]))).tolist()
        # identical on every rank after the sum; sync_dist only keeps Lightning from warning under DDP
        pl_module.log("online_linear/top1", top1, prog_bar=True, on_epoch=True, sync_dist=True)
        pl_module.log("online_linear/top5", top5, on_epoch=True, sync_dist=True)

    def state_dict(self) -> dict[str, Any]:
        if self.head is None:
            return {}
        return {"head": self.head.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        if self.head is None:
            self._pending_state = state_dict
            return
        self.head.load_state_dict(state_dict["head"])
        self.optimizer.load_state_dict(state_dict["optimizer"])

"""Callbacks that record what a `sslvit fit` subprocess trained on, loaded through `class_path`."""

from __future__ import annotations

import json

import lightning as L


class RecordKeys(L.Callback):
    """Writes the sample keys of every training batch of this rank to ``<path>.rank<R>.json`` (per epoch)."""

    def __init__(self, path: str) -> None:
        self.path, self.keys = path, {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.keys.setdefault(str(trainer.current_epoch), []).extend(batch["keys"].tolist())

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        with open(f"{self.path}.rank{trainer.global_rank}.json", "w") as file:
            json.dump(self.keys, file)

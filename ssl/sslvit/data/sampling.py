"""Training loaders that resume exactly and give every sample its own random key.

- :class:`KeyedSampler` shards a per-epoch permutation over ranks (a ``DistributedSampler``, so
  Lightning leaves it alone) and yields ``(index, key)`` pairs; after a restart it skips the
  batches the interrupted run had already trained on.
- :class:`KeyedDataset` draws each sample's augmentation from a generator seeded with its key.
- :class:`ResumableLoader` exposes the sampler's progress to Lightning's loop checkpointing.

Batches are dicts: ``images [N, C, H, W]``, ``labels [N]``, ``keys [N]`` (int64, kept on the
CPU), and ``skipped`` (how many unreadable images were dropped) when skipping is on.
"""

from __future__ import annotations

import warnings
from contextlib import nullcontext
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, default_collate

from sslvit.errors import CorruptImageError
from sslvit.seeding import keyed_rng, sample_key


class KeyedDataset(Dataset):
    """Wraps a dataset of ``(image, label)``; item ``(index, key)`` -> ``(image, label, key)``.

    The transform runs with torch's, Python's and NumPy's generators seeded with ``key``
    (:func:`sslvit.seeding.keyed_rng`; the caller's streams are untouched); ``random_items=False``
    skips that for datasets whose items draw no random numbers (device-resident images: indices).
    With ``skip_corrupt``, an unreadable image gives ``None``.
    """

    def __init__(self, dataset: Dataset, skip_corrupt: bool = False, random_items: bool = True) -> None:
        self.dataset, self.skip_corrupt, self.random_items = dataset, skip_corrupt, random_items

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]) -> tuple[Any, int, int] | None:
        index, key = item
        with keyed_rng(key) if self.random_items else nullcontext():
            try:
                image, label = self.dataset[index]
            except CorruptImageError as err:
                if not self.skip_corrupt:
                    raise
                warnings.warn(f"skipped: {err}", stacklevel=1)
                return None
        return image, label, key


def collate_keyed(samples: list[tuple[Any, int, int] | None], count_skipped: bool = False) -> dict[str, torch.Tensor]:
    """Collate ``(image, label, key)`` samples into a batch dict, dropping ``None`` (skipped) ones."""
    kept = [s for s in samples if s is not None]
    if not kept:
        raise CorruptImageError(f"every image of a batch of {len(samples)} was unreadable; see the warnings")
    images, labels, keys = (list(column) for column in zip(*kept, strict=True))
    if all(isinstance(image, torch.Tensor) and image.dim() == 3 and image.stride(0) == 1 for image in images):
        # channels-last crops (DecodeAndCrop): stacked as they lie in memory, not transposed on the CPU
        stacked = default_collate([image.permute(1, 2, 0) for image in images]).permute(0, 3, 1, 2)
    else:
        stacked = default_collate(images)
    batch = {"images": stacked, "labels": default_collate(labels), "keys": default_collate(keys).to(torch.int64)}
    if count_skipped:
        batch["skipped"] = torch.tensor(len(samples) - len(kept))
    return batch


class CollateKeyed:
    """Picklable collate function for worker processes."""

    def __init__(self, count_skipped: bool) -> None:
        self.count_skipped = count_skipped

    def __call__(self, samples: list[Any]) -> dict[str, torch.Tensor]:
        return collate_keyed(samples, self.count_skipped)


class KeyedSampler(DistributedSampler):
    """This rank's share of a seeded per-epoch permutation, as ``(index, key)`` pairs; resumable.

    ``batches_done`` counts the batches of the current epoch the training loop has consumed
    (the data module advances it); after ``load_state_dict`` the first epoch skips them.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = True,
        keys_vary_by_epoch: bool = True,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
        self.batch_size, self.keys_vary_by_epoch = batch_size, keys_vary_by_epoch
        self.batches_done, self._resume_epoch, self._resume_skip = 0, -1, 0

    @property
    def batches_per_epoch(self) -> int:
        return self.num_samples // self.batch_size

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.batches_done = 0
        super().set_epoch(epoch)

    def rank_indices(self) -> list[int]:
        """This rank's dataset indices for the current epoch, in order (DistributedSampler's interleaving)."""
        return list(super().__iter__())

    def __iter__(self):
        indices = self.rank_indices()
        skip = 0
        if self.epoch == self._resume_epoch:  # resuming inside this epoch: drop what was trained on
            skip, self._resume_epoch = self._resume_skip * self.batch_size, -1
            self.batches_done = self._resume_skip
        key_epoch = self.epoch if self.keys_vary_by_epoch else 0
        for index in indices[skip:]:
            yield index, sample_key(self.seed, key_epoch, index)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batches_done": self.batches_done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        epoch, done = state["epoch"], state["batches_done"]
        if done >= self.batches_per_epoch:  # saved at the end of an epoch: resume with the next one
            epoch, done = epoch + 1, 0
        # The loader may build its iterator before Lightning calls set_epoch: be on the right epoch now.
        self.epoch, self._resume_epoch, self._resume_skip = epoch, epoch, done


class ResumableLoader(DataLoader):
    """A DataLoader whose state (the sampler's position) Lightning saves in and restores from checkpoints."""

    def state_dict(self) -> dict[str, int]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.load_state_dict(state)

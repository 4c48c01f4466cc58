"""Per-sample random keys, and the global RNG state that checkpoints carry.

Every training sample gets a 63-bit key from (run seed, epoch, dataset index). Its augmentation
and its mask are drawn from generators seeded with that key, so they do not depend on the batch
it lands in, on the number of loader workers or devices, or on whether the run was interrupted
and resumed: what makes resumed and multi-device runs reproduce single uninterrupted ones.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

_MASK64 = (1 << 64) - 1


def splitmix64(x: int) -> int:
    """A well-mixed 64-bit hash of a 64-bit integer (Steele et al.'s SplitMix64 finalizer)."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def sample_key(seed: int, epoch: int, index: int) -> int:
    """Key of dataset item ``index`` in ``epoch`` of a run seeded with ``seed``: a non-negative int64."""
    return splitmix64(splitmix64(splitmix64(seed) ^ epoch) ^ index) >> 1


def sub_keys(keys: torch.Tensor, count: int) -> torch.Tensor:
    """[N, count] keys derived from each of ``keys`` [N]: for the parts of a sample that are encoded as separate
    rows (CPC's patches), so each part has its own random numbers, still a function of the sample's key."""
    rows = [[splitmix64(splitmix64(k) ^ part) >> 1 for part in range(count)] for k in keys.tolist()]
    return torch.tensor(rows, dtype=torch.int64).view(len(rows), count)


def keyed_rand(
    keys: torch.Tensor, *shape: int, salt: int = 0, device: torch.device | str | None = None
) -> torch.Tensor:
    """Uniform [0, 1) numbers, ``[N, *shape]``, row n drawn from a generator seeded by ``keys[n]``.

    ``salt`` gives an independent stream for each use (e.g. masks vs. augmentations).
    """
    generator = torch.Generator()
    rows = [torch.rand(shape, generator=generator.manual_seed(splitmix64(k ^ salt) >> 1)) for k in keys.tolist()]
    out = torch.stack(rows) if rows else torch.empty(0, *shape)
    return out.to(device) if device is not None else out


@contextmanager
def keyed_rng(key: int) -> Iterator[None]:
    """Seed the global CPU generators of torch, Python and NumPy with ``key`` inside the block.

    Transforms draw from all three (torchvision from torch; timm's RandAugment and crops from
    ``random`` and ``numpy``), so all three follow the key; the caller's streams are restored on
    exit. About 50 us per call. Only torch's CPU generator is seeded: ``torch.manual_seed`` would
    also queue a seed for every GPU backend, which costs about 100x more.
    """
    python_state, numpy_generator = random.getstate(), np.random.get_bit_generator()
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(key)
        random.seed(key)
        # NumPy's global functions draw from a swapped-in PCG64: seeding and restoring the legacy
        # Mersenne Twister would cost 10x more per sample.
        np.random.set_bit_generator(np.random.PCG64(key))
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_bit_generator(numpy_generator)


def random_keys(n: int) -> torch.Tensor:
    """Keys for a batch that came without any (drawn from the global torch RNG)."""
    return torch.randint(0, 2**62, (n,), dtype=torch.int64)


def capture_rng_state() -> dict[str, Any]:
    """The global RNG states (Python, NumPy, torch CPU and CUDA) in a form ``weights_only`` loading accepts."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])

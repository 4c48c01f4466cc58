"""Reading weights safely, and comparing a state dict with the model it should fill.

Every file goes through ``torch.load(weights_only=True)`` or safetensors: a pickle that would run
code when unpickled is refused with a clear message, and nothing in it is executed.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from sslvit.errors import CheckpointError

DAMAGED_FIX = "use an earlier checkpoint of the run (checkpoints/epoch*.ckpt) or the file's original copy"
# How every file torch.save writes begins: a zip archive (torch >= 1.6), or a pickle of protocol 2 to 5
# (the legacy format, and plain pickles of weights).
TORCH_SIGNATURES = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


def is_torch_file(path: Path) -> bool:
    """Whether ``path`` begins like a file of ``torch.save`` (or a pickle): what tells a damaged or unsafe
    checkpoint from a file that was never one (random bytes, text, an image renamed ``.pth``)."""
    with open(path, "rb") as f:
        return f.read(4).startswith(TORCH_SIGNATURES)


def safe_load(path: str | Path) -> dict[str, Any]:
    """Load a ``.ckpt``/``.pth``/``.pt`` with ``weights_only=True``, or a ``.safetensors`` file, on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes); {DAMAGED_FIX}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except SafetensorError as err:
            raise CheckpointError(f"{path} is not a readable safetensors file ({err}); {DAMAGED_FIX}") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (EOFError, RuntimeError, KeyError, ValueError, pickle.UnpicklingError) as err:
        if not is_torch_file(path):  # weights_only's unpickler calls such bytes "unsupported" pickle operations
            raise CheckpointError(
                f"{path} is not a checkpoint: it is neither a torch file (zip archive) nor a pickle; pass the "
                "checkpoint itself (an sslvit run's checkpoints/last.ckpt, an export folder, or weights saved with "
                "torch.save or safetensors)"
            ) from None
        if isinstance(err, pickle.UnpicklingError):
            detail = str(err).strip().splitlines()[0][:300]
            raise CheckpointError(
                f"refused to load {path}: it holds pickled objects beyond tensors and plain containers, and "
                f"unpickling them could run arbitrary code ({detail}). sslvit checkpoints never need that; "
                "if you trust the file, convert it to a plain state dict or safetensors first"
            ) from None
        # torch reports damage in many ways: EOFError (cut in the pickle), RuntimeError from the zip
        # reader (cut archive), KeyError/ValueError (not a torch file at all).
        detail = (str(err).strip().split(". ")[0].splitlines() or [type(err).__name__])[0][:160]
        raise CheckpointError(
            f"{path} is not a readable checkpoint: it is truncated or not a torch file ({detail}); {DAMAGED_FIX}"
        ) from None


def check_state_dict(
    expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor], source: str, required: set[str] | None = None
) -> None:
    """Raise a CheckpointError listing missing keys, unexpected keys and shape mismatches."""
    required = set(expected) if required is None else required
    missing = sorted(required - set(given))
    unexpected = sorted(set(given) - set(expected))
    shapes = sorted(
        f"{k}: checkpoint {tuple(given[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(given) & set(expected)
        if given[k].shape != expected[k].shape
    )
    if missing or unexpected or shapes:

        def listing(title: str, items: list[str]) -> str:
            more = f" ... and {len(items) - 20} more" if len(items) > 20 else ""
            return f"\n  {title} ({len(items)}): {', '.join(items[:20])}{more}" if items else ""

        raise CheckpointError(
            f"{source} does not match the model architecture:"
            + listing("missing keys", missing)
            + listing("unexpected keys", unexpected)
            + listing("shape mismatches", shapes)
            + "\nCheck that the model settings (arch, patch size, image size, decoder) match the checkpoint."
        )

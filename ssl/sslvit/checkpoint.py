"""Checkpoints: safe loading (any method's Lightning checkpoint, exported encoders, official MAE
files), export to timm, and the run's checkpoint callback.

Every file goes through ``torch.load(weights_only=True)`` or safetensors: a pickle that would run
code when unpickled is refused with a clear message, and nothing in it is executed.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any
from weakref import proxy

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from sslvit.backbone import TIMM_ARCH, VisionTransformer, ViTConfig
from sslvit.data import IMAGENET_MEAN, IMAGENET_STD
from sslvit.errors import ConfigError

if TYPE_CHECKING:
    from sslvit.methods.mae import MAE

BACKBONE_PREFIX = "backbone."
EXPORT_WEIGHTS, EXPORT_CONFIG = "model.safetensors", "config.json"
# Keys of the official MAE code that belong to the decoder; everything else is the encoder.
MAE_DECODER_KEYS = (
    "mask_token",
    "decoder_embed.",
    "decoder_pos_embed",
    "decoder_blocks.",
    "decoder_norm.",
    "decoder_pred.",
)


class CheckpointError(ValueError):
    """A checkpoint cannot be used: unsafe, of another architecture, or with mismatching weights."""


def safe_load(path: str | Path) -> dict[str, Any]:
    """Load a ``.ckpt``/``.pth``/``.pt`` with ``weights_only=True``, or a ``.safetensors`` file, on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        detail = str(err).strip().splitlines()[0][:300]
        raise CheckpointError(
            f"refused to load {path}: it holds pickled objects beyond tensors and plain containers, and "
            f"unpickling them could run arbitrary code ({detail}). sslvit checkpoints never need that; "
            "if you trust the file, convert it to a plain state dict or safetensors first"
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


def load_official_mae(model: MAE, path: str | Path) -> None:
    """Load an official facebookresearch/mae checkpoint (``{"model": state_dict}``) into an sslvit MAE.

    Encoder keys map to ``backbone.<key>``, decoder keys keep their names. The decoder may be
    absent (the released encoder-only files); every key present must match in name and shape.
    """
    state = safe_load(path)
    state = state.get("model", state)
    mapped = {k if k.startswith(MAE_DECODER_KEYS) else BACKBONE_PREFIX + k: v for k, v in state.items()}
    own = model.state_dict()
    has_decoder = any(k.startswith(MAE_DECODER_KEYS) for k in state)
    required = set(own) if has_decoder else {k for k in own if k.startswith(BACKBONE_PREFIX)}
    check_state_dict(own, mapped, f"official MAE checkpoint {path}", required)
    model.load_state_dict(mapped, strict=False)


def _lightning_backbone(path: Path) -> tuple[ViTConfig, dict[str, torch.Tensor], dict[str, Any]]:
    ckpt = safe_load(path)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{path} is not a Lightning checkpoint (no 'state_dict'); for plain weights export them")
    hparams = ckpt.get("hyper_parameters", {})
    if "backbone" not in hparams:
        raise CheckpointError(
            f"{path} was not written by an sslvit method: its hyper_parameters have no 'backbone' "
            f"(found {sorted(hparams)[:10]}), so the architecture is unknown"
        )
    state = {k[len(BACKBONE_PREFIX) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(BACKBONE_PREFIX)}
    config = ViTConfig.from_dict(hparams["backbone"])
    data = ckpt.get("datamodule_hyper_parameters", {})
    info = {
        "source": "lightning",
        "method": hparams.get("_class_path"),
        "hparams": hparams,
        "global_step": ckpt.get("global_step"),
        # evaluation defaults follow the data the model was trained on
        "image_size": data.get("image_size", config.img_size),
        **{k: data[k] for k in ("mean", "std", "eval_crop_fraction") if k in data},
    }
    return config, state, info


def _exported_backbone(folder: Path) -> tuple[ViTConfig, dict[str, torch.Tensor], dict[str, Any]]:
    config_file, weights = folder / EXPORT_CONFIG, folder / EXPORT_WEIGHTS
    if not config_file.is_file() or not weights.is_file():
        raise CheckpointError(f"{folder} is not an exported encoder: it needs {EXPORT_CONFIG} and {EXPORT_WEIGHTS}")
    config = json.loads(config_file.read_text())
    backbone = config.get("sslvit_backbone")
    if backbone is None:
        raise CheckpointError(f"{config_file} has no 'sslvit_backbone' entry; was it written by sslvit's export?")
    pre = config.get("pretrained_cfg", {})
    info = {"source": "exported", "hparams": config, "image_size": pre.get("input_size", [backbone["img_size"]])[-1]}
    info.update({k: pre[k] for k in ("mean", "std") if k in pre})
    if "crop_pct" in pre:
        info["eval_crop_fraction"] = pre["crop_pct"]
    return ViTConfig.from_dict(backbone), safe_load(weights), info


def load_backbone(path: str | Path) -> tuple[VisionTransformer, dict[str, Any]]:
    """The trained encoder of any sslvit checkpoint: a Lightning ``.ckpt`` or an exported folder.

    Returns the backbone (in eval mode, on the CPU) and a dict describing where it came from.
    """
    path = Path(path)
    if path.is_dir():
        config, state, info = _exported_backbone(path)
    elif path.is_file():
        config, state, info = _lightning_backbone(path)
    else:
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if not state:
        raise CheckpointError(f"{path} holds no backbone weights ('{BACKBONE_PREFIX}*' keys)")
    model = VisionTransformer(config)
    check_state_dict(model.state_dict(), state, f"checkpoint {path}")
    model.load_state_dict(state)
    return model.eval(), info


def export_backbone(
    backbone: VisionTransformer,
    folder: str | Path,
    img_size: int | None = None,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
    crop_pct: float = 1.0,
) -> Path:
    """Write ``model.safetensors`` (timm key names) and ``config.json`` (timm hub format) to ``folder``.

    ``img_size`` exports the encoder for another input size, with positions for that grid;
    ``mean``, ``std`` and ``crop_pct`` record the preprocessing the encoder expects.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = backbone.config
    if img_size is not None and img_size != config.img_size:
        config = ViTConfig(**{**config.to_dict(), "img_size": img_size})
    state = {k: v.detach().contiguous().cpu() for k, v in backbone.state_dict().items()}
    grid = config.grid_size
    state["pos_embed"] = backbone.position_table((grid, grid)).detach().contiguous().cpu()
    save_file(state, str(folder / EXPORT_WEIGHTS))
    kwargs = config.timm_kwargs()
    meta = {
        "architecture": TIMM_ARCH[config.arch],
        "num_classes": 0,
        "num_features": backbone.num_features,
        "global_pool": kwargs["global_pool"],
        "model_args": kwargs,
        "pretrained_cfg": {
            "input_size": [config.in_chans, config.img_size, config.img_size],
            "mean": list(mean),
            "std": list(std),
            "crop_pct": crop_pct,
            "interpolation": "bicubic",
            "num_classes": 0,
        },
        "sslvit_backbone": config.to_dict(),
    }
    (folder / EXPORT_CONFIG).write_text(json.dumps(meta, indent=2) + "\n")
    return folder


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint (per epoch by default) that also refreshes ``last.ckpt`` every N steps.

    Lightning makes per-step and per-epoch saving mutually exclusive; a long run wants both: an
    epoch history and a ``last.ckpt`` that is never more than ``last_every_n_steps`` steps old.
    Files are written atomically (to a temporary file, then renamed), so a crash mid-write
    leaves the previous ``last.ckpt`` intact.

    Args:
        last_every_n_steps: refresh ``last.ckpt`` every this many optimizer steps (None: only
            when Lightning saves a checkpoint anyway).
        **kwargs: Lightning's ``ModelCheckpoint`` arguments.
    """

    def __init__(self, last_every_n_steps: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if last_every_n_steps is not None and last_every_n_steps < 1:
            raise ConfigError(f"checkpoint.last_every_n_steps must be >= 1 or null, got {last_every_n_steps}")
        self.last_every_n_steps = last_every_n_steps

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        # Lightning writes through a temporary file in the system temp folder and moves it into
        # place, which is a plain (interruptible) copy when that folder is on another file system.
        # Writing next to the target and renaming is atomic on any local file system.
        if "://" in str(filepath):
            return super()._save_checkpoint(trainer, filepath)
        partial = f"{filepath}.partial"
        trainer.save_checkpoint(partial, self.save_weights_only)
        if trainer.is_global_zero:
            os.replace(partial, filepath)
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any) -> None:
        super().on_train_batch_end(trainer, pl_module, *args, **kwargs)
        n, step = self.last_every_n_steps, trainer.global_step
        if (
            n
            and step % n == 0
            and self._last_global_step_saved != step
            and not self._should_skip_saving_checkpoint(trainer)
        ):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

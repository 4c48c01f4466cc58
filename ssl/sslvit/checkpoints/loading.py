"""The trained encoder of a checkpoint: sslvit's own (a Lightning ``.ckpt`` of any method, an exported
folder) or one trained elsewhere (official MAE/BEiT/DINO weights, timm; :mod:`sslvit.checkpoints.outside`).

sslvit's formats carry the architecture (``ViTConfig``) and the preprocessing the encoder was trained
with (image size, mean, std, evaluation crop), which the evaluation tools use as their defaults;
outside weights give the architecture through their shapes and ImageNet's preprocessing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sslvit.checkpoints.info import CheckpointInfo
from sslvit.checkpoints.io import check_state_dict, safe_load
from sslvit.checkpoints.official import BACKBONE_PREFIX
from sslvit.checkpoints.outside import arch_sizes, read_outside_weights, read_timm_hub_folder
from sslvit.errors import CheckpointError
from sslvit.nn.backbone import VisionTransformer, ViTConfig

EXPORT_WEIGHTS, EXPORT_CONFIG = "model.safetensors", "config.json"


@dataclass
class LightningCheckpoint:
    """What sslvit reads from a Lightning checkpoint of one of its methods."""

    path: Path
    state_dict: dict[str, torch.Tensor]
    hparams: dict[str, Any]  # the method's __init__ arguments, plus Lightning's ``_class_path``
    data: dict[str, Any] = field(default_factory=dict)  # the data module's __init__ arguments
    global_step: int | None = None

    @property
    def class_path(self) -> str | None:
        return self.hparams.get("_class_path")

    def backbone_config(self) -> ViTConfig:
        return ViTConfig.from_dict(self.hparams["backbone"])

    def info(self) -> CheckpointInfo:
        """The method, its step, and the evaluation defaults from the data it was trained on (image size, mean,
        std, crop; what the data module did not record keeps :class:`CheckpointInfo`'s defaults)."""
        recorded = {k: self.data[k] for k in ("mean", "std", "eval_crop_fraction") if k in self.data}
        return CheckpointInfo(
            source="lightning",
            image_size=self.data.get("image_size", self.backbone_config().img_size),
            method=self.class_path,
            global_step=self.global_step,
            hparams=self.hparams,
            **recorded,
        )


def is_sslvit_checkpoint(ckpt: Any) -> bool:
    """Whether a loaded file is a Lightning checkpoint of an sslvit method (its hyper-parameters name a backbone)."""
    return isinstance(ckpt, dict) and "state_dict" in ckpt and "backbone" in ckpt.get("hyper_parameters", {})


def read_lightning_checkpoint(path: str | Path, ckpt: dict[str, Any] | None = None) -> LightningCheckpoint:
    """Read a Lightning checkpoint written by an sslvit method (safely: tensors and plain containers only).

    ``ckpt``: the file's content when the caller has loaded it already.
    """
    path = Path(path)
    ckpt = safe_load(path) if ckpt is None else ckpt
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{path} is not a Lightning checkpoint (no 'state_dict'); for plain weights export them")
    hparams = dict(ckpt.get("hyper_parameters", {}))
    if "backbone" not in hparams:
        raise CheckpointError(
            f"{path} was not written by an sslvit method: its hyper_parameters have no 'backbone' "
            f"(found {sorted(hparams)[:10]}), so the architecture is unknown"
        )
    return LightningCheckpoint(
        path=path,
        state_dict=ckpt["state_dict"],
        hparams=hparams,
        data=dict(ckpt.get("datamodule_hyper_parameters", {})),
        global_step=ckpt.get("global_step"),
    )


def _lightning_backbone(path: Path, raw: dict[str, Any]) -> tuple[ViTConfig, dict[str, torch.Tensor], CheckpointInfo]:
    ckpt = read_lightning_checkpoint(path, raw)
    prefix = len(BACKBONE_PREFIX)
    state = {k[prefix:]: v for k, v in ckpt.state_dict.items() if k.startswith(BACKBONE_PREFIX)}
    return ckpt.backbone_config(), state, ckpt.info()


def _folder_backbone(folder: Path) -> tuple[ViTConfig, dict[str, torch.Tensor], CheckpointInfo]:
    """An sslvit export, or any timm hub folder (``config.json`` + ``model.safetensors``)."""
    config_file, weights = folder / EXPORT_CONFIG, folder / EXPORT_WEIGHTS
    if not config_file.is_file():
        raise CheckpointError(
            f"{folder} is not an exported encoder or timm hub folder: it needs {EXPORT_CONFIG} and {EXPORT_WEIGHTS}"
        )
    config = json.loads(config_file.read_text())
    backbone = config.get("sslvit_backbone")
    if backbone is None and "architecture" in config:
        return read_timm_hub_folder(folder, config)
    if backbone is None or not weights.is_file():
        raise CheckpointError(
            f"{config_file} has neither 'sslvit_backbone' (sslvit's export) nor 'architecture' (timm's hub "
            f"format), or {EXPORT_WEIGHTS} is missing"
        )
    pre = config.get("pretrained_cfg", {})
    recorded = {k: pre[k] for k in ("mean", "std") if k in pre}
    if "crop_pct" in pre:
        recorded["eval_crop_fraction"] = pre["crop_pct"]
    image_size = pre.get("input_size", [backbone["img_size"]])[-1]
    info = CheckpointInfo(source="exported", image_size=image_size, hparams=config, **recorded)
    return ViTConfig.from_dict(backbone), safe_load(weights), info


# Formats that record their architecture; --arch/--num-heads may only confirm it.
RECORDED_ARCHITECTURE = ("lightning", "exported", "timm-hub")


def check_recorded_architecture(config: ViTConfig, path: Path, arch: str | None, num_heads: int | None) -> None:
    """Refuse ``arch``/``num_heads`` that disagree with the architecture a checkpoint records (they cannot change
    it); flags that agree are accepted."""
    dim, depth, heads = config.dims
    problems = []
    if num_heads is not None and num_heads != heads:
        problems.append(f"--num-heads {num_heads} but it has {heads} heads")
    if arch is not None:
        arch_dim, arch_depth, _, arch_patch = arch_sizes(arch, config.patch_size)
        if (arch_dim, arch_depth, arch_patch) != (dim, depth, config.patch_size):
            problems.append(
                f"--arch {arch} is {arch_dim} wide, {arch_depth} deep with {arch_patch}px patches but it "
                f"is {dim} wide, {depth} deep with {config.patch_size}px patches"
            )
    if problems:
        raise CheckpointError(
            f"{path} records its architecture, which the flags cannot change: {'; '.join(problems)}. Leave out "
            "--arch/--num-heads (they are for plain state dicts, whose shapes do not say everything)"
        )


def load_backbone(
    path: str | Path, arch: str | None = None, num_heads: int | None = None
) -> tuple[VisionTransformer, CheckpointInfo]:
    """The trained encoder of a checkpoint, whatever its format (recognised from its keys):

    - a Lightning ``.ckpt`` of any sslvit method, or a folder written by sslvit's export;
    - a timm hub folder (``config.json`` naming a timm ViT + ``model.safetensors``);
    - an official MAE ``.pth`` (``{"model": ...}``, with or without decoder), a BEiT or DINO state
      dict, or a timm ViT state dict (``.pth``/``.safetensors``).

    ``arch`` (an sslvit preset or a timm model name) and ``num_heads`` are only read for the plain
    state dicts, whose shapes give every size but the number of attention heads (default: the ViT
    preset of that width). Returns the backbone (in eval mode, on the CPU) and a :class:`CheckpointInfo`
    describing where it came from (``source``: lightning, exported, timm-hub, mae, beit or timm) and the
    preprocessing it expects.
    """
    path = Path(path)
    if path.is_dir():
        config, state, info = _folder_backbone(path)
    elif path.is_file():
        raw = safe_load(path)
        if is_sslvit_checkpoint(raw):
            config, state, info = _lightning_backbone(path, raw)
        else:
            try:
                config, state, info = read_outside_weights(raw, f"checkpoint {path}", arch, num_heads)
            except CheckpointError:
                if isinstance(raw, dict) and "hyper_parameters" in raw:  # Lightning, not sslvit: say what it lacks
                    read_lightning_checkpoint(path, raw)
                raise
    else:
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if not state:
        raise CheckpointError(f"{path} holds no backbone weights ('{BACKBONE_PREFIX}*' keys)")
    if info.source in RECORDED_ARCHITECTURE:
        check_recorded_architecture(config, path, arch, num_heads)
    model = VisionTransformer(config)
    check_state_dict(model.state_dict(), state, f"checkpoint {path}")
    model.load_state_dict(state)
    return model.eval(), info

"""Encoders trained outside sslvit: official MAE, BEiT and DINO weights, timm ViTs and timm hub folders.

A file's format is recognised from its keys, never from its name; the architecture is read from
the shapes (width, depth, patch size, grid, MLP ratio, biases, layer scale), except the number of
attention heads, which no tensor records: ``num_heads``, a timm model name as ``arch`` (its heads
are read from timm), or the ViT preset of that width.

=========  ==========================================================  =============================
format     recognised by                                               kept
=========  ==========================================================  =============================
``mae``    timm key names plus MAE's decoder (``decoder_embed``, ...)  the encoder (the decoder
                                                                       serves reconstructions)
``beit``   ``attn.q_bias``/``attn.v_bias``, ``gamma_1``/``gamma_2``    the encoder: q/v biases become
                                                                       one qkv bias (key bias 0),
                                                                       gammas the layer scales
``timm``   timm key names (timm, DINO, DeiT, MAE encoder-only)         the encoder
=========  ==========================================================  =============================

State dicts may be wrapped (``{"model": ...}`` as MAE, DeiT and BEiT save them, ``{"teacher": ...}``)
and prefixed (``module.``, ``backbone.``). Classifier heads, MAE decoders, BEiT's mask token and
token head are dropped; anything else the ViT has no place for (``fc_norm``, register tokens,
relative position biases) is an error naming the keys, since features would silently differ.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sslvit.checkpoints.info import CheckpointInfo
from sslvit.checkpoints.official import MAE_DECODER_KEYS
from sslvit.constants import IMAGENET_MEAN, IMAGENET_STD
from sslvit.errors import CheckpointError
from sslvit.nn.backbone import PRESETS, ViTConfig
from sslvit.nn.pos_embed import sincos_pos_embed_2d

ENCODER_KEY = "patch_embed.proj.weight"  # every ViT state dict read here has it
WRAPPERS = ("model", "teacher", "state_dict", "module")
PREFIXES = ("module.backbone.", "backbone.", "module.", "encoder.", "model.", "")
# Parts of a checkpoint that the encoder does not need: key prefix -> what it is.
DROPPED_PARTS = {
    **{key: "MAE decoder" for key in MAE_DECODER_KEYS if key != "mask_token"},
    "mask_token": "mask token",
    "lm_head.": "BEiT token head",
    "head.": "classifier head",
}


def unwrap_state_dict(raw: Any, source: str) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """The encoder's tensors under their own names, and the keys left out (``{"part": count}``)."""
    state = raw
    while isinstance(state, dict) and not all(isinstance(v, torch.Tensor) for v in state.values()):
        inner = next((state[k] for k in WRAPPERS if isinstance(state.get(k), dict)), None)
        if inner is None:
            break
        state = inner
    if not isinstance(state, dict):
        raise CheckpointError(f"{source} holds a {type(raw).__name__}, not a state dict of ViT weights")
    prefix = next((p for p in PREFIXES if p + ENCODER_KEY in state), None)
    if prefix is None:
        keys = sorted(k for k, v in state.items() if isinstance(v, torch.Tensor))
        raise CheckpointError(
            f"{source} matches none of the formats sslvit reads (an sslvit Lightning checkpoint or export, an "
            f"official MAE/BEiT/DINO state dict, a timm ViT state dict or hub folder): no '{ENCODER_KEY}' key "
            f"under {', '.join(repr(p) for p in PREFIXES[:-1])} or at the top; its keys start with "
            f"{keys[:8]}{' ...' if len(keys) > 8 else ''}"
        )
    outside = sum(1 for k in state if not k.startswith(prefix))
    tensors = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return tensors, ({f"outside '{prefix}'": outside} if outside else {})


def to_sslvit_names(state: dict[str, torch.Tensor], source: str) -> tuple[str, dict[str, torch.Tensor], dict]:
    """(format, the encoder in sslvit's (= timm's) key names, ``{"dropped part": key count}``)."""
    relative = sorted(k for k in state if "relative_position" in k or k.startswith("rel_pos_bias."))
    if relative:
        raise CheckpointError(
            f"{source} uses relative position biases ({len(relative)} keys, e.g. {relative[0]}), as BEiT's "
            "pretraining does by default; sslvit's ViT adds absolute positions only, so it cannot give these "
            "weights' features. Weights trained with absolute positions (BEiT's use_abs_pos_emb) load"
        )
    beit = any(k.endswith((".attn.q_bias", ".gamma_1")) for k in state)
    mapped: dict[str, torch.Tensor] = {}
    dropped: dict[str, int] = {}
    for key, value in state.items():
        part = next((name for prefix, name in DROPPED_PARTS.items() if key.startswith(prefix)), None)
        if part is not None:
            dropped[part] = dropped.get(part, 0) + 1
        elif beit and key.endswith(("gamma_1", "gamma_2")):
            mapped[key[: -len("gamma_1")] + ("ls1.gamma" if key.endswith("1") else "ls2.gamma")] = value
        elif beit and key.endswith((".attn.q_bias", ".attn.v_bias")):
            if key.endswith(".attn.q_bias"):  # BEiT's key projection has no bias: a zero one is the same
                v_bias = state[key.replace("q_bias", "v_bias")]
                mapped[key.replace("q_bias", "qkv.bias")] = torch.cat([value, torch.zeros_like(value), v_bias])
        else:
            mapped[key] = value
    kind = "beit" if beit else "mae" if "MAE decoder" in dropped else "timm"
    return kind, mapped, dropped


def timm_vit_settings(name: str, model_args: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a timm model name says about the architecture (heads, preprocessing), after checking that
    sslvit's ViT computes the same function: the model is built on the meta device, without weights."""
    import timm
    from timm.layers import PatchEmbed
    from timm.models.vision_transformer import Block
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    if not timm.is_model(name):
        raise CheckpointError(
            f"--arch {name!r} is neither an sslvit preset ({', '.join(PRESETS)}) nor a timm model name "
            "(timm.list_models('vit_*') lists them)"
        )
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, **(model_args or {}))
    problems = []
    if not isinstance(model, TimmViT):
        problems.append(f"it is a {type(model).__name__}, not timm's VisionTransformer")
    else:
        block = model.blocks[0]
        act = getattr(getattr(block, "mlp", None), "act", None)
        checks = {
            "no class token": not model.has_class_token,
            "positions without a CLS row (no_embed_class)": model.no_embed_class,
            "register tokens": model.num_reg_tokens > 0,
            "no absolute position table": model.pos_embed is None,
            "a norm before the blocks (norm_pre)": not isinstance(model.norm_pre, nn.Identity),
            "a norm after pooling (fc_norm)": not isinstance(model.fc_norm, nn.Identity),
            "another patch embedding": type(model.patch_embed) is not PatchEmbed
            or not isinstance(model.patch_embed.norm, nn.Identity),
            f"{type(block).__name__} blocks": type(block) is not Block,
            "normalized queries and keys (qk_norm)": not isinstance(getattr(block.attn, "q_norm", None), nn.Identity),
            f"MLP activation {act}": not (isinstance(act, nn.GELU) and act.approximate == "none"),
        }
        problems += [what for what, bad in checks.items() if bad]
    if problems:
        raise CheckpointError(f"timm's {name} cannot be run by sslvit's ViT: {'; '.join(problems)}")
    config = model.pretrained_cfg or {}
    return {
        "num_heads": model.blocks[0].attn.num_heads,
        "embed_dim": model.embed_dim,
        "depth": len(model.blocks),
        "patch_size": model.patch_embed.patch_size[0],
        "mean": tuple(config.get("mean", IMAGENET_MEAN)),
        "std": tuple(config.get("std", IMAGENET_STD)),
    }


def arch_sizes(arch: str, patch_size: int) -> tuple[int, int, int, int]:
    """(width, depth, heads, patch size) of an sslvit preset (whose patch size is free: ``patch_size``) or of a
    timm model name."""
    if arch in PRESETS:
        return (*PRESETS[arch], patch_size)
    settings = timm_vit_settings(arch)
    return settings["embed_dim"], settings["depth"], settings["num_heads"], settings["patch_size"]


def infer_config(
    state: dict[str, torch.Tensor], source: str, arch: str | None = None, num_heads: int | None = None
) -> ViTConfig:
    """The ViTConfig of an encoder state dict in sslvit's key names, from its shapes."""
    proj = state[ENCODER_KEY]  # [D, C, p, p]
    dim, in_chans, patch = proj.shape[0], proj.shape[1], proj.shape[-1]
    blocks = {int(k.split(".")[1]) for k in state if k.startswith("blocks.")}
    pos = state.get("pos_embed")
    tokens = pos.shape[1] - 1 if pos is not None and pos.ndim == 3 else -1
    grid = math.isqrt(max(tokens, 0))
    if not blocks or "blocks.0.mlp.fc1.weight" not in state or tokens < 1 or grid * grid != tokens:
        what = "no transformer blocks" if not blocks else "no 'pos_embed' of 1 + H*W rows (a CLS row and a square grid)"
        raise CheckpointError(f"{source} is not a ViT that sslvit can run: {what}")
    depth = max(blocks) + 1
    if arch is not None:  # applied or refused: an arch of another width, depth or patch size is not these weights
        arch_dim, arch_depth, arch_heads, arch_patch = arch_sizes(arch, patch)
        if (arch_dim, arch_depth, arch_patch) != (dim, depth, patch):
            raise CheckpointError(
                f"--arch {arch} is {arch_dim} wide, {arch_depth} blocks deep with {arch_patch}px patches, but {source} "
                f"holds {dim} wide, {depth} blocks, {patch}px patches: pass the arch the weights come from (or "
                "--num-heads alone)"
            )
        num_heads = arch_heads if num_heads is None else num_heads
    if num_heads is None:
        num_heads = next((heads for width, _, heads in PRESETS.values() if width == dim), None)
    if num_heads is None:
        raise CheckpointError(
            f"{source}: {dim}-wide blocks, but the weights do not record the number of attention heads; "
            "pass --num-heads N (num_heads=N), or --arch with the timm model name the weights come from"
        )
    if num_heads < 1 or dim % num_heads:
        raise CheckpointError(f"--num-heads {num_heads} does not divide the weights' width {dim} ({source})")
    sincos = sincos_pos_embed_2d(dim, grid, cls_token=True).unsqueeze(0)
    preset = arch if arch in PRESETS else next((n for n, (w, _, _) in PRESETS.items() if w == dim), "vit_base")
    return ViTConfig(
        arch=preset,
        img_size=grid * patch,
        patch_size=patch,
        in_chans=in_chans,
        embed_dim=dim,
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=state["blocks.0.mlp.fc1.weight"].shape[0] / dim,
        qkv_bias="blocks.0.attn.qkv.bias" in state,
        layer_scale_init=0.1 if "blocks.0.ls1.gamma" in state else None,
        pos_embed="sincos" if torch.allclose(pos.float(), sincos, atol=1e-4) else "learned",
    )


def read_outside_weights(
    raw: Any, source: str, arch: str | None = None, num_heads: int | None = None
) -> tuple[ViTConfig, dict[str, torch.Tensor], CheckpointInfo]:
    """(architecture, encoder state dict in sslvit's names, info) of a loaded file of outside weights."""
    state, dropped = unwrap_state_dict(raw, source)
    kind, mapped, parts = to_sslvit_names(state, source)
    config = infer_config(mapped, source, arch, num_heads)
    timm_arch = arch if arch is not None and arch not in PRESETS else None
    preprocessing = {}  # ImageNet's, unless a timm model name says otherwise
    if timm_arch is not None:
        settings = timm_vit_settings(timm_arch)
        preprocessing = {"mean": settings["mean"], "std": settings["std"]}
    info = CheckpointInfo(
        source=kind,
        image_size=config.img_size,
        native_pooling="mean" if kind == "beit" else "cls",  # BEiT probes and fine-tunes on mean patch tokens
        dropped={**dropped, **parts},
        has_decoder="MAE decoder" in parts,
        timm_arch=timm_arch,
        **preprocessing,
    )
    return config, mapped, info


def read_timm_hub_folder(
    folder: Path, config: dict[str, Any]
) -> tuple[ViTConfig, dict[str, torch.Tensor], CheckpointInfo]:
    """A timm hub folder (``config.json`` naming ``architecture``, weights in ``model.safetensors``)."""
    from sslvit.checkpoints.io import safe_load

    weights = next((folder / f for f in ("model.safetensors", "pytorch_model.bin") if (folder / f).is_file()), None)
    if weights is None:
        raise CheckpointError(f"{folder} has a timm config.json but no model.safetensors or pytorch_model.bin")
    name, model_args = config["architecture"], config.get("model_args", {})
    settings = timm_vit_settings(name, model_args)
    _, mapped, dropped = to_sslvit_names(safe_load(weights), str(weights))
    vit = infer_config(mapped, str(weights), num_heads=model_args.get("num_heads", settings["num_heads"]))
    pre = config.get("pretrained_cfg", {})
    info = CheckpointInfo(
        source="timm-hub",
        image_size=pre.get("input_size", [vit.img_size])[-1],
        mean=pre.get("mean", settings["mean"]),
        std=pre.get("std", settings["std"]),
        eval_crop_fraction=pre.get("crop_pct", 1.0),
        native_pooling="mean" if config.get("global_pool") == "avg" else "cls",
        dropped=dropped,
        timm_arch=name,
    )
    return vit, mapped, info

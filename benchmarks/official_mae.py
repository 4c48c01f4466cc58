"""facebookresearch/mae's model trained the way its ``main_pretrain.py`` trains it, for a FLOP, time or step budget.

    python benchmarks/official_mae.py --mae-repo /path/to/mae --config configs/mae/cifar10_vit_tiny.yaml \\
        --data-root ../shared/data/cifar10 --train-images 10000 --petaflops 0.1 --output runs/official-mae/mae.pth
    python benchmarks/official_mae.py ... --minutes 30 ...   # or --steps 500 --warmup-steps 100

The reference row of the results table (``benchmarks/results.py``) and of the comparison with sslvit's
own MAE. From a local checkout of facebookresearch/mae (not part of sslvit, never copied into it):
its ``models_mae.MaskedAutoencoderViT`` with its own initialisation, and its per-iteration schedule
``util/lr_sched.adjust_learning_rate``. Around them, what ``main_pretrain.py`` does, with today's
libraries: torchvision ``ImageFolder`` + ``RandomResizedCrop(scale=(0.2, 1), bicubic)`` + flip +
normalize, a shuffled loader that drops the last batch, timm's weight-decay groups (no decay on
biases and 1-d parameters; the tokens are decayed, as in the official code), ``AdamW(betas=(0.9,
0.95))``, ``lr = blr * batch / 256``. Its ``engine_pretrain.train_one_epoch`` itself cannot run
on a CPU (it calls ``torch.cuda.synchronize()``), so its loop body is run here: the same calls, in
the same order. Sizes, mask ratio, norm-pix loss and batch size come from an sslvit config, so both
train the same architecture. The schedule's position is the spent fraction of the budget, as
``sslvit.cli.FlopBudget`` and ``TimeBudget`` make sslvit's runs do: with ``--petaflops`` the FLOPs of the
steps so far (the first step counted by torch, ``sslvit.flops``: the run trains ``ceil(budget / step
FLOPs)`` steps on any machine), with ``--minutes`` the clock, with ``--steps`` the step count. With
``--train-images`` it trains on the class-balanced subset sslvit's run of the same ``--seed`` trains on
(``data.train_subset``, drawn with the run's seed).

Writes ``{"model": state_dict, "sslvit": {...}}`` (tensors and plain values: loadable with
``weights_only=True``); ``sslvit`` is the run's record: steps, images seen, FLOPs, seconds of training.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import yaml
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms

from harness import RunBudget, add_budget_args
from sslvit.cli.parser import ToolParser
from sslvit.constants import IMAGENET_MEAN, IMAGENET_STD
from sslvit.data import class_balanced_subset
from sslvit.errors import ConfigError, one_line_errors
from sslvit.flops import flop_counter


def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(__file__, description=__doc__)
    parser.add_argument("--mae-repo", required=True, help="a checkout of facebookresearch/mae")
    parser.add_argument("--config", required=True, help="an sslvit MAE config: sizes, mask ratio, batch, lr")
    parser.add_argument("--data-root", required=True, help="an ImageFolder root with train/")
    parser.add_argument("--train-images", type=int, help="class-balanced subset of train/ (default: all)")
    add_budget_args(parser)
    parser.add_argument("--warmup-steps", type=int, default=100, help="with --steps")
    parser.add_argument("--blr", type=float, help="base lr per 256 images (default: the config's base_lr)")
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", required=True, help="where to write the checkpoint (.pth), the record inside")
    return parser


def official_modules(repo: Path) -> tuple[Any, Any]:
    """``models_mae`` and ``util.lr_sched`` of the checkout, on today's timm and NumPy."""
    import numpy as np
    import timm.models.vision_transformer as tvit

    if not hasattr(np, "float"):  # its position tables use np.float, an alias NumPy 1.24 removed
        np.float = float

    class Block(tvit.Block):  # the official code passes timm 0.3's `qk_scale`, and timm 0.3 had no fused attention
        def __init__(self, *args: Any, qk_scale: Any = None, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.attn.fused_attn = False

    tvit.Block = Block
    sys.path.insert(0, str(repo.resolve()))
    import models_mae
    import util.lr_sched as lr_sched

    return models_mae, lr_sched


def config_settings(path: str) -> dict[str, Any]:
    """What both implementations must share, read from an sslvit MAE config."""
    config = yaml.safe_load(Path(path).read_text())
    model = config["model"]["init_args"]
    if not config["model"]["class_path"].endswith("MAE"):
        raise ConfigError(f"{path} is not an MAE config (model.class_path={config['model']['class_path']})")
    from sslvit.nn.backbone import ViTConfig

    backbone = ViTConfig.from_dict(model["backbone"])
    dim, depth, heads = backbone.dims
    return {
        "img_size": backbone.img_size,
        "patch_size": backbone.patch_size,
        "embed_dim": dim,
        "depth": depth,
        "num_heads": heads,
        "mlp_ratio": backbone.mlp_ratio,
        "decoder_embed_dim": model["decoder_embed_dim"],
        "decoder_depth": model["decoder_depth"],
        "decoder_num_heads": model["decoder_num_heads"],
        "mask_ratio": model.get("mask_ratio", 0.75),
        "norm_pix_loss": model.get("norm_pix_loss", True),
        "batch_size": config["data"]["batch_size"],
        "blr": model.get("base_lr", 1.5e-4),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    with one_line_errors("official_mae.py"):
        return train(args)


def train(args: argparse.Namespace) -> dict[str, Any]:
    from timm.optim import param_groups_weight_decay

    budget = RunBudget.from_args(args)
    torch.manual_seed(args.seed)
    models_mae, lr_sched = official_modules(Path(args.mae_repo))
    s = config_settings(args.config)
    model = models_mae.MaskedAutoencoderViT(
        img_size=s["img_size"],
        patch_size=s["patch_size"],
        in_chans=3,
        embed_dim=s["embed_dim"],
        depth=s["depth"],
        num_heads=s["num_heads"],
        decoder_embed_dim=s["decoder_embed_dim"],
        decoder_depth=s["decoder_depth"],
        decoder_num_heads=s["decoder_num_heads"],
        mlp_ratio=s["mlp_ratio"],
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        norm_pix_loss=s["norm_pix_loss"],
    )
    transform = transforms.Compose(
        [
            transforms.RandomResizedCrop(s["img_size"], scale=(0.2, 1.0), interpolation=3),  # 3 = bicubic
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    dataset = datasets.ImageFolder(str(Path(args.data_root) / "train"), transform=transform)
    if args.train_images:  # the class-balanced subset sslvit's run of this seed pretrains on (data.seed = its seed)
        dataset = Subset(dataset, class_balanced_subset(dataset.targets, args.train_images, seed=args.seed))
    batch = s["batch_size"]
    loader = DataLoader(
        dataset,
        batch_size=batch,
        shuffle=True,
        num_workers=args.num_workers,
        drop_last=True,
        persistent_workers=args.num_workers > 0,
    )
    blr = args.blr if args.blr is not None else s["blr"]
    lr = blr * batch / 256
    optimizer = torch.optim.AdamW(param_groups_weight_decay(model, args.weight_decay), lr=lr, betas=(0.9, 0.95))
    steps_per_epoch = len(loader)
    # Their schedule is in (fractional) epochs of this loader: linear warmup, then a half-cycle cosine to
    # the end of the budget. With --steps the position is the step (warmup --warmup-steps); otherwise it is
    # the spent fraction of the budget (warmup --warmup-fraction of it), FLOPs or seconds, as sslvit's
    # FlopBudget and TimeBudget do for sslvit's runs: both spend the same budget on the same schedule shape.
    if budget.kind == "steps":
        length, warmup = budget.steps / steps_per_epoch, args.warmup_steps / steps_per_epoch
    else:
        length, warmup = 1.0, budget.warmup_fraction
    schedule = SimpleNamespace(lr=lr, min_lr=0.0, warmup_epochs=warmup, epochs=length)
    flops_per_step: float | None = None  # counted on the first step

    def position(step: int, elapsed: float) -> float:
        if budget.kind == "steps":
            return step / steps_per_epoch
        if budget.kind == "minutes":
            return elapsed / (budget.minutes * 60)
        return step * (flops_per_step or 0.0) / (budget.petaflops * 1e15)

    model.train()
    start, step, losses = time.perf_counter(), 0, []
    while True:
        for samples, _ in loader:
            now = position(step, time.perf_counter() - start)
            if now >= length:
                break
            lr_sched.adjust_learning_rate(optimizer, now, schedule)
            with flop_counter() if flops_per_step is None else contextlib.nullcontext() as counter:
                loss, _, _ = model(samples, mask_ratio=s["mask_ratio"])
                if not math.isfinite(loss.item()):
                    raise FloatingPointError(f"official MAE: loss is {loss.item()} at step {step}")
                loss.backward()
            if counter is not None:
                flops_per_step = float(counter.get_total_flops())
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
            step += 1
        else:
            continue
        break
    seconds = time.perf_counter() - start
    record = {
        "method": "official-mae",
        "steps": step,
        "images_seen": step * batch,
        "seconds": seconds,
        "images_per_s": step * batch / seconds,
        "flops_per_step": flops_per_step,
        "petaflops": step * (flops_per_step or 0.0) / 1e15,
        "budget": str(budget),
        "final_loss": sum(losses[-20:]) / max(1, len(losses[-20:])),
        "lr": lr,
        "batch_size": batch,
        "train_images": len(dataset),
        "seed": args.seed,
        "settings": s,
        "mae_repo": str(Path(args.mae_repo).resolve()),
    }
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "sslvit": {k: v for k, v in record.items() if k != "settings"}}, output)
    print(
        f"official MAE: {step} steps ({step * batch} images) in {seconds / 60:.1f} minutes, "
        f"{record['images_per_s']:.1f} images/s, final loss {record['final_loss']:.4f}; wrote {output}"
    )
    return record


if __name__ == "__main__":
    main()

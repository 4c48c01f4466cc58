"""Training-step throughput of a method config: images/s, FLOPs per image, GFLOP/s, MFU on CUDA.

    python tools/benchmark.py --config configs/mae/cifar10_vit_tiny.yaml [--batch-size 128] [--steps 20]
        [--device cpu|cuda] [--compile] [--precision 32|bf16-mixed] [--loader] [--reference-mae PATH]
        [--json out.json] [-- <extra sslvit fit settings, e.g. --model.init_args.mask_ratio=0.6>]

A step is forward, backward and the optimizer update on synthetic images already on the device
(the data pipeline is measured separately with ``--loader``). Times are medians over ``--steps``
steps after ``--warmup`` steps. ``--reference-mae`` points at a checkout of facebookresearch/mae
(not part of sslvit): its ``MaskedAutoencoderViT``, built with the same sizes, is measured in the
same run, interleaved with sslvit's model so both see the same machine noise, and its loss on the
same weights and masks is compared with ours.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from sslvit.cli import run_cli
from sslvit.seeding import random_keys

# Dense bf16 tensor-core peaks (TFLOP/s) for MFU; override with --peak-tflops.
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "V100": 125.0}


def build(config: str, overrides: list[str]) -> tuple[Any, Any]:
    """Model and data module exactly as `sslvit fit --config` would build them."""
    cli = run_cli(["--config", config, "--trainer.logger", "false", *overrides], run=False)
    return cli.model, cli.datamodule


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class Stepper:
    """One optimizer step of a model on a fixed batch; ``loss_fn(images, keys) -> loss``."""

    def __init__(self, model, loss_fn, optimizer, images, keys, precision: str) -> None:
        self.model, self.loss_fn, self.optimizer, self.images, self.keys = model, loss_fn, optimizer, images, keys
        dtype = torch.bfloat16 if precision == "bf16-mixed" else None
        self.autocast = dict(device_type=images.device.type, dtype=dtype, enabled=dtype is not None)

    def __call__(self) -> float:
        with torch.autocast(**self.autocast):
            loss = self.loss_fn(self.images, self.keys)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss

    def flops(self) -> int:
        with FlopCounterMode(display=False) as counter, torch.autocast(**self.autocast):
            self.loss_fn(self.images, self.keys).backward()
        self.optimizer.zero_grad(set_to_none=True)
        return counter.get_total_flops()


def time_steps(step: Stepper, n: int, device: torch.device) -> list[float]:
    times = []
    for _ in range(n):
        sync(device)
        start = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def reference_mae(path: str, model, device: torch.device):
    """facebookresearch/mae's MaskedAutoencoderViT with sslvit's sizes and (copied) weights."""
    import timm.models.vision_transformer as tvit

    class ReferenceBlock(tvit.Block):  # the official code passes timm 0.3's `qk_scale` and used explicit attention
        def __init__(self, *args, qk_scale=None, **kwargs):
            super().__init__(*args, **kwargs)
            self.attn.fused_attn = False

    tvit.Block = ReferenceBlock
    sys.path.insert(0, str(Path(path).resolve()))
    from functools import partial

    import models_mae

    cfg, h = model.backbone_config, model.hparams
    dim, depth, heads = cfg.dims
    ref = models_mae.MaskedAutoencoderViT(
        img_size=cfg.img_size, patch_size=cfg.patch_size, in_chans=cfg.in_chans, embed_dim=dim, depth=depth,
        num_heads=heads, decoder_embed_dim=h.decoder_embed_dim, decoder_depth=h.decoder_depth,
        decoder_num_heads=h.decoder_num_heads, mlp_ratio=cfg.mlp_ratio,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), norm_pix_loss=h.norm_pix_loss,
    ).to(device)  # fmt: skip
    ref.load_state_dict({k.removeprefix("backbone."): v for k, v in model.state_dict().items()})
    return ref


def loader_throughput(datamodule, steps: int) -> dict[str, float]:
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    iterator = iter(loader)
    next(iterator)  # workers start
    start, images = time.perf_counter(), 0
    for _ in range(steps):
        images += next(iterator)["images"].shape[0]
    return {"loader_images_per_s": images / (time.perf_counter() - start)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--batch-size", type=int, help="default: the config's data.batch_size")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compile", action="store_true", help="torch.compile the transformer blocks")
    parser.add_argument("--precision", default="32", choices=["32", "bf16-mixed"])
    parser.add_argument("--loader", action="store_true", help="measure the data pipeline alone")
    parser.add_argument("--reference-mae", help="a checkout of facebookresearch/mae to measure side by side")
    parser.add_argument("--peak-tflops", type=float, help="device peak for MFU (default: known GPUs' bf16 peak)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument(
        "overrides", nargs="*", help="extra `sslvit fit` settings, e.g. --model.init_args.mask_ratio=0.6"
    )
    args = parser.parse_args()

    overrides = list(args.overrides)
    if args.batch_size:
        overrides.append(f"--data.batch_size={args.batch_size}")
    if args.compile:
        overrides.append("--model.init_args.compile=true")
    model, datamodule = build(args.config, overrides)
    result: dict[str, Any] = {"config": args.config, "method": type(model).__name__, "device": args.device}
    if args.loader:
        result |= {"batch_size": datamodule.batch_size, "num_workers": datamodule.num_workers}
        result |= loader_throughput(datamodule, args.steps)
        print(json.dumps(result, indent=2))
        return

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = model.to(device).train()
    model.configure_model()
    size, batch = model.input_size, datamodule.batch_size
    images = torch.randn(batch, 3, size, size, device=device)
    keys = random_keys(batch)
    # sslvit's optimizer as training builds it; the reference's as its main_pretrain.py does (torch's default AdamW)
    rows = {"sslvit": Stepper(model, lambda x, k: model.compute_loss(x, k)["loss"],
                              model.build_optimizer(1e-4), images, keys, args.precision)}  # fmt: skip
    if args.reference_mae:
        ref = reference_mae(args.reference_mae, model, device).train()
        ratio = model.hparams.mask_ratio
        ref_optimizer = torch.optim.AdamW(ref.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)
        rows["facebookresearch/mae"] = Stepper(ref, lambda x, k: ref(x, ratio)[0], ref_optimizer, images, keys,
                                               args.precision)  # fmt: skip
        result["loss_check"] = same_loss_check(model, ref, images)

    flops = rows["sslvit"].flops() / batch
    for step in rows.values():
        time_steps(step, args.warmup, device)
    times: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(args.steps):  # interleaved, so both see the same machine load
        for name, step in rows.items():
            times[name] += time_steps(step, 1, device)

    result |= {"batch_size": batch, "image_size": size, "precision": args.precision, "compile": args.compile,
               "threads": torch.get_num_threads(), "gflop_per_image": flops / 1e9, "rows": {}}  # fmt: skip
    peak = args.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if device.type == "cuda"
                                     and k in torch.cuda.get_device_name(device)), None)  # fmt: skip
    print(f"{'model':<22}{'images/s':>10}{'ms/step':>10}{'GFLOP/s':>10}" + ("{:>8}".format("MFU") if peak else ""))
    for name, ts in times.items():
        median = statistics.median(ts)
        row = {"images_per_s": batch / median, "ms_per_step": median * 1e3, "gflops": flops * batch / median / 1e9}
        if peak:
            row["mfu"] = row["gflops"] / (peak * 1e3)
        result["rows"][name] = row
        print(f"{name:<22}{row['images_per_s']:>10.1f}{row['ms_per_step']:>10.1f}{row['gflops']:>10.1f}"
              + (f"{row['mfu']:>8.1%}" if peak else ""))  # fmt: skip
    if len(times) > 1:
        speedup = result["rows"]["sslvit"]["images_per_s"] / result["rows"]["facebookresearch/mae"]["images_per_s"]
        result["speedup_vs_reference"] = speedup
        print(f"speed-up vs facebookresearch/mae: {speedup:.2f}x; loss check: {result['loss_check']}")
    print(f"FLOPs per image (forward + backward): {flops / 1e9:.3f} GFLOP")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


def same_loss_check(model, ref, images: torch.Tensor) -> dict[str, float]:
    """Both models on the same weights and the same masks (the official code draws noise with torch.rand)."""
    n, length = images.shape[0], model.backbone_config.grid_size**2
    with torch.no_grad():
        torch.manual_seed(1)
        ref_loss = ref(images, model.hparams.mask_ratio)[0].item()
        torch.manual_seed(1)
        noise = torch.rand(n, length, device=images.device)
        ours = model(images, noise=noise)[0].item()
    return {"sslvit": ours, "reference": ref_loss, "abs_diff": abs(ours - ref_loss)}


if __name__ == "__main__":
    main()

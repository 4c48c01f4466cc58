"""Training-step throughput of a method config: images/s, FLOPs per image, GFLOP/s, MFU on CUDA.

    python benchmarks/train_step.py --config configs/mae/cifar10_vit_tiny.yaml [--batch-size 128] [--steps 20]
        [--device cpu|cuda] [--compile [model|blocks]] [--precision 32|bf16-mixed] [--loader] [--reference-mae PATH]
        [--levers] [--profile ROWS] [--output out.json]
        [-- <extra sslvit fit settings, e.g. --model.init_args.mask_ratio=0.6>]
    python benchmarks/train_step.py --config configs/mae/cifar10_vit_tiny.yaml \
        --config "configs/beit/cifar10_vit_tiny.yaml --model.init_args.tokenizer=runs/tokenizer-cifar10"

A step is forward, backward and the optimizer update on synthetic images already on the device
(``--loader`` measures the data pipeline alone). Every measured variant runs in its own process
(settings such as the allocator are per process); the processes take turns, one step each, so all
of them see the same machine load, and each reports the median over ``--steps`` steps after
``--warmup`` steps. ``--config`` given several times measures several configs side by side the same
way (one variant each; settings quoted after a config's path apply to it alone, those after ``--``
to all), e.g. BEiT's GFLOP/s against MAE's in one run.

``--reference-mae PATH`` adds facebookresearch/mae's ``MaskedAutoencoderViT`` from a checkout of that
repository (not part of sslvit), built with the same sizes and weights and run as its training
script runs it (explicit attention as in timm 0.3, torch's default AdamW, default allocator); its
loss on the same weights and masks is compared with sslvit's. For a fine-tuning config
(``configs/finetune/``) it adds that repository's ``models_vit`` classifier, stepped as
``main_finetune.py`` steps it (``benchmarks/reference_finetune.py``). ``--levers`` measures sslvit with
its speed levers switched on one by one.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sslvit.cli.parser import ToolParser

# Dense bf16 tensor-core peaks (TFLOP/s) for MFU; override with --peak-tflops.
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "V100": 125.0}
SSLVIT = {"kind": "sslvit", "fused_attention": True, "optimizer": "fused", "malloc": True, "compile": False}
LEVERS = [  # each row adds one lever to the row above
    ("sslvit, no levers", {"fused_attention": False, "optimizer": "loop", "malloc": False}),
    ("+ fused attention", {"optimizer": "loop", "malloc": False}),
    ("+ fused AdamW", {"malloc": False}),
    ("+ allocator tuning", {}),
    ("+ torch.compile", {"compile": "model"}),
]


def device_sync(device) -> Callable[[], None]:
    """What waits for the device's queued work before a clock is read (nothing to wait for on a CPU)."""
    import torch

    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


# ---- worker: one variant in its own process ------------------------------------------------
def build_worker(args: argparse.Namespace, variant: dict[str, Any], count_flops: bool = True):
    """(one training step, device sync, facts about the model) for ``variant`` of ``args.config[0]``."""
    import torch

    from sslvit.cli import run_cli
    from sslvit.runtime import tune_cpu_allocator
    from sslvit.seeding import random_keys

    if variant.get("malloc"):
        tune_cpu_allocator()
    config, *own_overrides = shlex.split(args.config[0])
    overrides = [*own_overrides, *args.overrides, "--trainer.logger", "false"]
    if args.batch_size:
        overrides.append(f"--data.batch_size={args.batch_size}")
    if variant.get("compile"):
        overrides.append(f"--model.init_args.compile={variant['compile']}")
    cli = run_cli(["--config", config, *overrides], run=False)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = cli.model.to(device).train()
    batch, size = cli.datamodule.batch_size, model.input_size
    images, keys = torch.randn(batch, 3, size, size, device=device), random_keys(batch)
    labels = torch.arange(batch, device=device) % model.hparams.get("num_classes", 1)  # for fine-tuning
    info: dict[str, Any] = {"batch_size": batch, "image_size": size, "method": type(model).__name__, "config": config}
    official_step = None
    if variant["kind"] == "reference" and info["method"] == "FineTune":
        from reference_finetune import OfficialFineTune  # benchmarks/reference_finetune.py

        ref = OfficialFineTune(args.reference_mae, model, images, labels)
        info["loss_check"] = ref.logits_check(model)
        loss_fn, official_step = ref.loss, ref.step
        optimizer = ref.optimizer
    elif variant["kind"] == "reference":
        ref = reference_mae(args.reference_mae, model, device).train()
        info["loss_check"] = same_loss_check(model, ref, images)
        ratio = model.hparams.mask_ratio
        loss_fn, optimizer = (lambda: ref(images, ratio)[0]), torch.optim.AdamW(ref.parameters(), lr=1e-4)
    else:
        if not variant["fused_attention"]:
            for module in model.modules():
                if hasattr(module, "fused_attn"):
                    module.fused_attn = False
        # what training_step computes (mixup and labels for fine-tuning), on a fresh copy of the images
        loss_fn = lambda: model.batch_loss({"images": images.clone(), "labels": labels, "keys": keys})["loss"]  # noqa: E731
        optimizer = (
            model.build_optimizer(1e-4)
            if variant["optimizer"] == "fused"
            else torch.optim.AdamW(model.param_groups(0.05), lr=1e-4, foreach=False)
        )
    dtype = torch.bfloat16 if args.precision == "bf16-mixed" else None
    autocast = dict(device_type=device.type, dtype=dtype, enabled=dtype is not None)

    def step() -> None:
        if official_step is not None:
            return official_step()
        with torch.autocast(**autocast):
            loss = loss_fn()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    if count_flops:
        from sslvit.flops import flop_counter

        with flop_counter() as counter, torch.autocast(**autocast):
            loss_fn().backward()
        optimizer.zero_grad(set_to_none=True)
        info["flops_per_image"] = counter.get_total_flops() / batch
    # Compile only now: a first call under the FLOP counter's dispatch mode can leave dynamo running it eagerly.
    model.configure_model()
    sync = device_sync(device)
    return step, sync, info


def run_worker(args: argparse.Namespace) -> None:
    variant = json.loads(args.worker)
    step, sync, info = build_worker(args, variant)
    for _ in range(args.warmup):
        step()
    if args.profile:
        profile_steps(step, sync, args.profile)
    if variant.get("compile"):  # a silent fall-back to eager would otherwise pass for "compile gains nothing"
        from torch._dynamo.utils import counters

        info["compiled_graphs"] = counters["stats"]["unique_graphs"]
    print("@@" + json.dumps(info), flush=True)
    for line in sys.stdin:
        if line.strip() != "step":
            break
        sync()
        start = time.perf_counter()
        step()
        sync()
        print("@@" + json.dumps({"seconds": time.perf_counter() - start}), flush=True)


def profile_steps(step, sync, rows: int, steps: int = 3) -> None:
    """torch.profiler over a few steps: the ``rows`` most expensive operators, to stderr."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        sync()
    table = prof.key_averages().table(sort_by="self_cuda_time_total" if cuda else "self_cpu_time_total", row_limit=rows)
    print(f"profile of {steps} steps:\n{table}", file=sys.stderr, flush=True)


class Worker:
    """A variant's process; ``step()`` runs one timed training step there and returns its seconds."""

    def __init__(self, name: str, variant: dict[str, Any], argv: list[str]) -> None:
        self.name, self.times = name, []
        env = dict(os.environ, SSLVIT_MALLOC_TUNING="1" if variant.get("malloc") else "0")
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--worker", json.dumps(variant), *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.info = self._read()

    def _read(self) -> dict[str, Any]:
        for line in self.process.stdout:
            if line.startswith("@@"):
                return json.loads(line[2:])
        raise RuntimeError(f"benchmark worker {self.name!r} exited with {self.process.wait()}")

    def step(self) -> None:
        self.process.stdin.write("step\n")
        self.process.stdin.flush()
        self.times.append(self._read()["seconds"])

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


# ---- the reference implementation --------------------------------------------------------
def reference_mae(path: str, model, device):
    """facebookresearch/mae's MaskedAutoencoderViT with sslvit's sizes and (copied) weights."""
    from functools import partial

    import torch

    from official_mae import official_modules  # this folder's script (on sys.path when run as a script)

    models_mae, _ = official_modules(Path(path))

    cfg, h = model.backbone_config, model.hparams
    dim, depth, heads = cfg.dims
    ref = models_mae.MaskedAutoencoderViT(
        img_size=cfg.img_size,
        patch_size=cfg.patch_size,
        in_chans=cfg.in_chans,
        embed_dim=dim,
        depth=depth,
        num_heads=heads,
        decoder_embed_dim=h.decoder_embed_dim,
        decoder_depth=h.decoder_depth,
        decoder_num_heads=h.decoder_num_heads,
        mlp_ratio=cfg.mlp_ratio,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        norm_pix_loss=h.norm_pix_loss,
    ).to(device)
    ref.load_state_dict({k.removeprefix("backbone."): v for k, v in model.state_dict().items()})
    return ref


def same_loss_check(model, ref, images) -> dict[str, float]:
    """Both models on the same weights and masks (the official code draws its noise with torch.rand)."""
    import torch

    n, length = images.shape[0], model.backbone_config.grid_size**2
    with torch.no_grad():
        torch.manual_seed(1)
        ref_loss = ref(images, model.hparams.mask_ratio)[0].item()
        torch.manual_seed(1)
        ours = model(images, noise=torch.rand(n, length, device=images.device))[0].item()
    return {"sslvit": ours, "reference": ref_loss, "abs_diff": abs(ours - ref_loss)}


def loader_throughput(args: argparse.Namespace) -> dict[str, Any]:
    """Batches per second of the training loader, delivered on ``--device`` (crops made there with data.on_device)."""
    import torch

    from sslvit.cli import run_cli

    config, *own_overrides = shlex.split(args.config[0])
    overrides = [*own_overrides, *args.overrides] + (
        [f"--data.batch_size={args.batch_size}"] if args.batch_size else []
    )
    datamodule = run_cli(["--config", config, "--trainer.logger", "false", *overrides], run=False).datamodule
    datamodule.setup("fit")
    device = torch.device(args.device)
    sync = device_sync(device)

    def deliver(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        tensors = {k: v.to(device, non_blocking=True) for k, v in batch.items() if isinstance(v, torch.Tensor)}
        if tensors["images"].ndim == 1:  # data.on_device: the loader gave dataset indices, crops are made here
            return datamodule.augment_on_device(tensors["images"], tensors["keys"])
        return tensors["images"]

    iterator = iter(datamodule.train_dataloader())
    shape = list(deliver(next(iterator)).shape)  # workers start, resident images move to the device
    sync()
    start, images = time.perf_counter(), 0
    for _ in range(args.steps):
        batch = next(iterator)
        images += len(batch["keys"])
        deliver(batch)
    sync()
    seconds = time.perf_counter() - start
    return {
        "device": args.device,
        "batch_size": datamodule.batch_size,
        "on_device": datamodule.hparams.on_device,
        "num_workers": datamodule.num_workers,
        "image_shape": shape,
        "loader_images_per_s": images / seconds,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(__file__, description=__doc__)
    parser.add_argument(
        "--config",
        required=True,
        action="append",
        metavar="'CONFIG [SETTING ...]'",
        help="a method config, with settings for it alone; several run side by side",
    )
    parser.add_argument("--batch-size", type=int, help="default: the config's data.batch_size")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument(
        "--compile",
        nargs="?",
        const="model",
        choices=["model", "blocks"],
        help="torch.compile the whole model (default) or each transformer block",
    )
    parser.add_argument("--precision", default="32", choices=["32", "bf16-mixed"])
    parser.add_argument("--loader", action="store_true", help="measure the data pipeline alone")
    parser.add_argument("--reference-mae", help="a checkout of facebookresearch/mae to measure side by side")
    parser.add_argument("--levers", action="store_true", help="sslvit with its speed levers added one by one")
    parser.add_argument("--peak-tflops", type=float, help="device peak for MFU (default: known GPUs' bf16 peak)")
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="ROWS",
        help="print torch.profiler's ROWS most expensive operators of each variant",
    )
    parser.add_argument("--output", help="write the results as JSON here")
    parser.add_argument("--json", dest="output", help=argparse.SUPPRESS)  # its name before --output everywhere
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="extra `sslvit fit` settings, after --")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.worker:
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        return run_worker(args)
    if len(args.config) > 1 and (args.loader or args.levers or args.reference_mae):
        raise SystemExit("--loader, --levers and --reference-mae measure one --config")
    if args.loader:
        result = {"config": args.config[0], **loader_throughput(args)}
        print(json.dumps(result, indent=2))
        if args.output:
            Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
        return

    argv = ["--steps", str(args.steps), "--warmup", str(args.warmup), "--device", args.device,
            "--precision", args.precision, "--profile", str(args.profile)]  # fmt: skip
    if args.batch_size:
        argv += ["--batch-size", str(args.batch_size)]
    if args.reference_mae:
        argv += ["--reference-mae", args.reference_mae]
    argv += ["--", *args.overrides]
    sslvit = {**SSLVIT, "compile": args.compile or False}
    variants = [("sslvit", args.config[0], sslvit)]
    if len(args.config) > 1:
        variants = [(config_name(config), config, sslvit) for config in args.config]
    if args.levers:
        variants = [(name, args.config[0], {**SSLVIT, **change}) for name, change in LEVERS]
    if args.reference_mae:
        variants.insert(0, ("facebookresearch/mae", args.config[0], {"kind": "reference", "malloc": False}))
    workers = [Worker(name, variant, ["--config", config, *argv]) for name, config, variant in variants]
    for _ in range(args.steps):  # round robin: every variant sees the same machine load
        for worker in workers:
            worker.step()
    for worker in workers:
        worker.close()
    report(args, workers)


def config_name(config: str) -> str:
    """A variant's name: 'configs/cpc/cifar10_vit_tiny.yaml --model.init_args.x=1' -> 'cpc/cifar10_vit_tiny x=1'."""
    path, *settings = shlex.split(config)
    settings = [s.removeprefix("--").removeprefix("model.init_args.") for s in settings]
    return " ".join([f"{Path(path).parent.name}/{Path(path).stem}", *settings])


def report(args: argparse.Namespace, workers: list[Worker]) -> None:
    info = workers[-1].info
    peak = args.peak_tflops
    if peak is None and args.device.startswith("cuda"):
        import torch

        peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in torch.cuda.get_device_name()), None)
    result: dict[str, Any] = {
        "config": info["config"],
        "method": info["method"],
        "device": args.device,
        "batch_size": info["batch_size"],
        "image_size": info["image_size"],
        "precision": args.precision,
        "gflop_per_image": info["flops_per_image"] / 1e9,
        "rows": {},
    }
    baseline, width = workers[0].name, max(24, *(len(w.name) + 2 for w in workers))
    print(
        f"{'variant':<{width}}{'images/s':>10}{'ms/step':>10}{'GFLOP/s':>10}{'images/s vs ' + baseline[:18]:>32}"
        f"{'GFLOP/s vs first':>18}" + (f"{'MFU':>8}" if peak else "")
    )
    for worker in workers:
        median, batch = statistics.median(worker.times), worker.info["batch_size"]
        own_flops = worker.info["flops_per_image"]  # each variant's own count (sslvit embeds only kept patches)
        row = {
            "config": worker.info["config"],
            "method": worker.info["method"],
            "batch_size": batch,
            "images_per_s": batch / median,
            "ms_per_step": median * 1e3,
            "gflop_per_image": own_flops / 1e9,
            "gflops": own_flops * batch / median / 1e9,
        }
        first = result["rows"].get(baseline, row)
        row["speedup"] = row["images_per_s"] / first["images_per_s"]
        row["gflops_ratio"] = row["gflops"] / first["gflops"]
        if "compiled_graphs" in worker.info:
            row["compiled_graphs"] = worker.info["compiled_graphs"]
        if peak:
            row["mfu"] = row["gflops"] / (peak * 1e3)
        result["rows"][worker.name] = row
        print(
            f"{worker.name:<{width}}{row['images_per_s']:>10.1f}{row['ms_per_step']:>10.1f}{row['gflops']:>10.1f}"
            f"{row['speedup']:>31.2f}x{row['gflops_ratio']:>17.2f}x" + (f"{row['mfu']:>8.1%}" if peak else "")
        )
    if "loss_check" in workers[0].info:
        result["loss_check"] = workers[0].info["loss_check"]
        print(f"same weights and masks, loss: {result['loss_check']}")
    counts = ", ".join(f"{w.name} {w.info['flops_per_image'] / 1e9:.3f}" for w in workers)
    print(f"GFLOP per image (forward + backward, torch's counter): {counts}")
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

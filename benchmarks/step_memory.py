"""Peak memory of a training step, per image: measured at several batch sizes, the slope is bytes per image.

    python benchmarks/step_memory.py --config configs/cpc/cifar10_vit_tiny.yaml --batch-sizes 16 32
    python benchmarks/step_memory.py --config configs/cpc/cifar10_vit_tiny.yaml \\
        --config "configs/cpc/cifar10_vit_tiny.yaml --model.init_args.patches_per_chunk=392" --batch-sizes 16 32
        [--device cpu|cuda] [--precision 32|bf16-mixed] [--steps 2] [--budget-gb 80] [--output out.json]
        [-- <extra sslvit fit settings, for every config>]

Every (config, batch size) runs in a fresh process: the model and its optimizer are built as
``benchmarks/train_step.py`` builds them, ``--steps`` training steps (forward, backward, update) run on
synthetic images, and the process reports its peak memory: on a CPU the peak resident set size
(``ru_maxrss``: tensors, allocator slack and the interpreter), on CUDA ``torch.cuda.max_memory_allocated``.
A least-squares line through the peaks gives the memory per image (its slope) and what does not grow
with the batch (its intercept: weights, gradients, optimizer state, libraries), and from both the
largest batch that fits in ``--budget-gb``. Terms that grow faster than the batch (CPC's InfoNCE scores
of every prediction against every latent, ``N^2``) are small at the batch sizes measured here: the
extrapolation leaves them out (docs/speed.md, on CPC's cost).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

from sslvit.cli.parser import ToolParser
from train_step import SSLVIT, build_worker, config_name  # this folder's script

GB = 1e9


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """In the worker process: peak memory of ``args.steps`` training steps at ``args.batch_size``."""
    import torch

    step, sync, info = build_worker(args, SSLVIT, count_flops=False)
    cuda = args.device.startswith("cuda")
    before = torch.cuda.memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    for _ in range(args.steps):
        step()
    sync()
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "batch_size": info["batch_size"],
        "method": info["method"],
        "peak_bytes": peak,
        "before_steps_bytes": before,
    }


def run_variant(args: argparse.Namespace, config: str) -> list[dict[str, Any]]:
    """One fresh process per batch size (a process's peak never goes down)."""
    points = []
    for batch in args.batch_sizes:
        command = [sys.executable, __file__, "--worker", "--config", config, "--batch-sizes", str(batch),
                   "--steps", str(args.steps), "--device", args.device, "--precision", args.precision,
                   "--", *args.overrides]  # fmt: skip
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith("@@")]
        if done.returncode or not lines:
            raise SystemExit(f"memory worker for {config!r} at batch {batch} exited with {done.returncode}")
        points.append(json.loads(lines[-1][2:]))
        print(f"  {config_name(config)}: batch {batch}: peak {points[-1]['peak_bytes'] / GB:.3f} GB", flush=True)
    return points


def fit_line(points: list[dict[str, Any]]) -> tuple[float, float]:
    """Least-squares (bytes per image, intercept bytes) of the peaks against the batch sizes."""
    xs = [p["batch_size"] for p in points]
    ys = [p["peak_bytes"] for p in points]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sum((x - mean_x) ** 2 for x in xs)
    return slope, mean_y - slope * mean_x


def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(__file__, description=__doc__)
    parser.add_argument(
        "--config",
        required=True,
        action="append",
        metavar="'CONFIG [SETTING ...]'",
        help="a method config, with settings for it alone; several run one after another",
    )
    parser.add_argument("--batch-sizes", type=int, nargs="+", required=True, help="at least two for a slope")
    parser.add_argument("--steps", type=int, default=2, help="training steps per process (the 2nd has optimizer state)")
    parser.add_argument("--device", default="cpu", help="cpu (peak resident memory) or cuda (peak allocated)")
    parser.add_argument("--precision", default="32", choices=["32", "bf16-mixed"])
    parser.add_argument("--budget-gb", type=float, default=80.0, help="memory to extrapolate the batch size to")
    parser.add_argument("--output", help="write the results as JSON here")
    parser.add_argument("--json", dest="output", help=argparse.SUPPRESS)  # its name before --output everywhere
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="extra `sslvit fit` settings, after --")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.worker:
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        args.batch_size, args.reference_mae = args.batch_sizes[0], None
        print("@@" + json.dumps(measure(args)), flush=True)
        return
    if len(args.batch_sizes) < 2 or len(set(args.batch_sizes)) != len(args.batch_sizes):
        raise SystemExit("--batch-sizes needs at least two different batch sizes for a slope")
    result: dict[str, Any] = {
        "device": args.device,
        "precision": args.precision,
        "budget_gb": args.budget_gb,
        "rows": {},
    }
    for config in args.config:
        points = run_variant(args, config)
        per_image, fixed = fit_line(points)
        fits = int((args.budget_gb * GB - fixed) // per_image) if per_image > 0 else None
        result["rows"][config_name(config)] = {
            "config": config,
            "points": points,
            "bytes_per_image": per_image,
            "fixed_bytes": fixed,
            "batch_in_budget": fits,
        }
    width = max(24, *(len(name) + 2 for name in result["rows"]))
    peaks = "".join(f"{'peak GB @' + str(b):>14}" for b in args.batch_sizes)
    print(f"{'variant':<{width}}{peaks}{'MB/image':>11}{'fixed GB':>10}{f'batch in {args.budget_gb:g} GB':>16}")
    for name, row in result["rows"].items():
        cells = "".join(f"{p['peak_bytes'] / GB:>14.3f}" for p in row["points"])
        fits = row["batch_in_budget"]
        print(
            f"{name:<{width}}{cells}{row['bytes_per_image'] / 1e6:>11.1f}{row['fixed_bytes'] / GB:>10.2f}"
            f"{fits if fits is not None else '-':>16}"
        )
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Fine-tune a checkpoint's encoder end to end (MAE's protocol) and report val top-1/top-5 after every epoch.

    python tools/finetune.py --checkpoint runs/.../last.ckpt --config configs/finetune/cifar10_vit_tiny.yaml \\
        --data-root ../shared/data/cifar10 --output ft.json
    python tools/finetune.py --checkpoint runs/.../last.ckpt --random-init ...   # from scratch, same recipe
    python tools/finetune.py --checkpoint runs/.../last.ckpt --minutes 20 ...    # for a wall-clock budget
    python tools/finetune.py --checkpoint runs/.../last.ckpt --petaflops 0.05 ... # for a budget of FLOPs

The run is `sslvit fit` of sslvit.eval.FineTune with the given recipe (a config of configs/finetune/), the
checkpoint's encoder and preprocessing, in its own run directory (resume it with `sslvit fit --config
<run dir>/config.yaml --ckpt_path last`). The JSON holds the final epoch's top1/top5 (percent), the best
epoch, every epoch and the full settings. Extra `sslvit fit` settings go after `--`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sslvit.cli.finetune import add_finetune_args, headline, run_finetune, table
from sslvit.cli.parser import ToolParser
from sslvit.errors import one_line_errors
from sslvit.outputs import write_json

DEFAULT_CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "finetune" / "quickstart.yaml")


def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(__file__, description=__doc__)
    add_finetune_args(parser, DEFAULT_CONFIG)
    return parser


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    with one_line_errors(parser.prog):
        record = run_finetune(args)
    print(headline(record))
    print(table(record))
    if args.output:
        print(f"wrote {write_json(args.output, record)}")
    return record


if __name__ == "__main__":
    main()

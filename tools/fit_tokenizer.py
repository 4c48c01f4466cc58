"""Fit BEiT's k-means tokenizer from the YAML config of `sslvit fit`, print its coverage, save it.

    python tools/fit_tokenizer.py --config configs/beit/cifar10_vit_tiny.yaml \\
        --data.root ../shared/data/cifar10 --data.dataset imagefolder --output runs/tokenizer-cifar10

The model section (a BEiT: its backbone's patch grid and its `codebook` settings) and the data
section are parsed with the same typed signatures as `sslvit fit`, so the same overrides work
(`--data.root`, `--model.init_args.codebook.vocab_size`, ...); the trainer and checkpoint sections
are accepted and ignored. Writes OUTPUT/codebook.safetensors and OUTPUT/tokenizer.json.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

from jsonargparse import ActionConfigFile, ArgumentParser

from sslvit.cli.parser import OneLineErrorParser
from sslvit.data import SSLDataModule
from sslvit.errors import ConfigError, one_line_errors
from sslvit.methods import BEiT
from sslvit.methods.beit.tokenizer import TOKENIZER_JSON
from sslvit.methods.beit.tokenizer_fit import describe, fit_tokenizer_on_data

IGNORED_SECTIONS = ("seed_everything", "trainer", "checkpoint", "ckpt_path", "optimizer", "lr_scheduler")


def build_parser() -> ArgumentParser:
    parser = OneLineErrorParser(prog="fit_tokenizer.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", action=ActionConfigFile, help="a config of `sslvit fit` whose model is a BEiT")
    parser.add_subclass_arguments(BEiT, "model", required=True)
    parser.add_class_arguments(SSLDataModule, "data")
    parser.add_argument("--output", type=str, required=True, help="directory to write the tokenizer to")
    parser.add_argument("--overwrite", type=bool, default=False, help="replace a tokenizer already in --output")
    for section in IGNORED_SECTIONS:
        parser.add_argument(f"--{section}", type=Any, default=None, help="read from the config and not used")
    return parser


def main(args: list[str] | None = None) -> Path:
    parser = build_parser()
    config = parser.parse_args(args)
    with one_line_errors(parser.prog):
        return fit_and_save(parser, config, sys.argv[1:] if args is None else args)


def fit_and_save(parser: ArgumentParser, config: Any, args: list[str]) -> Path:
    output = Path(config.output)
    if (output / TOKENIZER_JSON).exists() and not config.overwrite:
        raise FileExistsError(f"{output} already holds a tokenizer; pass --overwrite true to replace it")
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes  # renamed in jsonargparse 4.49
    init = instantiate(config)
    model, data = init.model, init.data
    if data.image_size != model.backbone_config.img_size:
        raise ConfigError(
            f"data.image_size={data.image_size} but the model expects {model.backbone_config.img_size}px images "
            "(model.backbone.img_size): set both to the same value"
        )
    tokenizer, stats = fit_tokenizer_on_data(data, model.backbone_config, model.codebook_config)
    tokenizer.save(output)
    print(describe(tokenizer, stats))
    print(f"saved to {output}/ ({TOKENIZER_JSON}, codebook.safetensors). Pretrain with it:")
    print("  " + training_command(args, output))
    return output


def training_command(args: list[str], output: Path) -> str:
    """The `sslvit fit` command with this tool's config and overrides, using the tokenizer just written."""
    kept, skip_value = [], False
    for arg in args:
        if skip_value or arg.startswith(("--output=", "--overwrite=")):
            skip_value = False
        elif arg in ("--output", "--overwrite"):
            skip_value = True
        else:
            kept.append(arg)
    return shlex.join(["sslvit", "fit", *kept, "--model.init_args.tokenizer", str(output)])


if __name__ == "__main__":
    main()

"""sslvit's MAE against facebookresearch/mae's training code at equal budgets: kNN of both, over seeds and variants.

    python benchmarks/mae_vs_official.py --mae-repo /path/to/mae --data-root ../shared/data/cifar10 \\
        --steps 500 --seeds 0 1 --variants official sslvit sslvit-pil-loader --output mae-vs-official.json
    python benchmarks/mae_vs_official.py ... --petaflops 0.05 ...   # or --minutes 10: the same budget for each

Every variant pretrains the CIFAR-10 config's architecture (``--config``) with each seed on the class-balanced
``--train-images`` subset drawn with that seed (the same images for every variant but ``reference``) for the
budget: ``--steps`` steps of the config's batch (warmup ``--warmup-steps``, then cosine; the default),
``--petaflops`` (each counts the FLOPs of its own step) or ``--minutes``, with the harness
(``benchmarks/harness.py``). Then its encoder's CLS features, with the checkpoint's preprocessing, are
evaluated by kNN (k = 20, T = 0.07) with a class-balanced ``--train-images`` of train (seed 0) as the
bank and the val split as queries. Variants switch one difference at a time:

- ``official``: ``benchmarks/official_mae.py`` (their model, initialisation, schedule, PIL loader,
  weight-decay groups);
- ``reference``: the project's reference loop around facebookresearch/mae's model
  (``--reference-script``, by default ``../shared/reference/mae_official_short.py``: their model trained
  as their ``main_pretrain.py`` does, written independently of ``official_mae.py``; it trains on the
  first ``--train-images / 10`` files of each class and saves the official checkpoint format);
- ``sslvit``: ``sslvit fit`` with the config as it is (crops made on the device from uint8 images);
- ``sslvit-pil-loader``: the same with torchvision's PIL crops in loader workers (``data.on_device: false``,
  ``data.fast_decode: false``); ``sslvit-decode-crop``: with the fast file path (``data.on_device: false``);
- any other name ``sslvit:<key>=<value>,...``: ``sslvit fit`` with those overrides (e.g.
  ``sslvit:data.num_workers=0``).

Prints a table (mean and std over seeds, and each variant's difference to the first, paired by seed) and
writes every run's record as JSON. A variant's run directory that is done is read, not retrained.

``--output`` is also a page of ``benchmarks/results/`` (``benchmarks/tables.py`` writes its markdown). Seeds
and variants run in several calls (or on several machines) are one record with ``--merge``, which checks
that every part was trained with the same settings::

    python benchmarks/mae_vs_official.py --merge part1.json part2.json --lockstep lockstep.json \\
        --output benchmarks/results/mae_vs_official.json

``--lockstep`` adds the record of ``benchmarks/mae_lockstep.py`` (the two training loops on the same inputs)
to the page.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from harness import (
    REPO,
    EvalSplit,
    RunBudget,
    add_budget_args,
    claim_run,
    evaluate_encoder,
    file_sha256,
    fit,
    fit_official,
    machine,
    today,
    unclaimed_on_failure,
)
from sslvit.cli.parser import ToolParser
from sslvit.errors import ConfigError, one_line_errors
from sslvit.eval.seeds import paired_difference, spread

VARIANTS = {
    "sslvit": [],
    # torchvision's RandomResizedCrop on PIL images in loader workers (the reference's transform, keyed RNG)
    "sslvit-pil-loader": ["--data.on_device", "false", "--data.fast_decode", "false"],
    # sslvit's fast file path: JPEG decoded by torchvision.io, cropped and resized as uint8 tensors in workers
    "sslvit-decode-crop": ["--data.on_device", "false"],
}
DEFAULT_BUDGET = RunBudget(steps=500)
COMPARABLE = ("config", "train_images", "warmup_steps")  # with the budget: runs of other settings never merge
DOCS_SECTION = "mae-against-the-official-training-code"
ORDER = {"reference": 0, "official": 1, "sslvit": 2}  # the page's rows, each compared with the first
DESCRIPTIONS = {
    "reference": "`reference`: the reference loop around facebookresearch/mae's model",
    "official": "`official`: facebookresearch/mae's loop and model (`benchmarks/official_mae.py`)",
    "sslvit": "`sslvit`: `sslvit fit` of the config as it is",
    "sslvit-pil-loader": "`sslvit-pil-loader`: PIL crops in loader workers",
    "sslvit-decode-crop": "`sslvit-decode-crop`: crops of uint8 tensors in loader workers",
}


def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(__file__, description=__doc__)
    parser.add_argument("--mae-repo", help="a checkout of facebookresearch/mae (`official` and `reference` variants)")
    parser.add_argument(
        "--reference-script",
        default=str(REPO.parent / "shared" / "reference" / "mae_official_short.py"),
        help="the reference training loop of the `reference` variant",
    )
    parser.add_argument("--config", default="configs/mae/cifar10_vit_tiny.yaml")
    parser.add_argument("--data-root", help="an ImageFolder root with train/ and val/ (required to train)")
    parser.add_argument("--train-images", type=int, default=10000)
    add_budget_args(parser, "pretraining (every variant's)", default=DEFAULT_BUDGET)
    parser.add_argument("--warmup-steps", type=int, default=100, help="with --steps")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--variants", nargs="+", default=["official", "sslvit", "sslvit-pil-loader"])
    parser.add_argument("--run-dir", default="runs/mae-vs-official")
    parser.add_argument("--output", help="write every run's record as JSON (a page of benchmarks/results/)")
    parser.add_argument(
        "--merge", nargs="+", metavar="RECORD", help="train nothing: one record of these --output records' runs"
    )
    parser.add_argument("--lockstep", metavar="RECORD", help="with --merge: add this mae_lockstep.py record's table")
    parser.add_argument(
        "--note", action="append", default=[], help="with --merge: a line under the table (e.g. how a part was made)"
    )
    return parser


def sslvit_overrides(variant: str) -> list[str]:
    if variant in VARIANTS:
        return VARIANTS[variant]
    if variant.startswith("sslvit:"):
        pairs = [p.split("=", 1) for p in variant.removeprefix("sslvit:").split(",")]
        return [arg for key, value in pairs for arg in (f"--{key}", value)]
    raise ConfigError(
        f"unknown variant {variant!r}: official, reference, {', '.join(VARIANTS)} or sslvit:<key>=<value>,..."
    )


def pretrain(args: argparse.Namespace, variant: str, seed: int, run: Path) -> str:
    """Train one variant (unless its run is done); returns its checkpoint."""
    budget = RunBudget.from_args(args, DEFAULT_BUDGET)
    if variant == "official":
        official = fit_official(
            args.mae_repo, args.config, run, budget, seed, args.train_images, args.data_root, args.warmup_steps
        )
        return official.checkpoint
    if variant == "reference":  # written independently of the harness: its own loop, schedule and subset
        checkpoint = run / "mae.pth"
        if budget.kind != "steps":
            raise ConfigError("the reference variant trains for --steps only")
        command = [sys.executable, args.reference_script, args.data_root, "--mae-repo", args.mae_repo,
                   "--train-images", str(args.train_images), "--steps", str(budget.steps), "--warmup",
                   str(args.warmup_steps), "--seed", str(seed), "--save", str(checkpoint),
                   "--output", str(run / "reference.json")]  # fmt: skip
        setting = {"loop": "reference", "script_sha256": file_sha256(args.reference_script), "seed": seed}
        setting |= {"train_images": args.train_images, "data_root": args.data_root, "warmup_steps": args.warmup_steps}
        claim_run(run, setting, budget)  # its checkpoint is reused only for the setting it was trained with
        if not checkpoint.is_file():
            with unclaimed_on_failure(run, checkpoint):
                subprocess.run(command, check=True, cwd=REPO)
        return str(checkpoint)
    overrides = sslvit_overrides(variant) + ["--trainer.enable_progress_bar", "false"]
    if budget.kind == "steps":
        overrides = ["--model.init_args.warmup_steps", str(args.warmup_steps), *overrides]
    return fit(args.config, run, budget, seed, overrides, args.train_images, data_root=args.data_root).checkpoint


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = build_parser().parse_args(argv)
    with one_line_errors("mae_vs_official.py"):
        if args.merge:
            return merge(args.merge, args.output, args.lockstep, args.note)
        if not args.data_root:
            raise ConfigError("--data-root is required to train (or --merge records)")
        return compare(args)


def compare(args: argparse.Namespace) -> list[dict[str, Any]]:
    for variant in args.variants:  # a misspelt variant fails before hours of training, not after
        if variant not in ("official", "reference"):
            sslvit_overrides(variant)
    bank = EvalSplit("val", train_images=args.train_images, seed=0)
    records = []
    for seed in args.seeds:
        for variant in args.variants:
            run = Path(args.run_dir) / f"{variant.replace(':', '_').replace('=', '-')}-seed{seed}"
            checkpoint = pretrain(args, variant, seed, run)
            top1 = evaluate_encoder(checkpoint, args.data_root, bank, features="cls", linear=False)["knn_top1"]
            records.append({"variant": variant, "seed": seed, "knn_top1": top1, "run": str(run), **provenance(args)})
            print(f"{variant:<28} seed {seed}: kNN top-1 {top1:.2f}%", flush=True)
    if args.output:
        write_record(records, args.output)
    else:
        summarize(records, variants_in(records))
    return records


def provenance(args: argparse.Namespace) -> dict[str, Any]:
    """What makes runs comparable (checked by --merge) and where they were made."""
    settings = {key: getattr(args, key) for key in COMPARABLE}
    settings["budget"] = asdict(RunBudget.from_args(args, DEFAULT_BUDGET))
    return {"settings": settings, "machine": machine(), "date": today()}


def variants_in(records: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(r["variant"] for r in records))


def merge(
    paths: list[str], output: str | None, lockstep: str | None = None, notes: list[str] = ()
) -> list[dict[str, Any]]:
    """The runs of several ``--output`` records as one (refused when their settings differ, or when the same
    variant and seed have two different numbers)."""
    if not output:
        raise ConfigError("--merge writes one record: name it with --output")
    runs: dict[tuple[str, int], dict[str, Any]] = {}
    for path in paths:
        for run in json.loads(Path(path).read_text())["runs"]:
            first = next(iter(runs.values()), run)
            if run["settings"] != first["settings"]:
                raise ConfigError(
                    f"{path}: {run['variant']} seed {run['seed']} was trained with {json.dumps(run['settings'])}, "
                    f"the others with {json.dumps(first['settings'])}: only runs of the same settings merge"
                )
            known = runs.setdefault((run["variant"], run["seed"]), run)
            if known["knn_top1"] != run["knn_top1"]:
                raise ConfigError(
                    f"{path}: {run['variant']} seed {run['seed']} is {run['knn_top1']}, another record says "
                    f"{known['knn_top1']}: keep one of them"
                )
    records = sorted(runs.values(), key=lambda r: (r["seed"], r["variant"]))
    write_record(records, output, json.loads(Path(lockstep).read_text()) if lockstep else None, notes)
    return records


def write_record(
    records: list[dict[str, Any]], output: str, lockstep: dict[str, Any] | None = None, notes: list[str] = ()
) -> None:
    """The runs, their summary and the page ``benchmarks/tables.py`` writes from them (with the table of a
    ``mae_lockstep.py`` record)."""
    variants = variants_in(sorted(records, key=lambda r: ORDER.get(r["variant"], len(ORDER))))
    summary = summarize(records, variants)
    settings = records[0]["settings"]
    seeds = sorted({r["seed"] for r in records})
    seeds_of = {v: tuple(sorted({r["seed"] for r in records if r["variant"] == v})) for v in variants}
    commands = [  # one per set of seeds, as the runs were made
        "python benchmarks/mae_vs_official.py --mae-repo /path/to/mae --data-root ../shared/data/cifar10 \\\n"
        f"    --train-images {settings['train_images']} {budget_flags(settings)} --seeds {' '.join(map(str, group))} "
        f"--variants {' '.join(v for v in variants if seeds_of[v] == group)} --output record.json"
        for group in dict.fromkeys(seeds_of.values())
    ]
    first = variants[0]
    rows = []
    for variant in variants:
        values = {r["seed"]: r["knn_top1"] for r in records if r["variant"] == variant}
        own = summary[variant]["knn_top1"]
        row = {"variant": DESCRIPTIONS.get(variant, f"`{variant}`"), "mean": own["mean"], "std": own["std"]}
        row["seeds"] = ", ".join(f"{values[s]:.2f}" if s in values else "–" for s in seeds)
        if (diff := summary[variant].get(f"minus_{first}")) is not None:
            row["diff"] = {"value": diff["mean"], "range": [diff["low"], diff["high"]] if diff["n"] > 1 else None}
        rows.append(row)
    table = {
        "title": f"kNN top-1 on val at {budget_text(settings)}, seeds {', '.join(map(str, seeds))}",
        "about": (
            f"Each variant pretrains the MAE config's ViT (`{settings['config']}`) with each seed on "
            f"{settings['train_images']:,} CIFAR-10 train images; kNN (k = 20, T = 0.07) of its CLS token with a "
            f"class-balanced {settings['train_images']:,}-image train subset (seed 0) as the bank and the 5,000 "
            f"val images as queries. The difference to `{first}` is paired by seed, with its 95% t-interval."
        ),
        "columns": [
            {"key": "variant", "label": "variant"},
            {"key": "seeds", "label": f"seeds {', '.join(map(str, seeds))}"},
            {"key": "mean", "label": "mean", "format": ".2f"},
            {"key": "std", "label": "sample std", "format": ".2f"},
            {"key": "diff", "label": f"minus `{first}` [95% interval]", "format": "+.2f"},
        ],
        "rows": rows,
        "notes": list(notes),
        "commands": commands,
        "machine": "; ".join(sorted({r["machine"] for r in records})),
        "date": ", ".join(sorted({r["date"] for r in records})),
    }
    page = {
        "title": "sslvit's MAE against facebookresearch/mae's training at equal steps",
        "about": f"How it is made and what it means: [docs/results.md](../../docs/results.md#{DOCS_SECTION}).",
        "tables": [table] + ([lockstep_table(lockstep)] if lockstep else []),
        "runs": records,
        "summary": summary,
    }
    if lockstep:
        page["lockstep"] = {key: value for key, value in lockstep.items() if key != "losses"}
    Path(output).write_text(json.dumps(page, indent=2) + "\n")


def lockstep_table(record: dict[str, Any]) -> dict[str, Any]:
    """``benchmarks/mae_lockstep.py``'s record as a table: both loops, the same weights, batches and masks."""
    settings, losses = record["settings"], record["losses"]
    rows = [
        {
            "loop": name,
            "loss_450": losses[loop][min(449, len(losses[loop]) - 1)],
            "final_loss": record["final_loss"][loop],
            "knn": record[loop]["knn_top1"],
            "plain_knn": record[loop]["plain_knn_top1"],
        }
        for loop, name in [("sslvit", "sslvit's MAE loop"), ("official", "facebookresearch/mae's model and update")]
    ]
    return {
        "title": f"The two loops on the same inputs, {record['steps']} steps",
        "about": (
            "`benchmarks/mae_lockstep.py`: `sslvit fit` of the config trains while its initial weights and every "
            "batch (cropped, flipped, normalised) are recorded with the samples' keys; facebookresearch/mae's model "
            "then starts from the same weights and trains on the same batches with the same masks. Largest "
            f"difference of the two losses over the {record['steps']} steps: {record['max_loss_difference']:.1e}. "
            "kNN as above (Faiss, the tools' path) and with a plain torch kNN."
        ),
        "columns": [
            {"key": "loop", "label": "loop"},
            {"key": "loss_450", "label": "loss at step 450", "format": ".4f"},
            {"key": "final_loss", "label": "last loss", "format": ".4f"},
            {"key": "knn", "label": "kNN top-1", "format": ".2f"},
            {"key": "plain_knn", "label": "plain kNN top-1", "format": ".2f"},
        ],
        "rows": rows,
        "commands": [
            "python benchmarks/mae_lockstep.py --mae-repo /path/to/mae --data-root ../shared/data/cifar10 "
            f"--steps {settings['steps']} --warmup-steps {settings['warmup_steps']} "
            f"--train-images {settings['train_images']} --seed {settings['seed']} --output lockstep.json"
        ],
        "machine": record["machine"],
        "date": record["date"],
    }


def budget_flags(settings: dict[str, Any]) -> str:
    budget = RunBudget(**settings["budget"])
    flags = budget.flags()
    if budget.kind == "steps":
        flags += ["--warmup-steps", str(settings["warmup_steps"])]
    return " ".join(flags)


def budget_text(settings: dict[str, Any]) -> str:
    budget = RunBudget(**settings["budget"])
    return f"{budget} (warmup {settings['warmup_steps']} steps)" if budget.kind == "steps" else str(budget)


def summarize(records: list[dict[str, Any]], variants: list[str]) -> dict[str, Any]:
    """Print and return each variant's kNN over seeds and its paired difference to the first variant."""
    by_variant = {v: {r["seed"]: r["knn_top1"] for r in records if r["variant"] == v} for v in variants}
    by_variant = {v: seeds for v, seeds in by_variant.items() if seeds}
    first = next(iter(by_variant), None)
    summary: dict[str, Any] = {}
    print(f"\n{'variant':<28} kNN top-1 over seeds (mean ± sample std, 95% CI)   vs {first} (paired by seed)")
    for variant, seeds in by_variant.items():
        own = spread([seeds[s] for s in sorted(seeds)])
        summary[variant] = {"knn_top1": own.to_dict()}
        line = f"{variant:<28} {own!s:<48}"
        if variant != first and set(seeds) & set(by_variant[first]):
            diff = paired_difference(seeds, by_variant[first])
            summary[variant][f"minus_{first}"] = diff.to_dict()
            line += f"  {diff.mean:+.2f} (95% CI {diff.low:+.2f} to {diff.high:+.2f})"
        print(line)
    return summary


if __name__ == "__main__":
    main()

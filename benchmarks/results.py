"""The results table: every method pretrained for the same budget of FLOPs on CIFAR-10, over seeds, then evaluated.

    python benchmarks/results.py --data-root ../shared/data/cifar10 --petaflops 0.1 --train-images 10000 \\
        --seeds 0 1 2 --finetune-petaflops 0.1 --mae-repo /path/to/mae
    python benchmarks/results.py --data-root ../shared/data/cifar10 --minutes 10 --methods beit   # one row, 1 seed
    python benchmarks/results.py --data-root ../shared/data/cifar10 --petaflops 0.05 --methods mae --quick
    python benchmarks/results.py --table                                                          # from the JSONs

A **row** is a method: ``mae``, ``beit``, ``cpc`` (``configs/<method>/cifar10_vit_tiny.yaml`` with the
short-budget settings of ``BUDGET_SETTINGS``) and ``official-mae`` (facebookresearch/mae's model and
training loop from a local checkout, with the MAE config's sizes: ``benchmarks/official_mae.py``). A
**record** is one (row, seed), written to ``<output>/<method>-seed<seed>.json`` as soon as it is done;
a rerun skips the records the same command made, and the parts of the others that are done: a finished
pretraining or evaluation is read from the run directory (a pretraining that was stopped resumes from its
checkpoint), so adding ``--finetune-petaflops`` to a table only fine-tunes. For each, with the harness
(``benchmarks/harness.py``):

1. pretraining with ``--seed`` (``seed_everything``: initialisation, data order, every sample's crops and
   masks, the draw of ``--train-images``) for the budget, the same for every row: ``--petaflops`` (the
   default, ``sslvit.cli.FlopBudget``: steps = ceil(budget / FLOPs of one step), so a row means the same on
   any machine and runs may share one), or ``--minutes`` of wall clock, or ``--steps``; the schedule
   follows what is spent, no validation during training. The record holds the steps, images seen, FLOPs
   spent and seconds of training (training alone);
2. kNN (k = 20, T = 0.07) and the linear probe (learning rate chosen on 10% of train held out, val
   reported once) on val with all of train as the bank, the method's native feature and the checkpoint's
   preprocessing, of the encoder and of its random twin (the same architecture initialised with the
   seed): the numbers ``tools/knn_eval.py`` and ``tools/linear_probe.py`` print (their commands are
   in the record);
3. fine-tuning (``tools/finetune.py``, ``configs/finetune/cifar10_vit_tiny.yaml``, the same recipe and
   budget for every row: ``--finetune-petaflops`` (default 0.1) or ``--finetune-minutes``; 0: none) of the
   encoder and of the random twin (run once for rows whose twins are the same);
4. with ``--curve``, kNN of the encoder saved at every fifth of the budget (a 5,000-image bank, 1,000
   val queries).

``--quick`` is a single quick run: kNN of the encoder and its twin only (no linear probe, fine-tuning or
curve). ``--table`` writes ``<output>/results.md`` from the records, without training: per row the mean
± sample std over seeds and every seed's numbers, the difference to the random twin and to official-mae
as a mean paired by seed with its 95% t-interval (``sslvit.eval.seeds``), FLOPs, images seen and
training time, and the commands, machines and dates of the records; and ``<run-dir>/curves.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import time
from pathlib import Path
from typing import Any

from harness import (
    REPO,
    EvalSplit,
    RunBudget,
    add_budget_args,
    evaluate_encoder,
    file_sha256,
    fit,
    fit_official,
    load_tool,
    machine,
    short_hash,
    stored,
    today,
)

CONFIGS = {m: f"configs/{m}/cifar10_vit_tiny.yaml" for m in ("mae", "beit", "cpc")}
FINETUNE_CONFIG = "configs/finetune/cifar10_vit_tiny.yaml"
ROWS = ("mae", "beit", "cpc", "official-mae")
REFERENCE_ROW = "official-mae"
# MAE's config costs 0.89 GFLOP per image, BEiT's 2.24, CPC's (with BUDGET_SETTINGS) 1.14, forward and backward:
# 0.1 PFLOP is 875 steps of 128 for MAE (at 360 steps its kNN is still in its early dip below random), 349 for
# BEiT, 686 for CPC. Fine-tuning gets the pretraining's budget: 0.1 PFLOP is 355 steps of 128 images of
# ViT-Tiny/4 (2.2 GFLOP each), one epoch of CIFAR-10 train. At 0.02 PFLOP (70 steps) MAE's recipe (mixup,
# cutmix, RandAugment) barely moves the loss from ln 10 (2.30 -> 2.23; MAE seed 0 28.9% against its twin's 24.0%).
DEFAULT_BUDGET, DEFAULT_FINETUNE = RunBudget(petaflops=0.1), RunBudget(petaflops=0.1)
CURVE_POINTS = 5
CURVE_SPLIT = EvalSplit("val", train_images=5000, val_images=1000)  # the curve's kNN: a 5,000 bank, 1,000 queries
METRICS = (("knn_top1", "kNN"), ("linear_top1", "linear"), ("finetune_top1", "fine-tune"))
# Settings of each row on top of its config, for a budget of minutes instead of the configs' hundreds of
# epochs; chosen for cost and regularisation, or on held-out train images with benchmarks/screen_settings.py,
# never on val: no drop path and no colour jitter (regularisers of long runs) and crops on the device (CIFAR
# fits in memory) for BEiT; CPC's non-overlapping 4x4 grid of 8 px patches (16 patch encodings per image
# instead of 49, 4.1x the images per second) predicting 2 rows ahead, top-down and bottom-up, with a 4-block
# patch encoder (screened at 8 minutes: 12 blocks stayed at random init's kNN, 6 and 4 blocks learned,
# 4 the most; benchmarks/results/settings.md). All rows train in fp32: bf16 autocast was no faster on an AMX
# CPU for any of the three steps (benchmarks/results/speed.md).
BUDGET_SETTINGS = {
    "mae": [],
    "beit": ["--data.on_device", "true", "--data.color_jitter", "0", "--model.init_args.backbone.drop_path_rate", "0"],
    "cpc": ["--model.init_args.patch_stride", "8", "--model.init_args.prediction_steps", "2",
            "--model.init_args.directions", "[top_down, bottom_up]", "--model.init_args.backbone.depth", "4"],
}  # fmt: skip


RUN_DIR = "runs/results"
OUTPUT = REPO / "benchmarks" / "results"


def build_parser() -> argparse.ArgumentParser:
    from sslvit.cli.parser import ToolParser

    parser = ToolParser(__file__, description=__doc__)
    parser.add_argument("--data-root", default="../shared/data/cifar10", help="an ImageFolder root with train/, val/")
    add_budget_args(parser, "pretraining (every row's)", default=DEFAULT_BUDGET)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="a record per method and seed")
    parser.add_argument("--train-images", type=int, help="pretrain on a class-balanced subset (default: all train)")
    add_budget_args(parser, "fine-tuning (every row's; 0: none)", prefix="finetune-", default=DEFAULT_FINETUNE)
    parser.add_argument("--finetune-config", default=FINETUNE_CONFIG, help="the fine-tuning recipe of every row")
    parser.add_argument("--methods", nargs="+", default=list(ROWS), choices=ROWS)
    parser.add_argument("--mae-repo", help="a checkout of facebookresearch/mae (for official-mae)")
    parser.add_argument("--quick", action="store_true", help="kNN of the encoder and its twin only")
    parser.add_argument("--curve", action="store_true", help="kNN of the encoder at every fifth of the budget")
    parser.add_argument("--run-dir", default=RUN_DIR, help="run directories and checkpoints (not committed)")
    parser.add_argument("--output", default=str(OUTPUT), help="the JSONs and results.md")
    parser.add_argument("--table", action="store_true", help="only build the table and plot from the JSONs")
    parser.add_argument("fit_args", nargs="*", help="extra `sslvit fit` settings for every sslvit row, after --")
    return parser


def finetune_budget(args: argparse.Namespace) -> RunBudget | None:
    """The fine-tuning budget (default ``DEFAULT_FINETUNE``), or None: 0 (no fine-tuning), or --quick."""
    amount = args.finetune_petaflops if args.finetune_petaflops is not None else args.finetune_minutes
    if args.quick or amount == 0:
        return None
    return RunBudget.from_args(args, DEFAULT_FINETUNE, prefix="finetune_")


def command_line(args: argparse.Namespace, methods: list[str], seeds: list[int], where: bool = False) -> str:
    """The results.py command that makes these records; ``where``: with the folders, when not the defaults
    (the page's "Made by" line; a record's own ``command`` is the same wherever it was written)."""
    budget = RunBudget.from_args(args, DEFAULT_BUDGET)
    tune = finetune_budget(args)
    command = ["python", "benchmarks/results.py", "--data-root", args.data_root, *budget.flags(),
               "--seeds", *map(str, seeds), "--methods", *methods]  # fmt: skip
    command += ["--train-images", str(args.train_images)] if args.train_images else []
    if tune or not args.quick:  # no fine-tuning is --finetune-petaflops 0 (without a flag: the default budget)
        command += [f"--finetune-{tune.kind}", f"{tune.amount:g}"] if tune else ["--finetune-petaflops", "0"]
    command += ["--finetune-config", args.finetune_config] if tune and args.finetune_config != FINETUNE_CONFIG else []
    command += ["--mae-repo", args.mae_repo] if REFERENCE_ROW in methods else []
    command += ["--quick"] * args.quick + ["--curve"] * args.curve
    if where:  # another folder is another table (one setting per folder): the command that remakes it names it
        command += ["--run-dir", args.run_dir] if Path(args.run_dir) != Path(RUN_DIR) else []
        command += ["--output", args.output] if Path(args.output).resolve() != OUTPUT else []
    command += ["--", *args.fit_args] if args.fit_args else []
    return shlex.join(command)


def pretrain(method: str, seed: int, args: argparse.Namespace, run: Path) -> Any:
    budget = RunBudget.from_args(args, DEFAULT_BUDGET)
    if method == REFERENCE_ROW:
        return fit_official(args.mae_repo, CONFIGS["mae"], run, budget, seed, args.train_images, args.data_root)
    overrides = [*BUDGET_SETTINGS[method], *args.fit_args]
    points = CURVE_POINTS if args.curve else 0
    return fit(CONFIGS[method], run, budget, seed, overrides, args.train_images, points, args.data_root)


def finetune(checkpoint: str, seed: int, args: argparse.Namespace, run: Path, random_init: bool) -> dict[str, Any]:
    """``tools/finetune.py`` of the encoder (or of its random twin), resumed when it was stopped."""
    budget = finetune_budget(args)
    flags = ["--checkpoint", checkpoint, "--data-root", args.data_root, "--config", args.finetune_config,
             *budget.flags(), "--seed", str(seed), "--run-dir", str(run)]  # fmt: skip
    flags += ["--random-init"] if random_init else []
    resume = ["--", "--ckpt_path", "last"] if (run / "checkpoints" / "last.ckpt").is_file() else []

    def tune() -> dict[str, Any]:
        result = load_tool("finetune").main([*flags, *resume])
        command = shlex.join(["python", "tools/finetune.py", *flags])
        return {"finetune_top1": result["top1"], "finetune_command": command}

    return stored(run.with_suffix(".json"), tune)


def frozen(checkpoint: str, seed: int, args: argparse.Namespace, run: Path, random_init: bool) -> dict[str, Any]:
    """kNN and linear probe (kNN alone with --quick) on val of the encoder, or of its random twin."""
    name = f"eval-{'random' if random_init else 'trained'}{'-knn' if args.quick else ''}.json"
    return stored(
        run / name,
        lambda: evaluate_encoder(checkpoint, args.data_root, seed=seed, random_init=random_init, linear=not args.quick),
    )


def recipe_key(args: argparse.Namespace) -> list[str]:
    """What a fine-tuning result is keyed by: its budget and its recipe's content (an edited recipe is a new run
    and a new result, never one read back under the file's name)."""
    return [str(finetune_budget(args)), file_sha256(args.finetune_config)]


def twin_key(checkpoint: str, args: argparse.Namespace) -> str:
    """What makes a random twin's fine-tuning: its architecture and preprocessing (rows that share them share it)."""
    from sslvit.cli.tool_inputs import load_encoder

    backbone, info = load_encoder(checkpoint)
    identity = [backbone.config.to_dict(), info.image_size, info.mean, info.std, info.eval_crop_fraction]
    return short_hash([identity, recipe_key(args)])


def run_record(method: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Pretrain, evaluate and fine-tune one (row, seed); its record, also written to ``<output>``."""
    run = Path(args.run_dir) / f"{method}-seed{seed}"
    trained = pretrain(method, seed, args, run)
    trained_eval = frozen(trained.checkpoint, seed, args, run, random_init=False)
    random_eval = frozen(trained.checkpoint, seed, args, run, random_init=True)
    if finetune_budget(args):
        recipe = short_hash(recipe_key(args))
        trained_eval.update(finetune(trained.checkpoint, seed, args, run / f"finetune-{recipe}", random_init=False))
        shared = Path(args.run_dir) / "finetune-random" / f"{twin_key(trained.checkpoint, args)}-seed{seed}"
        random_eval.update(finetune(trained.checkpoint, seed, args, shared, random_init=True))
    record = {
        "method": method,
        "seed": seed,
        **{key: value for key, value in trained.to_dict().items() if key != "command"},
        "pretrain_command": trained.to_dict()["command"],
        "train_images": args.train_images,
        **{key: None for key, _ in METRICS},
        **trained_eval,
        "random_init": {**{key: None for key, _ in METRICS}, **random_eval},
        "curve": curve(trained, args) if args.curve and method != REFERENCE_ROW else [],
        **finetune_fields(args),
        "machine": machine(),
        "date": today(),
        "command": command_line(args, [method], [seed]),
        "invocation": command_line(args, args.methods, args.seeds, where=True),
        "data": "ImageFolder at --data-root; accuracies on val, the bank all of train",
    }
    Path(args.output).mkdir(parents=True, exist_ok=True)
    (Path(args.output) / f"{method}-seed{seed}.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def recorded(output: Path, method: str, seed: int, args: argparse.Namespace) -> bool:
    """Whether this command made the record already, from the config and recipe files as they are now (their
    content, not only their names). A record of another command (e.g. one without fine-tuning) is made again,
    reusing what its run directory holds (the pretraining, the evaluations already done); after a config was
    edited, the finished pretraining refuses to be reused (``harness.claim_run``)."""
    path = output / f"{method}-seed{seed}.json"
    if not path.is_file():
        return False
    record, plan = json.loads(path.read_text()), planned(method, args)
    contents = [(record.get("setting") or {}).get("config_sha256"), record.get("finetune_config_sha256")]
    wanted = [plan["setting"]["config_sha256"], plan["finetune_config_sha256"]]
    return record.get("command") == command_line(args, [method], [seed]) and contents == wanted


def curve(trained: Any, args: argparse.Namespace) -> list[dict[str, float]]:
    """kNN of the encoder saved at every fifth of the budget: (step, images seen, PFLOPs, seconds, top-1 on val)."""
    import torch

    points = []
    for snapshot in sorted(Path(trained.checkpoint).parents[1].joinpath("snapshots").glob("*.pt")):
        saved = torch.load(snapshot, map_location="cpu", weights_only=True)
        knn = evaluate_encoder(trained.checkpoint, args.data_root, CURVE_SPLIT, linear=False, snapshot=snapshot)
        flops = trained.flops_per_step or 0.0
        points.append({"step": saved["step"], "images_seen": saved["images_seen"], "seconds": saved["seconds"],
                       "petaflops": saved["step"] * flops / 1e15, "knn_top1": knn["knn_top1"]})  # fmt: skip
    return points


# ---- one setting per folder of records -------------------------------------------------------------
def shared_setting(record: dict[str, Any]) -> dict[str, Any]:
    """What every record of one table has in common, whatever its row: the pretraining budget, the data, the
    extra ``sslvit fit`` settings after ``--`` (sslvit rows; None where unknown) and the fine-tuning recipe."""
    setting, method = record.get("setting") or {}, record["method"]
    extra = None
    if method in BUDGET_SETTINGS and "overrides" in setting:
        own = BUDGET_SETTINGS[method]
        extra = setting["overrides"][len(own) :] if setting["overrides"][: len(own)] == own else None
    return {
        "pretraining budget": record.get("budget"),
        "train images": record.get("train_images"),
        "data root": setting.get("data_root"),
        "extra fit settings": extra,
        "fine-tuning": [record["finetune_budget"], record["finetune_config"]]
        if record.get("finetune_budget")
        else None,
        "fine-tuning recipe's content": record.get("finetune_config_sha256"),
    }


def row_setting(record: dict[str, Any]) -> dict[str, Any]:
    """What every seed of one row has in common: its whole training setting but the seed (config, overrides)."""
    return {key: value for key, value in (record.get("setting") or {}).items() if key != "seed"}


def one_setting(records: list[tuple[str, dict[str, Any]]]) -> None:
    """Refuse a table of records made at different settings: ``(name, record)`` pairs, checked pairwise against
    the first that has each key. A mean over seeds of two budgets, or a row whose seeds had other overrides (a
    12-block CPC beside 4-block ones), would otherwise print as one number. None means not known (a record
    without fine-tuning, an official row without ``--`` settings) and matches anything."""
    from sslvit.errors import ConfigError

    first: dict[tuple[str | None, str], tuple[str, Any]] = {}
    for name, record in records:
        keyed = [((None, k), v) for k, v in shared_setting(record).items()]
        keyed += [((record["method"], k), v) for k, v in row_setting(record).items()]
        for key, value in keyed:
            if value is None:
                continue
            seen, other = first.setdefault(key, (name, value))
            if other != value:
                what = key[1] if key[0] is None else f"{key[0]}'s {key[1]}"
                raise ConfigError(
                    f"{seen} and {name} differ in {what} ({json.dumps(other)} vs {json.dumps(value)}): a table "
                    "compares one setting; give each setting its own --output folder (and --run-dir)"
                )


def planned(method: str, args: argparse.Namespace) -> dict[str, Any]:
    """The parts of :func:`shared_setting` and :func:`row_setting` this command's record of ``method`` will have,
    known before anything trains."""
    from dataclasses import asdict

    config = CONFIGS["mae" if method == REFERENCE_ROW else method]
    setting: dict[str, Any] = {"train_images": args.train_images, "data_root": args.data_root, "config": config}
    setting["config_sha256"] = file_sha256(REPO / config)
    if method in BUDGET_SETTINGS:
        setting["overrides"] = [*BUDGET_SETTINGS[method], *args.fit_args]
    return {
        "method": method,
        "budget": asdict(RunBudget.from_args(args, DEFAULT_BUDGET)),
        "train_images": args.train_images,
        "setting": setting,
        **finetune_fields(args),
    }


def finetune_fields(args: argparse.Namespace) -> dict[str, str | None]:
    """The record's fine-tuning recipe: budget, config path and its content (None each without fine-tuning)."""
    tune = finetune_budget(args)
    return {
        "finetune_budget": str(tune) if tune else None,
        "finetune_config": args.finetune_config if tune else None,
        "finetune_config_sha256": file_sha256(args.finetune_config) if tune else None,
    }


# ---- the table, from the records ------------------------------------------------------------------
def read_records(output: Path) -> dict[str, dict[int, dict[str, Any]]]:
    """``{row: {seed: record}}`` of the ``<method>-seed<seed>.json`` files in ``output``, refused (one line) when
    they were made at different settings (:func:`one_setting`)."""
    named = record_files(output)
    one_setting([(str(path), record) for path, record in named])
    rows: dict[str, dict[int, dict[str, Any]]] = {}
    for _, record in named:
        rows.setdefault(record["method"], {})[record["seed"]] = record
    return {row: dict(sorted(rows[row].items())) for row in ROWS if row in rows}


def record_files(output: Path) -> list[tuple[Path, dict[str, Any]]]:
    """``(path, record)`` of every row's per-seed record (``<method>-seed<seed>.json``) in ``output``."""
    named = [(path, json.loads(path.read_text())) for path in sorted(output.glob("*-seed*.json"))]
    return [(path, record) for path, record in named if "seed" in record and record.get("method") in ROWS]


def metric(records: dict[int, dict[str, Any]], key: str, twin: bool = False) -> dict[int, float]:
    """``{seed: value}`` of a metric (of the random twin with ``twin``), for the seeds that have it."""
    values = {seed: (r["random_init"] if twin else r).get(key) for seed, r in records.items()}
    return {seed: v for seed, v in values.items() if v is not None}


def mean_std(values: dict[int, float], seeds: int | None = None) -> str:
    """``mean ± std`` over the seeds that have the value; ``(n seeds)`` after it when fewer than the row's ``seeds``
    (e.g. fine-tuning run on seed 0 alone), so a one-seed number never reads as a mean."""
    from sslvit.eval.seeds import spread

    if not values:
        return "–"
    s = spread(list(values.values()))
    text = f"{s.mean:.2f} ± {s.std:.2f}" if s.n > 1 else f"{s.mean:.2f}"
    if seeds is not None and s.n < seeds:
        text += f" ({s.n} seed{'s' if s.n > 1 else ''}: {', '.join(map(str, sorted(values)))})"
    return text


def paired(a: dict[int, float], b: dict[int, float]) -> str:
    """``+1.23 [0.45, 2.01]``: the mean of a - b over the seeds both have, with its 95% interval."""
    from sslvit.eval.seeds import paired_difference

    if not set(a) & set(b):
        return "–"
    d = paired_difference(a, b)
    return f"{d.mean:+.2f} [{d.low:+.2f}, {d.high:+.2f}]" if d.n > 1 else f"{d.mean:+.2f} (1 seed)"


def average(records: dict[int, dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in records.values() if r.get(key) is not None]
    return sum(values) / len(values) if values else None


def table(output: Path, write: bool = True) -> str:
    """results.md from the records: spread over seeds, paired differences, every seed, and where they came from
    (also written to ``output`` unless ``write`` is False)."""
    rows = read_records(output)
    reference = rows.get(REFERENCE_ROW, {})

    def fmt(value: float | None, spec: str) -> str:
        return "–" if value is None else format(value, spec)

    every = [r for records in rows.values() for r in records.values()]
    docs = Path(os.path.relpath(REPO / "docs" / "results.md", output.resolve())).as_posix()
    lines = [
        "# Results: every method on the same pretraining budget",
        "",
        "Written by `python benchmarks/results.py --table` from the `<method>-seed<seed>.json` records here; how",
        f"they are made and what they do not say: [docs/results.md]({docs}).",
        "",
        *setting_lines(every),
        "## Mean ± sample std over seeds (accuracy on val, %)",
        "",
        "| row | seeds | PFLOP | images seen | training time | kNN top-1 | linear top-1 | fine-tune top-1 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, records in rows.items():
        seconds = average(records, "train_seconds")
        time_ = "–" if seconds is None else f"{seconds / 60:.1f} min"
        lines.append(
            f"| {name} | {len(records)} | {fmt(average(records, 'petaflops'), '.3f')} | "
            f"{fmt(average(records, 'images_seen'), ',.0f')} | {time_} | "
            + " | ".join(mean_std(metric(records, key), len(records)) for key, _ in METRICS)
            + " |"
        )
        lines.append(
            f"| random twin of {name} | {len(records)} | 0 | 0 | – | "
            + " | ".join(mean_std(metric(records, key, twin=True), len(records)) for key, _ in METRICS)
            + " |"
        )
    lines += [
        "",
        "## Differences paired by seed: mean [95% interval] (t, n - 1 degrees of freedom), points",
        "",
        "| row | " + " | ".join(f"{label} − random twin" for _, label in METRICS) + " | "
        + " | ".join(f"{label} − {REFERENCE_ROW}" for _, label in METRICS) + " |",
        "| --- |" + " ---: |" * (2 * len(METRICS)),
    ]  # fmt: skip
    for name, records in rows.items():
        twin = [paired(metric(records, key), metric(records, key, twin=True)) for key, _ in METRICS]
        versus = [
            paired(metric(records, key), metric(reference, key)) if name != REFERENCE_ROW else "–" for key, _ in METRICS
        ]
        lines.append(f"| {name} | " + " | ".join(twin + versus) + " |")
    lines += [
        "",
        "## Every seed",
        "",
        "| row | seed | steps | images seen | PFLOP | training s | images/s | kNN | linear | fine-tune | "
        "twin kNN | twin linear | twin fine-tune |",
        "| --- |" + " ---: |" * 12,
    ]
    for name, records in rows.items():
        for seed, r in records.items():
            twin = r["random_init"]
            accuracies = [fmt(r.get(k), ".2f") for k, _ in METRICS] + [fmt(twin.get(k), ".2f") for k, _ in METRICS]
            lines.append(
                f"| {name} | {seed} | {r['steps']} | {r['images_seen']:,} | {fmt(r.get('petaflops'), '.4f')} | "
                f"{fmt(r.get('train_seconds'), '.0f')} | {fmt(r.get('images_per_s'), '.1f')} | "
                + " | ".join(accuracies)
                + " |"
            )
    lines += curve_section(rows)
    lines += ["", "Made by:"] + [f"- `{c}`" for c in sorted({r["invocation"] for r in every})]
    lines += ["", "Machines (a record's images/s and training time are those of its machine and threads):"]
    for where in sorted({r["machine"] for r in every}):
        made = sorted((r["method"], r["seed"]) for r in every if r["machine"] == where)
        lines.append(f"- {where}: " + ", ".join(f"{method} {seed}" for method, seed in made) + ".")
    lines += ["", "Dates: " + ", ".join(sorted({r["date"] for r in every})) + "."]
    recipes = sorted({f"{r['finetune_budget']} of `{r['finetune_config']}`" for r in every if r.get("finetune_budget")})
    if recipes:
        lines.append(f"Fine-tuning: {', '.join(recipes)}; the random twin with the same.")
    text = "\n".join(lines) + "\n"
    if write:
        (output / "results.md").write_text(text)
    return text


def setting_lines(records: list[dict[str, Any]]) -> list[str]:
    """The one setting of the table's records (:func:`one_setting`), in words, or nothing without records."""
    if not records:
        return []
    shared: dict[str, Any] = {}
    for record in records:  # the first record that knows each part (None: not known, see shared_setting)
        for key, value in shared_setting(record).items():
            shared[key] = value if shared.get(key) is None else shared[key]
    if shared["pretraining budget"] is None:
        return []  # records made before budgets were recorded
    budget = RunBudget(**shared["pretraining budget"])
    images = (
        f"a class-balanced subset of {shared['train images']:,} train images"
        if shared["train images"]
        else "all train images"
    )
    extra = shared["extra fit settings"]
    line = f"Every row: {budget} of pretraining (warm-up {budget.warmup_fraction:.0%} of it) on {images}"
    line += f", with `{shlex.join(extra)}` after each config." if extra else "."
    return [line, ""]


def curve_section(rows: dict[str, dict[int, dict[str, Any]]]) -> list[str]:
    """The learning curves of the records made with ``--curve``: kNN at every fifth of the budget, per seed and
    as the mean ± sample std over seeds, so a dip can be told from seed noise."""
    curves = {
        name: {seed: r["curve"] for seed, r in records.items() if r.get("curve")} for name, records in rows.items()
    }
    curves = {name: by_seed for name, by_seed in curves.items() if by_seed}
    if not curves:
        return []
    points = max(len(c) for by_seed in curves.values() for c in by_seed.values())
    lines = [
        "",
        f"## Learning curves: kNN top-1 on val at every 1/{points} of the budget (%)",
        "",
        f"kNN (k = 20) of the encoder saved during pretraining, with a {CURVE_SPLIT.train_images:,}-image bank and "
        f"{CURVE_SPLIT.val_images:,} val queries",
        "(a binomial std of about 1.5 points at 40%): a smaller bank than the table's, so read the shape, not the",
        "level.",
        "",
        "| row | seed | " + " | ".join(f"{i}/{points}" for i in range(1, points + 1)) + " |",
        "| --- | --- |" + " ---: |" * points,
    ]
    for name, by_seed in curves.items():
        for seed, curve in by_seed.items():
            cells = [f"{p['knn_top1']:.2f}" for p in curve] + ["–"] * (points - len(curve))
            lines.append(f"| {name} | {seed} | " + " | ".join(cells) + " |")
        if len(by_seed) > 1:
            at = [{seed: c[i]["knn_top1"] for seed, c in by_seed.items() if len(c) > i} for i in range(points)]
            lines.append(f"| {name} | mean ± std | " + " | ".join(mean_std(values) for values in at) + " |")
    return lines


def plot(output: Path, figure: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    curves = {(name, seed): r.get("curve") for name, rows in read_records(output).items() for seed, r in rows.items()}
    curves = {key: points for key, points in curves.items() if points}
    # FLOPs on the x axis when every point counts them (records made before FLOP counts have images only)
    x, label = "petaflops", "pretraining compute (PFLOP)"
    if any(p.get(x) is None for points in curves.values() for p in points):
        x, label = "images_seen", "images seen in pretraining"
    for (name, seed), points in curves.items():
        ax.plot([p[x] for p in points], [p["knn_top1"] for p in points], "o-", label=f"{name} seed {seed}")
    ax.set_xlabel(label)
    ax.set_ylabel("kNN top-1 on val (%), 5k bank")
    if ax.lines:
        ax.legend()
    ax.grid(alpha=0.3)
    figure.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(figure)


def main(argv: list[str] | None = None) -> None:
    from sslvit.errors import ConfigError, one_line_errors

    args = build_parser().parse_args(argv)
    output = Path(args.output)
    with one_line_errors("results.py"):
        if not args.table:
            if REFERENCE_ROW in args.methods and not args.mae_repo:
                raise ConfigError("official-mae needs --mae-repo: a checkout of facebookresearch/mae")
            # before anything trains: this command's records must fit beside those already in --output
            kept = {f"{m}-seed{s}.json" for m in args.methods for s in args.seeds}
            existing = [(str(p), r) for p, r in record_files(output) if p.name not in kept]
            one_setting(existing + [(f"this command's {m} record", planned(m, args)) for m in args.methods])
            for seed in args.seeds:
                for method in args.methods:
                    if recorded(output, method, seed, args):
                        print(f"{method} seed {seed}: recorded in {output} by this command, skipped", flush=True)
                        continue
                    start = time.perf_counter()
                    run_record(method, seed, args)
                    print(f"{method} seed {seed}: done in {(time.perf_counter() - start) / 60:.1f} minutes", flush=True)
        print(table(output))
        plot(output, Path(args.run_dir) / "curves.png")


if __name__ == "__main__":
    main()

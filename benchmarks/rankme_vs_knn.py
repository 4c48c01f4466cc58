"""Does the label-free RankMe rank checkpoints as kNN accuracy does? RankMe and kNN top-1 of each, and the
Spearman rank correlation between them.

    python benchmarks/rankme_vs_knn.py --checkpoints runs/a/checkpoints/last.ckpt runs/b/checkpoints/last.ckpt \\
        runs/c/checkpoints/last.ckpt --data-root ../shared/data/cifar10 --output rankme_vs_knn.json
    python benchmarks/rankme_vs_knn.py --snapshots-of runs/results/mae-seed0/checkpoints/last.ckpt \\
        --checkpoints runs/results/mae-seed0/snapshots/*.pt --data-root ../shared/data/cifar10 --output mae_curve.json
    python benchmarks/rankme_vs_knn.py --runs runs/results/mae-seed0 runs/results/beit-seed0 \\
        --data-root ../shared/data/cifar10 --output benchmarks/results/rankme_vs_knn.json

Each checkpoint is an sslvit Lightning checkpoint (any method), or with ``--snapshots-of LAST`` a file
``{"state_dict": ...}`` of the method saved in LAST (the curve snapshots of ``benchmarks/results.py --curve``;
their ``step``, ``images_seen`` and ``seconds`` are copied into the record). ``--runs`` takes run directories
instead: each one's curve snapshots (``snapshots/NN.pt``, of the method in its ``checkpoints/last.ckpt``), or
its ``last.ckpt`` when it has none. For each checkpoint, the train and val features (``--features``, default
the method's own; cached as the tools cache them) give

- kNN top-1 on val with all of train as the bank (k = 20, T = 0.07: ``tools/knn_eval.py``'s protocol), or
  with ``--bank-images`` / ``--query-images`` class-balanced seeded subsets drawn as ``results.py --curve``
  draws them (an online kNN's bank; 5,000 + 1,000 images took a fifth of the time of 45,000 + 5,000 here), and
- RankMe (:func:`sslvit.eval.rankme.effective_rank`) of a seeded ``--num-images`` of the ``--rankme-split``
  features, labels unused: the images ``OnlineRankMe(split="train", num_images=..., seed=...)`` encodes (for an
  ImageFolder root or CIFAR, also those of its default ``pretrain`` split).

Then the Spearman correlation over all checkpoints, over the checkpoints of each method (the paper compares
runs of one method; across methods the rank is not known to follow accuracy) and over each run's (its curve:
does the rank rise as kNN does?). Prints a table; ``--output`` writes JSON with every checkpoint's numbers,
the correlations and the settings, which is also a page of ``benchmarks/results/`` (``benchmarks/tables.py``
writes its markdown; ``--note`` adds a line under its tables, e.g. the command that made the runs).
"""

from __future__ import annotations

import argparse
import datetime
import math
import shlex
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from scipy.stats import ConstantInputWarning, spearmanr

from harness import EvalSplit, machine, today
from sslvit.checkpoints import CheckpointInfo
from sslvit.cli.device_and_features import resolve_device
from sslvit.cli.parser import ToolParser, positive_int
from sslvit.cli.tool_flags import add_data_args
from sslvit.cli.tool_inputs import cache_from_args, datamodule_from_args
from sslvit.errors import ConfigError, one_line_errors
from sslvit.eval import KNNClassifier, dataset_features, effective_rank
from sslvit.eval.rankme import PAPER_NUM_IMAGES, image_subset
from sslvit.methods import load_method
from sslvit.outputs import write_json


def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(__file__, description=__doc__)
    parser.add_argument("--checkpoints", nargs="+", default=[], help="sslvit checkpoints (or snapshots) to compare")
    parser.add_argument(
        "--runs", nargs="+", default=[], help="run directories: their curve snapshots, or else checkpoints/last.ckpt"
    )
    parser.add_argument(
        "--snapshots-of", help="a Lightning checkpoint: --checkpoints are then {'state_dict': ...} files of its method"
    )
    add_data_args(parser)
    parser.add_argument("--features", default="native", help="native (the method's own), cls, mean or cls_last<n>")
    parser.add_argument(
        "--bank-images", type=positive_int, help="kNN bank: a class-balanced, seeded subset of train (default: all)"
    )
    parser.add_argument(
        "--query-images", type=positive_int, help="kNN queries: a class-balanced, seeded subset of val (default: all)"
    )
    parser.add_argument("--k", type=positive_int, default=20, help="neighbours that vote")
    parser.add_argument("--temperature", type=float, default=0.07, help="T of the vote weights exp(sim / T)")
    parser.add_argument("--num-images", type=positive_int, default=PAPER_NUM_IMAGES, help="images RankMe is taken on")
    parser.add_argument("--rankme-split", choices=["train", "val"], default="train")
    parser.add_argument("--seed", type=int, default=0, help="the RankMe subset (OnlineRankMe's seed)")
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    parser.add_argument("--cache-dir", help="feature cache (default $SSLVIT_CACHE/features)")
    parser.add_argument("--no-cache", action="store_true", help="always run the encoder; store nothing")
    parser.add_argument("--output", help="write the results as JSON (a page of benchmarks/results/) to this file")
    parser.add_argument("--note", action="append", default=[], help="a line under the page's tables (repeatable)")
    return parser


def checkpoints_of(args: argparse.Namespace) -> list[tuple[str, str | None, str | None]]:
    """``(checkpoint, the Lightning checkpoint whose method it is a snapshot of or None, run directory or None)``
    of every ``--checkpoints`` and ``--runs`` entry, in order; a run directory without a checkpoint is an error."""
    entries = [(path, args.snapshots_of, None) for path in args.checkpoints]
    for run in args.runs:
        last = Path(run) / "checkpoints" / "last.ckpt"
        if not last.is_file():
            raise ConfigError(f"--runs {run}: no {last}; give run directories that `sslvit fit` wrote")
        snapshots = sorted((Path(run) / "snapshots").glob("*.pt"))
        entries += [(str(s), str(last), run) for s in snapshots] if snapshots else [(str(last), None, run)]
    if not entries:
        raise ConfigError("nothing to compare: give --checkpoints or --runs")
    return entries


def load(
    path: str, snapshots_of: str | None, methods: dict[str, Any]
) -> tuple[torch.nn.Module, CheckpointInfo, dict[str, Any]]:
    """The method of a checkpoint, or the method of ``snapshots_of`` with a snapshot's weights; its checkpoint's
    info (image size, mean, std); and what the record says about it."""
    if snapshots_of is None:
        model, info = load_method(path)
        return model, info, {"method": info.method, "global_step": info.global_step}
    if snapshots_of not in methods:
        methods[snapshots_of] = load_method(snapshots_of)
    model, info = methods[snapshots_of]
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(saved, dict) or "state_dict" not in saved:
        raise ConfigError(f"{path} is not a snapshot ({{'state_dict': ...}}) of the method in {snapshots_of}")
    model.load_state_dict(saved["state_dict"])
    extra = {key: saved[key] for key in ("step", "seconds", "minutes", "images_seen") if key in saved}
    return model, info, {"method": info.method, "global_step": extra.get("step"), **extra}


def evaluate(
    entry: tuple[str, str | None, str | None],
    args: argparse.Namespace,
    methods: dict[str, Any],
    device: torch.device,
    cache: Any,
) -> dict:
    """kNN top-1 and RankMe of one checkpoint (an entry of :func:`checkpoints_of`)."""
    path, snapshots_of, run = entry
    model, info, record = load(path, snapshots_of, methods)
    data = datamodule_from_args(args, info)
    model.to(device)

    def encode(split: str, indices: list[int] | None) -> Any:
        return dataset_features(
            model, data, split, args.features, args.batch_size, device, cache, indices, precision=args.precision
        )

    # the bank and queries as benchmarks/results.py's curve draws them (class-balanced, seeded; None: whole split)
    split = EvalSplit("val", train_images=args.bank_images, val_images=args.query_images, seed=args.seed)
    positions = {part: indices for part, indices in split.positions(data).values()}
    train, val = encode("train", positions["train"]), encode("val", positions["val"])
    knn = KNNClassifier(ks=(args.k,), k=args.k, temperature=args.temperature)
    result = knn.fit(train.features, train.labels).evaluate(val.features, val.labels)
    # RankMe's images: OnlineRankMe's seeded draw of the split, labels unused (not the class-balanced bank)
    if positions[args.rankme_split] is None:  # the whole split is encoded already
        chosen = {"train": train, "val": val}[args.rankme_split]
        indices = image_subset(len(chosen), args.num_images, args.seed)
        rank_features = chosen.features if indices is None else chosen.subset(indices).features
    else:
        indices = image_subset(len(data.build_dataset(args.rankme_split, None)), args.num_images, args.seed)
        rank_features = encode(args.rankme_split, indices).features
    rank = effective_rank(rank_features)
    n, dim = rank_features.shape
    return {
        "checkpoint": path,
        "run": run,
        **record,
        "knn_top1": result.top1,
        "knn_top5": result.top5,
        "rankme": rank,
        "rankme_normalized": rank / min(n, dim),
        "rankme_images": n,
        "feature_dim": dim,
        "features_from_cache": {"train": train.from_cache, "val": val.from_cache},
    }


def spearman(rows: list[dict[str, Any]]) -> float | None:
    """Spearman's rho between kNN top-1 and RankMe over ``rows`` (ties ranked by their mean); None when undefined
    (fewer than 2 rows, or one of them constant). With 2 rows it is +-1 by construction."""
    if len(rows) < 2:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConstantInputWarning)  # a constant column: rho is NaN, reported as None
        rho = spearmanr([r["knn_top1"] for r in rows], [r["rankme"] for r in rows]).statistic
    return None if math.isnan(rho) else float(rho)


def groups(rows: list[dict[str, Any]]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """The rows of each method and of each run (checkpoints given outside a run belong to none)."""
    methods = sorted({r["method"] for r in rows})
    runs = list(dict.fromkeys(r["run"] for r in rows if r["run"] is not None))
    return {
        "spearman_per_method": {m: [r for r in rows if r["method"] == m] for m in methods},
        "spearman_per_run": {run: [r for r in rows if r["run"] == run] for run in runs},
    }


def correlations(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Spearman's rho over all rows, over each method's and over each run's (runs of one checkpoint: none)."""
    by = groups(rows)
    return {"spearman": spearman(rows), **{kind: {k: spearman(g) for k, g in by[kind].items()} for kind in by}}


def page_tables(
    rows: list[dict[str, Any]], found: dict[str, Any], args: argparse.Namespace, command: str
) -> list[dict[str, Any]]:
    """The two tables of the page ``benchmarks/tables.py`` writes: the correlations, and every checkpoint."""
    provenance = {"notes": args.note, "commands": [command], "machine": machine(), "date": today()}
    by = groups(rows)
    named = [("all checkpoints", rows, found["spearman"])]
    named += [(f"method {short(m)}", g, found["spearman_per_method"][m]) for m, g in by["spearman_per_method"].items()]
    named += [
        (f"run `{Path(run).name}`", g, found["spearman_per_run"][run]) for run, g in by["spearman_per_run"].items()
    ]
    summary = [
        {
            "over": name,
            "n": len(group),
            "rho": rho,
            "knn": [min(r["knn_top1"] for r in group), max(r["knn_top1"] for r in group)],
            "rank": [min(r["rankme"] for r in group), max(r["rankme"] for r in group)],
        }
        for name, group, rho in named
    ]
    checkpoints = [
        {
            "run": Path(r["run"]).name if r["run"] else r["checkpoint"],
            "method": short(r["method"]),
            "step": r["global_step"],
            "images": r.get("images_seen"),
            "knn": r["knn_top1"],
            "rank": r["rankme"],
            "normalized": r["rankme_normalized"],
        }
        for r in rows
    ]
    n_rank = sorted({r["rankme_images"] for r in rows})
    images = ", ".join(f"{n:,}" for n in n_rank)
    bank = f"a class-balanced {args.bank_images:,}-image train subset" if args.bank_images else "all of train"
    queries = f"a class-balanced {args.query_images:,}-image val subset" if args.query_images else "val"
    about = (
        f"kNN top-1 on {queries} (k = {args.k}, T = {args.temperature}, {bank} as the bank) and RankMe of the "
        f"features of {images} seeded {args.rankme_split} images (no labels), per checkpoint; Spearman's rho "
        "between the two (with 2 checkpoints it is ±1 by construction; – where one of them is constant)."
    )
    return [
        {
            "title": "Spearman correlation of RankMe with kNN top-1",
            "about": about,
            "columns": [
                {"key": "over", "label": "over"},
                {"key": "n", "label": "checkpoints", "format": "d"},
                {"key": "rho", "label": "Spearman rho", "format": "+.2f"},
                {"key": "knn", "label": "kNN top-1 (%)", "format": ".2f"},
                {"key": "rank", "label": "RankMe", "format": ".1f"},
            ],
            "rows": summary,
            **provenance,
        },
        {
            "title": "Every checkpoint",
            "columns": [
                {"key": "run", "label": "run"},
                {"key": "method", "label": "method"},
                {"key": "step", "label": "step", "format": "d"},
                {"key": "images", "label": "images seen", "format": ","},
                {"key": "knn", "label": "kNN top-1 (%)", "format": ".2f"},
                {"key": "rank", "label": "RankMe", "format": ".2f"},
                {"key": "normalized", "label": "RankMe / min(N, D)", "format": ".3f"},
            ],
            "rows": checkpoints,
            **provenance,
        },
    ]


def short(method: str) -> str:
    return method.rsplit(".", 1)[-1]


def table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'checkpoint':<60} {'method':>8} {'step':>7} {'kNN top-1':>10} {'RankMe':>9}"]
    for r in rows:
        name = r["checkpoint"] if len(r["checkpoint"]) <= 60 else "..." + r["checkpoint"][-57:]
        method = short(r["method"])
        lines.append(f"{name:<60} {method:>8} {r['global_step']!s:>7} {r['knn_top1']:>10.2f} {r['rankme']:>9.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = build_parser()
    args = parser.parse_args(argv)
    with one_line_errors(parser.prog):
        if args.temperature <= 0:
            raise ConfigError(f"--temperature must be positive, got {args.temperature}")
        device = resolve_device(args.device)
        cache = cache_from_args(args)
        entries = checkpoints_of(args)
        methods: dict[str, Any] = {}
        rows = [evaluate(entry, args, methods, device, cache) for entry in entries]
    found = correlations(rows)
    print(table(rows))
    print(f"Spearman rho (kNN top-1, RankMe) over {len(rows)} checkpoints: {found['spearman']}")
    for group in ("spearman_per_method", "spearman_per_run"):
        for name, rho in found[group].items():
            print(f"  {name}: {rho}")
    command = ["python", "benchmarks/rankme_vs_knn.py", *(sys.argv[1:] if argv is None else argv)]
    measured = [word for i, word in enumerate(command) if word != "--note" and command[i - 1] != "--note"]
    record = {
        "title": "RankMe against kNN over checkpoints",
        "about": "What RankMe is and when it is known not to follow accuracy: "
        "[docs/evaluation.md](../../docs/evaluation.md#rankme-a-label-free-monitor).",
        "tables": page_tables(rows, found, args, shlex.join(measured)),  # the notes are the page's, not the run's
        **found,
        "checkpoints": rows,
        "settings": {key: value for key, value in vars(args).items() if key not in ("checkpoints", "runs", "output")},
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": command,
    }
    if args.output:
        print(f"wrote {write_json(Path(args.output), record)}")
    return record


if __name__ == "__main__":
    main()

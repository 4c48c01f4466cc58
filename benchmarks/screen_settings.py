"""Compare settings of a method at a fixed budget on held-out *train* images, never on val.

    python benchmarks/screen_settings.py --config configs/cpc/cifar10_vit_tiny.yaml \\
        --data-root ../shared/data/cifar10 --minutes 8 --name depth6 --run-dir runs/screen \\
        -- --model.init_args.backbone.depth 6
    python benchmarks/screen_settings.py ... --petaflops 0.05 ...   # the budget of benchmarks/results.py's table

How ``benchmarks/results.py``'s short-budget settings are chosen without looking at the split the table
reports. One call is one setting (the ``sslvit fit`` settings after ``--``), with the harness
(``benchmarks/harness.py``):

1. ``sslvit fit`` on the whole train split (or a class-balanced ``--train-images``) for the budget:
   ``--minutes`` of wall clock (default 8), ``--petaflops`` or ``--steps``, the warmup + cosine schedule
   following what is spent (a cheaper setting gets more steps, as it would in the table), no validation;
2. for each of ``--features`` (default: the method's native feature and the mean patch token of whole
   images), the trained encoder and its random twin (the same architecture, initialised with
   ``--init-seed``) with the checkpoint's preprocessing, on a class-balanced ``--bank`` + ``--queries``
   train images drawn with ``--seed``, of which a class-balanced ``--queries`` are held out
   (``sslvit.eval.held_out_split``): kNN top-1 (k = 20, T = 0.07) and the linear probe (learning rate
   chosen on a part of the bank held out), fitted on the bank, scored on the held-out images.

Prints one JSON line and appends it to ``<run-dir>/screen.jsonl``; a run directory that already holds a
finished run is evaluated again without training, and only with the setting it was trained with.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from harness import EvalSplit, RunBudget, add_budget_args, fit, frozen_evaluation
from sslvit.cli.parser import ToolParser
from sslvit.errors import one_line_errors

DEFAULT_BUDGET = RunBudget(minutes=8.0)


def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(__file__, description=__doc__)
    parser.add_argument("--config", required=True)
    parser.add_argument("--data-root", required=True, help="an ImageFolder root with train/ (val/ is not read)")
    add_budget_args(parser, default=DEFAULT_BUDGET)
    parser.add_argument("--name", required=True, help="the setting's name: its run is <run-dir>/<name>")
    parser.add_argument("--run-dir", default="runs/screen")
    parser.add_argument("--train-images", type=int, help="pretrain on a class-balanced subset (default: all train)")
    parser.add_argument("--bank", type=int, default=5000, help="train images the classifiers are fitted on")
    parser.add_argument("--queries", type=int, default=2000, help="other train images they are scored on")
    parser.add_argument("--seed", type=int, default=1, help="the bank/query draw")
    parser.add_argument("--init-seed", type=int, default=0, help="the random twin's weights and the probe's seed")
    parser.add_argument("--features", nargs="+", default=["native", "mean"], help="native, cls, mean, ...")
    parser.add_argument("fit_args", nargs="*", help="the `sslvit fit` settings being screened, after --")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = build_parser()
    args = parser.parse_args(argv)
    run = Path(args.run_dir) / args.name
    pool = args.bank + args.queries
    split = EvalSplit("held-out", train_images=pool, held_out_fraction=args.queries / pool, seed=args.seed)
    with one_line_errors(parser.prog):
        budget = RunBudget.from_args(args, DEFAULT_BUDGET)
        trained = fit(args.config, run, budget, 0, args.fit_args, args.train_images, data_root=args.data_root)
        record: dict[str, Any] = {
            "name": args.name,
            "config": args.config,
            "budget": str(budget),
            "warmup_fraction": budget.warmup_fraction,
            "steps": trained.steps,
            "petaflops": trained.petaflops,
            "fit_args": args.fit_args,
            "bank": args.bank,
            "queries": args.queries,
        }
        for feature in args.features:
            both = frozen_evaluation(trained.checkpoint, args.data_root, split, args.init_seed, features=feature)
            for encoder, result in both.items():
                record[f"{encoder}_{feature}_knn"] = round(result["knn_top1"], 2)
                record[f"{encoder}_{feature}_linear"] = round(result["linear_top1"], 2)
            record["num_bank"], record["num_queries"] = result["num_bank"], result["num_queries"]
    print(json.dumps(record))
    with open(Path(args.run_dir) / "screen.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    return record


if __name__ == "__main__":
    main()

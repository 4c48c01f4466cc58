"""Compare settings of a method at a fixed wall-clock budget on held-out *train* images, never on val.

    python benchmarks/screen_settings.py --config configs/cpc/cifar10_vit_tiny.yaml \\
        --data-root ../shared/data/cifar10 --minutes 8 --name depth6 --run-dir runs/screen \\
        -- --model.init_args.backbone.depth 6

How ``benchmarks/results.py``'s short-budget settings are chosen without looking at the split the table
reports. One call is one setting (the ``sslvit fit`` settings after ``--``):

1. ``sslvit fit`` on the whole train split for ``--minutes`` of wall clock (``sslvit.cli.TimeBudget``:
   the warmup + cosine schedule follows the clock, so a cheaper setting gets more steps, as it would in
   the table), no validation;
2. the method's native feature and the mean patch token of whole images, for the trained encoder and for
   a random initialisation of the same architecture (``--init-seed``), on a class-balanced ``--bank`` of
   train images and ``--queries`` other train images (disjoint, drawn and shuffled with ``--seed``);
3. kNN top-1 (k = 20, T = 0.07) and a quick linear probe (standardised features, full-batch AdamW, lr
   1e-2, 300 steps, weight decay 1e-4 and 1e-3, the better of the two on the queries: a screening
   number, optimistic for every setting alike, not the protocol of ``tools/linear_probe.py``).

Prints one JSON line and appends it to ``<run-dir>/screen.jsonl``; a run directory that already holds a
checkpoint is evaluated again without training, and only with the settings it was trained with.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from sslvit.cli.parser import ToolParser
from sslvit.errors import one_line_errors


def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(__file__, description=__doc__)
    parser.add_argument("--config", required=True)
    parser.add_argument("--data-root", required=True, help="an ImageFolder root with train/ (val/ is not read)")
    parser.add_argument("--minutes", type=float, default=8.0)
    parser.add_argument("--name", required=True, help="the setting's name: its run is <run-dir>/<name>")
    parser.add_argument("--run-dir", default="runs/screen")
    parser.add_argument("--bank", type=int, default=5000, help="train images the classifiers are fitted on")
    parser.add_argument("--queries", type=int, default=2000, help="other train images they are scored on")
    parser.add_argument("--seed", type=int, default=1, help="the bank/query split")
    parser.add_argument("--init-seed", type=int, default=0, help="the random initialisation's weights")
    parser.add_argument("fit_args", nargs="*", help="the `sslvit fit` settings being screened, after --")
    return parser


def quick_linear(train: Any, test: Any, steps: int = 300) -> float:
    """Top-1 (%) of a linear classifier on standardised features: full-batch AdamW, the better of two decays."""
    mean, std = train.features.mean(0), train.features.std(0) + 1e-6
    x, x_test = (train.features - mean) / std, (test.features - mean) / std
    num_classes = int(train.labels.max()) + 1
    best = 0.0
    for weight_decay in (1e-4, 1e-3):
        torch.manual_seed(0)
        head = torch.nn.Linear(x.shape[1], num_classes)
        optimizer = torch.optim.AdamW(head.parameters(), lr=1e-2, weight_decay=weight_decay)
        for _ in range(steps):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(head(x), train.labels).backward()
            optimizer.step()
        with torch.no_grad():
            best = max(best, (head(x_test).argmax(1) == test.labels).float().mean().item() * 100)
    return best


def train(args: argparse.Namespace, run: Path) -> int:
    """Train the setting on the clock (unless its run holds a checkpoint); returns its steps."""
    from sslvit.cli import run_cli
    from sslvit.errors import ConfigError

    setting = {"config": args.config, "minutes": args.minutes, "fit_args": args.fit_args}
    if not (run / "checkpoints" / "last.ckpt").is_file():
        budget = json.dumps([{"class_path": "sslvit.cli.TimeBudget", "init_args": {"minutes": args.minutes}}])
        command = ["fit", "--config", args.config, "--data.dataset", "imagefolder", "--data.root", args.data_root,
                   "--trainer.default_root_dir", str(run), "--trainer.max_epochs", "-1", "--trainer.max_steps", "-1",
                   "--trainer.limit_val_batches", "0", "--trainer.callbacks", budget, *args.fit_args]  # fmt: skip
        cli = run_cli(command)
        (run / "steps.json").write_text(json.dumps({"steps": cli.trainer.global_step, **setting}) + "\n")
    trained = json.loads((run / "steps.json").read_text())
    if {key: trained.get(key) for key in setting} != setting:  # never score one setting under another's name
        raise ConfigError(
            f"{run} was trained with {json.dumps({key: trained.get(key) for key in setting})}, not with this call's "
            f"{json.dumps(setting)}; give the setting another --name or remove that run directory"
        )
    return trained["steps"]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from sslvit.data import class_balanced_subset
    from sslvit.eval import KNNClassifier, dataset_features
    from sslvit.eval.features import dataset_targets
    from sslvit.methods import load_method
    from sslvit.nn.backbone import VisionTransformer

    parser = build_parser()
    args = parser.parse_args(argv)
    run = Path(args.run_dir) / args.name
    with one_line_errors(parser.prog):
        steps = train(args, run)
        model, info = load_method(run / "checkpoints" / "last.ckpt")
        data = info.eval_datamodule("imagefolder", args.data_root)
        chosen = class_balanced_subset(
            dataset_targets(data.build_dataset("train", None)), args.bank + args.queries, seed=args.seed
        )
        order = torch.randperm(len(chosen), generator=torch.Generator().manual_seed(args.seed)).tolist()
        chosen = [chosen[i] for i in order]  # the subset comes sorted by class
        bank, queries = chosen[: args.bank], chosen[args.bank :]
        record: dict[str, Any] = {
            "name": args.name,
            "config": args.config,
            "minutes": args.minutes,
            "steps": steps,
            "fit_args": args.fit_args,
            "bank": args.bank,
            "queries": args.queries,
        }
        for encoder in ("trained", "random"):
            if encoder == "random":
                torch.manual_seed(args.init_seed)
                model.backbone = VisionTransformer(model.backbone.config)
            model.eval()
            for feature, source in (("native", model), ("mean", model.backbone)):
                fitted = dataset_features(source, data, "train", feature, indices=bank)
                scored = dataset_features(source, data, "train", feature, indices=queries)
                knn = KNNClassifier(ks=(20,), k=20).fit(fitted.features, fitted.labels)
                record[f"{encoder}_{feature}_knn"] = round(knn.evaluate(scored.features, scored.labels).top1, 2)
                record[f"{encoder}_{feature}_linear"] = round(quick_linear(fitted, scored), 2)
    print(json.dumps(record))
    with open(Path(args.run_dir) / "screen.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    return record


if __name__ == "__main__":
    main()

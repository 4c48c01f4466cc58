"""kNN on held-out TRAIN images, to choose a recipe without looking at val (val is reported once, elsewhere).

    python benchmarks/heldout_knn.py --checkpoint runs/x/checkpoints/last.ckpt --data-root ../shared/data/cifar10 \\
        --features mean --random-init-too

The bank is a class-balanced ``--bank`` images of the train split (seed 0) and the queries a disjoint
class-balanced ``--queries`` images of the rest of train (seed 1): neither is val, so a setting chosen
by this number leaves the val number honest. ``--features``: ``cls`` or ``mean`` (of the backbone's
patch tokens on whole images), or ``grid`` (CPC: the mean of its patch-grid latents, as it trains).
``--random-init-too`` adds the same evaluation of a freshly initialised model of the same architecture.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from sslvit.cli.parser import ToolParser
from sslvit.data import class_balanced_subset
from sslvit.errors import one_line_errors
from sslvit.eval import KNNClassifier
from sslvit.eval.features import dataset_targets, frozen
from sslvit.methods import load_method


def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(__file__, description=__doc__)
    parser.add_argument("--checkpoint", required=True, help="a Lightning checkpoint of an sslvit method")
    parser.add_argument("--data-root", required=True, help="an ImageFolder root with train/")
    parser.add_argument("--features", choices=["cls", "mean", "grid"], default="cls")
    parser.add_argument("--bank", type=int, default=10000)
    parser.add_argument("--queries", type=int, default=5000)
    parser.add_argument("--random-init-too", action="store_true")
    parser.add_argument("--output", help="append the result as a JSON line to this file")
    return parser


@torch.no_grad()
def features(model: Any, dataset: Any, indices: list[int], kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    loader = DataLoader(Subset(dataset, indices), batch_size=256, num_workers=2)
    out, labels = [], []
    with frozen(model):
        for images, target in loader:
            out.append(model.grid_features(images) if kind == "grid" else model.backbone(images, pooling=kind))
            labels.append(target)
    return torch.cat(out).float(), torch.cat(labels)


def evaluate(model: Any, dataset: Any, bank: list[int], queries: list[int], kind: str) -> float:
    knn = KNNClassifier(ks=(20,), k=20, temperature=0.07)
    train, train_labels = features(model, dataset, bank, kind)
    query, query_labels = features(model, dataset, queries, kind)
    return knn.fit(train, train_labels).evaluate(query, query_labels).top1


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    with one_line_errors("heldout_knn.py"):
        model, info = load_method(args.checkpoint)
        data = info.eval_datamodule("imagefolder", args.data_root)
        dataset = data.build_dataset("train", data.eval_transform())
        targets = np.asarray(dataset_targets(dataset))
        bank = class_balanced_subset(targets, args.bank, seed=0)
        rest = np.setdiff1d(np.arange(len(targets)), bank)
        queries = rest[class_balanced_subset(targets[rest], args.queries, seed=1)].tolist()
        record = {
            "checkpoint": args.checkpoint,
            "features": args.features,
            "bank": len(bank),
            "queries": len(queries),
            "global_step": info.global_step,
            "knn_top1_heldout": evaluate(model, dataset, bank, queries, args.features),
        }
        if args.random_init_too:
            with torch.random.fork_rng():
                torch.manual_seed(0)
                fresh = type(model)(**{k: v for k, v in model.hparams.items() if not k.startswith("_")})
            record["random_init_knn_top1_heldout"] = evaluate(fresh, dataset, bank, queries, args.features)
    print(json.dumps(record))
    if args.output:
        with open(args.output, "a") as f:
            f.write(json.dumps(record) + "\n")
    return record


if __name__ == "__main__":
    main()

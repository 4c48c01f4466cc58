"""Weighted kNN accuracy of a checkpoint's frozen encoder (DINO protocol: T = 0.07, default k = 20).

    python tools/knn_eval.py --checkpoint runs/.../last.ckpt --data-root ../shared/data/cifar10 --output knn.json
    python tools/knn_eval.py --checkpoint runs/.../last.ckpt --random-init --data-root ../shared/data/cifar10 \\
        --output knn-random.json

The labelled train split is the bank, the val split the queries. Features are cached, so a second
run of the same checkpoint on the same data only searches. Low-shot: --train-fraction 0.01 or --shots N
(class-balanced, seeded) bank, --seeds 3 for the mean and standard deviation over draws.
"""

from __future__ import annotations

import argparse
import time

from sslvit.cli.parser import ToolParser
from sslvit.cli.tool_args import (
    Evaluation,
    add_feature_args,
    add_subset_args,
    describe_subset,
    over_seeds,
    run_seeds,
    seed_record,
    train_subset,
    write_json,
)
from sslvit.errors import one_line_errors
from sslvit.eval.features import Features
from sslvit.eval.knn import DEFAULT_KS, KNNClassifier, KNNResult


def table(result: KNNResult) -> str:
    lines = ["    k   top-1   top-5"]
    for k, acc in sorted(result.per_k.items()):
        mark = "*" if k == result.k else " "
        lines.append(f"{mark}{k:>4}  {acc['top1']:6.2f}  {acc['top5']:6.2f}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(__file__, description=__doc__)
    add_feature_args(parser)
    add_subset_args(parser)
    parser.add_argument("--k", type=int, default=20, help="the k whose accuracy is top1/top5 (default 20)")
    parser.add_argument(
        "--ks",
        type=int,
        nargs="+",
        help="all k reported, from one search (default 10 20 100 200, at most the bank size)",
    )
    parser.add_argument("--temperature", type=float, default=0.07, help="T of the vote weights exp(sim / T)")
    parser.add_argument("--index", choices=["flat", "ivf"], default="flat", help="exact (flat) or inverted-file (ivf)")
    parser.add_argument("--nlist", type=int, help="IVF cells (default sqrt(bank size))")
    parser.add_argument("--nprobe", type=int, default=32, help="IVF cells searched per query")
    return parser


def classifier(args: argparse.Namespace, bank_size: int) -> KNNClassifier:
    """The kNN of the arguments; without --ks, the default ks that fit the bank (a low-shot bank is small)."""
    ks = args.ks or [k for k in DEFAULT_KS if k <= bank_size] or [bank_size]
    k = args.k if args.ks or args.k <= bank_size else max(ks)
    return KNNClassifier(ks, k, args.temperature, args.index, args.nlist, args.nprobe)


def evaluate_seed(args: argparse.Namespace, train: Features, val: Features, seed: int) -> dict:
    """kNN with the bank of one seed (the low-shot draw, or all of train): print its table, return its record."""
    positions = train_subset(args, train.labels, seed)
    bank = train if positions is None else train.subset(positions)
    knn = classifier(args, len(bank))
    start = time.perf_counter()
    result = knn.fit(bank.features, bank.labels).evaluate(val.features, val.labels)
    seconds = time.perf_counter() - start
    if positions is not None:
        print(f"bank: {describe_subset(args, len(positions), seed)}")
    index = "exact inner product (faiss IndexFlatIP)" if args.index == "flat" else f"IVF, nprobe {knn.index.nprobe}"
    print(f"kNN: {index}, T = {args.temperature}, {knn.threads} threads, {seconds:.2f} s")
    if result.recall is not None:
        print(f"IVF recall of the exact {knn.ks[-1]} nearest neighbours: {result.recall:.3f}")
    print(table(result))
    record = {**result.to_dict(), "ks": knn.ks, "seconds": {**result.timings, "knn": seconds}}
    if args.index == "ivf":
        record.update(nlist=knn.index.nlist, nprobe=knn.index.nprobe)
    return seed_record(args, record, seed, positions)


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    with one_line_errors(parser.prog):
        evaluation = Evaluation.from_args(args)
        train, val = evaluation.features("train"), evaluation.features("val")
        print(evaluation.headline(train, val))
        records = [evaluate_seed(args, train, val, seed) for seed in run_seeds(args)]

    record = {**records[0], **evaluation.describe(train, val)}
    record["seconds"] = {**records[0]["seconds"], **evaluation.seconds}
    if "train_subset" in record:
        record["num_train"] = record["train_subset"]["num_images"]
    record.update(over_seeds(records))
    if args.output:
        print(f"wrote {write_json(args.output, record)}")
    return record


if __name__ == "__main__":
    main()

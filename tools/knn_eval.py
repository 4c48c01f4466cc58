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

from sslvit.cli.evaluation import Evaluation
from sslvit.cli.low_shot import describe_subset, finish_record, seed_record
from sslvit.cli.parser import ToolParser
from sslvit.cli.tool_flags import add_feature_args, add_subset_args
from sslvit.errors import ConfigError, one_line_errors
from sslvit.eval.features import Features
from sslvit.eval.knn import KNNClassifier, KNNResult, choose_ks


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
    parser.add_argument(
        "--k", type=int, help="the k whose accuracy is top1/top5 (default 20, or the largest k fitting a smaller bank)"
    )
    parser.add_argument(
        "--ks",
        type=int,
        nargs="+",
        help="all k reported, from one search (default: those of 10 20 100 200 that fit the bank); a k you ask for "
        "that is larger than the bank is an error",
    )
    parser.add_argument("--temperature", type=float, default=0.07, help="T of the vote weights exp(sim / T)")
    parser.add_argument("--index", choices=["flat", "ivf"], default="flat", help="exact (flat) or inverted-file (ivf)")
    parser.add_argument("--nlist", type=int, help="IVF cells (default sqrt(bank size))")
    parser.add_argument("--nprobe", type=int, default=32, help="IVF cells searched per query")
    return parser


def classifier(args: argparse.Namespace, bank_size: int) -> tuple[KNNClassifier, str | None]:
    """The kNN of the arguments for a bank of ``bank_size`` (:func:`~sslvit.eval.knn.choose_ks`), and what was
    adapted to the bank."""
    if args.temperature <= 0:
        raise ConfigError(f"--temperature must be positive, got {args.temperature}")
    ks, k, note = choose_ks(bank_size, args.k, args.ks)
    return KNNClassifier(ks, k, args.temperature, args.index, args.nlist, args.nprobe), note


def check(args: argparse.Namespace, evaluation: Evaluation) -> None:
    """Every setting against every seed's bank, from the labels alone: before the first image is encoded."""
    for positions in evaluation.train_subsets().values():
        classifier(args, len(positions) if positions is not None else len(evaluation.train_labels()))


def evaluate_seed(args: argparse.Namespace, evaluation: Evaluation, train: Features, val: Features, seed: int) -> dict:
    """kNN with the bank of one seed (the low-shot draw, or all of train): print its table, return its record."""
    positions = evaluation.train_subsets()[seed]
    bank = train if positions is None else train.subset(positions)
    knn, note = classifier(args, len(bank))
    start = time.perf_counter()
    result = knn.fit(bank.features, bank.labels).evaluate(val.features, val.labels)
    seconds = time.perf_counter() - start
    if positions is not None:
        print(f"bank: {describe_subset(args, len(positions), seed)}")
    if note is not None:
        print(f"note: {note}")
    index = "exact inner product (faiss IndexFlatIP)" if args.index == "flat" else f"IVF, nprobe {knn.index.nprobe}"
    print(f"kNN: {index}, T = {args.temperature}, {knn.threads} threads, {seconds:.2f} s")
    if result.recall is not None:
        print(f"IVF recall of the exact {knn.ks[-1]} nearest neighbours: {result.recall:.3f}")
    print(table(result))
    record = {**result.to_dict(), "ks": knn.ks, "seconds": {**result.timings, "knn": seconds}, "k_note": note}
    if args.index == "ivf":
        record.update(nlist=knn.index.nlist, nprobe=knn.index.nprobe)
    return seed_record(args, record, seed, positions)


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    with one_line_errors(parser.prog):
        evaluation = Evaluation.from_args(args)
        check(args, evaluation)
        train, val = evaluation.features("train"), evaluation.features("val")
        print(evaluation.headline(train, val))
        records = [evaluate_seed(args, evaluation, train, val, seed) for seed in evaluation.train_subsets()]

    record = {**records[0], **evaluation.describe(train, val)}
    record["seconds"] = {**records[0]["seconds"], **evaluation.seconds}
    if "train_subset" in record:
        record["num_train"] = record["train_subset"]["num_images"]
    return finish_record(record, records, args.output)


if __name__ == "__main__":
    main()

"""Weighted kNN accuracy of a checkpoint's frozen encoder (DINO protocol: T = 0.07, default k = 20).

    python tools/knn_eval.py --checkpoint runs/.../last.ckpt --data-root ../shared/data/cifar10 --output knn.json
    python tools/knn_eval.py --checkpoint runs/.../last.ckpt --random-init --data-root ../shared/data/cifar10 \\
        --output knn-random.json

The labelled train split is the bank, the val split the queries. Features are cached, so a second
run of the same checkpoint on the same data only searches.
"""

from __future__ import annotations

import argparse
import time

from sslvit.cli.parser import ToolParser
from sslvit.cli.tool_args import Evaluation, add_feature_args, write_json
from sslvit.errors import one_line_errors
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
    parser.add_argument("--k", type=int, default=20, help="the k whose accuracy is top1/top5 (default 20)")
    parser.add_argument(
        "--ks", type=int, nargs="+", default=list(DEFAULT_KS), help="all k reported, from one search (10 20 100 200)"
    )
    parser.add_argument("--temperature", type=float, default=0.07, help="T of the vote weights exp(sim / T)")
    parser.add_argument("--index", choices=["flat", "ivf"], default="flat", help="exact (flat) or inverted-file (ivf)")
    parser.add_argument("--nlist", type=int, help="IVF cells (default sqrt(bank size))")
    parser.add_argument("--nprobe", type=int, default=32, help="IVF cells searched per query")
    return parser


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    with one_line_errors(parser.prog):
        evaluation = Evaluation.from_args(args)
        knn = KNNClassifier(args.ks, args.k, args.temperature, args.index, args.nlist, args.nprobe)
        train, val = evaluation.features("train"), evaluation.features("val")
        start = time.perf_counter()
        result = knn.fit(train.features, train.labels).evaluate(val.features, val.labels)
        evaluation.seconds["knn"] = time.perf_counter() - start

    index = "exact inner product (faiss IndexFlatIP)" if args.index == "flat" else f"IVF, nprobe {knn.index.nprobe}"
    print(evaluation.headline(train, val))
    print(f"kNN: {index}, T = {args.temperature}, {knn.threads} threads, {evaluation.seconds['knn']:.2f} s")
    if result.recall is not None:
        print(f"IVF recall of the exact {knn.ks[-1]} nearest neighbours: {result.recall:.3f}")
    print(table(result))
    record = {**result.to_dict(), "ks": knn.ks, **evaluation.describe(train, val)}
    record["seconds"] = {**result.timings, **evaluation.seconds}
    if args.index == "ivf":
        record.update(nlist=knn.index.nlist, nprobe=knn.index.nprobe)
    if args.output:
        print(f"wrote {write_json(args.output, record)}")
    return record


if __name__ == "__main__":
    main()

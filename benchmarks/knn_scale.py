"""Peak memory and time of the kNN evaluator on a large synthetic feature bank (ImageNet-scale load test).

    python benchmarks/knn_scale.py --bank 1000000 --dim 768 --queries 10000 --output knn_scale.json

Features are drawn from a seeded generator in chunks (Gaussian class centres plus noise, so the
accuracy is known to be high), written into one preallocated ``[N, D]`` float32 tensor as the feature
cache would hold them, then ``sslvit.eval.KNNClassifier`` indexes the bank and classifies the queries
(k = 10, 20, 100, 200 from one search). Printed: the bank's own size, the process's peak resident
memory after building it and after the kNN, and the seconds of each phase. The evaluator adds one copy
of the bank (Faiss's flat index) and nothing that grows with it beyond that; the search runs in query
batches, so its memory does not grow with the number of queries.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch

from sslvit.cli.parser import ToolParser
from sslvit.eval.knn import KNNClassifier


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux


def synthetic(n: int, dim: int, classes: int, seed: int, centres: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    features, labels = torch.empty(n, dim), torch.randint(0, classes, (n,), generator=g)
    for start in range(0, n, 65536):
        part = labels[start : start + 65536]
        features[start : start + len(part)] = centres[part] + torch.randn(len(part), dim, generator=g)
    return features, labels


def build_parser() -> ToolParser:
    parser = ToolParser(__file__, description=__doc__)
    parser.add_argument("--bank", type=int, default=1_000_000, help="feature vectors in the bank")
    parser.add_argument("--dim", type=int, default=768, help="their dimension (ViT-B: 768)")
    parser.add_argument("--queries", type=int, default=10_000, help="vectors classified against the bank")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--output", help="write the results as JSON here")
    parser.add_argument("--json", dest="output", help=argparse.SUPPRESS)  # its name before --output everywhere
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)

    start_peak = peak_gib()
    centres = torch.randn(args.classes, args.dim, generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    bank, labels = synthetic(args.bank, args.dim, args.classes, 1, centres)
    queries, query_labels = synthetic(args.queries, args.dim, args.classes, 2, centres)
    built, after_bank = time.perf_counter() - t0, peak_gib()
    t0 = time.perf_counter()
    knn = KNNClassifier().fit(bank, labels)
    fitted = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = knn.evaluate(queries, query_labels)
    searched, after_knn = time.perf_counter() - t0, peak_gib()
    bank_gib = bank.numel() * 4 / 2**30
    record = {
        "bank": args.bank,
        "dim": args.dim,
        "queries": args.queries,
        "bank_gib": bank_gib,
        "peak_gib_start": start_peak,
        "peak_gib_after_bank": after_bank,
        "peak_gib_after_knn": after_knn,
        "knn_added_gib": after_knn - after_bank,
        "seconds_build": built,
        "seconds_fit": fitted,
        "seconds_search": searched,
        "top1": result.top1,
        "threads": knn.threads,
    }
    print(
        f"bank {args.bank:,} x {args.dim} float32 = {bank_gib:.2f} GiB; {args.queries:,} queries, {knn.threads} threads"
    )
    print(
        f"peak resident memory: {after_bank:.2f} GiB with the bank, {after_knn:.2f} GiB after the kNN "
        f"(+{after_knn - after_bank:.2f} GiB = {(after_knn - after_bank) / bank_gib:.2f}x the bank)"
    )
    print(f"seconds: index {fitted:.1f}, search + vote {searched:.1f}; top-1 {result.top1:.2f}%")
    if args.output:
        with open(args.output, "w") as f:
            json.dump(record, f, indent=2)
    return record


if __name__ == "__main__":
    main()

"""Speed of the evaluators against the usual alternatives (numbers for the README, not timed tests).

    python benchmarks/evaluators.py --output benchmark-eval.json                 # all three parts, full sizes
    python benchmarks/evaluators.py --parts knn ivf --bank-size 100000           # smaller IVF bank
    python benchmarks/evaluators.py --parts linear --data-root ../shared/data/cifar10 --checkpoint runs/.../last.ckpt

knn:    a 45,000 x 192 bank and 5,000 queries (10 Gaussian classes): sslvit's Faiss kNN (k = 10, 20,
        100, 200 from one search) vs a chunked torch matmul + topk with the same vote, and vs
        scikit-learn's brute-force KNeighborsClassifier with the same weights (k = 20 only).
ivf:    a synthetic clustered bank (default 1,000,000 x 192): exact vs IVF search time and recall.
linear: the cached-feature probe (encode train + val once, train heads) vs the augmented protocol
        path (every epoch through the encoder), end to end, with val top-1 of both. Without
        --checkpoint the encoder is a random-init ViT-Tiny/4 (the cifar10 config's architecture).
Timings are the median of --repeats runs (linear: one run each).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sslvit.checkpoints import CheckpointInfo
from sslvit.cli.parser import ToolParser
from sslvit.cli.tool_inputs import load_encoder
from sslvit.data import class_balanced_subset
from sslvit.eval.features import FeatureCache, dataset_features, dataset_targets
from sslvit.eval.knn import DEFAULT_KS, KNNClassifier, available_cores, topk_accuracy, weighted_vote
from sslvit.eval.linear import ProbeSettings, linear_probe
from sslvit.eval.linear_protocol import linear_probe_protocol
from sslvit.nn import VisionTransformer, ViTConfig


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median seconds of ``repeats`` calls, and the last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def gaussian_classes(n: int, dim: int, classes: int, spread: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=torch.Generator().manual_seed(1234))
    labels = torch.randint(0, classes, (n,), generator=g)
    return centers[labels] + spread * torch.randn(n, dim, generator=g), labels


# ---- kNN ---------------------------------------------------------------------------------------------
def torch_knn_scores(bank, bank_labels, queries, ks, temperature, chunk=1024) -> dict[int, torch.Tensor]:
    """The baseline: normalized matmul + topk in query chunks, then the same weighted vote."""
    bank = F.normalize(bank, dim=1)
    num_classes = int(bank_labels.max()) + 1
    sims, ids = [], []
    for q in F.normalize(queries, dim=1).split(chunk):
        s, i = (q @ bank.T).topk(max(ks), dim=1)
        sims.append(s)
        ids.append(i)
    sims, neighbours = torch.cat(sims), bank_labels[torch.cat(ids)]
    return {k: weighted_vote(sims[:, :k], neighbours[:, :k], num_classes, temperature) for k in ks}


def bench_knn(args: argparse.Namespace) -> dict[str, Any]:
    from sklearn.neighbors import KNeighborsClassifier

    bank, bank_labels = gaussian_classes(args.knn_bank, args.dim, 10, args.spread, seed=0)
    queries, labels = gaussian_classes(args.knn_queries, args.dim, 10, args.spread, seed=1)
    temperature = 0.07

    def ours():
        return (
            KNNClassifier(DEFAULT_KS, 20, temperature, threads=args.threads)
            .fit(bank, bank_labels)
            .evaluate(queries, labels)
        )

    def baseline_torch():
        return torch_knn_scores(bank, bank_labels, queries, DEFAULT_KS, temperature)

    def dino_weights(distances: np.ndarray) -> np.ndarray:  # unit vectors: similarity = 1 - d^2 / 2
        return np.exp((1.0 - distances**2 / 2.0) / temperature)

    unit_bank, unit_queries = F.normalize(bank, dim=1).numpy(), F.normalize(queries, dim=1).numpy()

    def baseline_sklearn():
        knn = KNeighborsClassifier(n_neighbors=20, algorithm="brute", weights=dino_weights)
        return knn.fit(unit_bank, bank_labels.numpy()).predict(unit_queries)

    def ours_ivf():  # build + search + vote; recall measured apart
        knn = KNNClassifier(DEFAULT_KS, 20, temperature, "ivf", threads=args.threads)  # default nprobe
        return knn.fit(bank, bank_labels)

    t_ours, result = timed(ours, args.repeats)
    t_ivf, ivf = timed(lambda: (knn := ours_ivf(), knn.scores(queries))[0], args.repeats)
    ivf_result = ivf.evaluate(queries, labels)
    t_torch, torch_scores = timed(baseline_torch, args.repeats)
    t_sklearn, sklearn_pred = timed(baseline_sklearn, args.repeats)
    ours_pred = KNNClassifier(DEFAULT_KS, 20, temperature).fit(bank, bank_labels).predict(queries)
    return {
        "bank": list(bank.shape),
        "queries": len(queries),
        "threads": args.threads,
        "seconds": {"faiss": t_ours, "torch_chunked": t_torch, "sklearn_brute": t_sklearn, "faiss_ivf": t_ivf},
        "ivf": {"nlist": ivf.index.nlist, "nprobe": ivf.index.nprobe, "recall_at_200": ivf_result.recall},
        "speedup_vs_torch": t_torch / t_ours,
        "speedup_vs_sklearn": t_sklearn / t_ours,
        "top1_k20": {
            "faiss": result.top1,
            "faiss_ivf": ivf_result.top1,
            "torch_chunked": topk_accuracy(torch_scores[20], labels, (1,))[0],
            "sklearn_brute": 100.0 * float((torch.from_numpy(sklearn_pred) == labels).double().mean()),
        },
        "same_predictions_as_sklearn": 100.0 * float((torch.from_numpy(sklearn_pred) == ours_pred).double().mean()),
    }


# ---- IVF ---------------------------------------------------------------------------------------------
def bench_ivf(args: argparse.Namespace) -> dict[str, Any]:
    # Clustered like real features: many modes, one class per mode.
    modes = max(10, args.bank_size // 1000)
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(modes, args.dim, generator=g)
    mode = torch.randint(0, modes, (args.bank_size + args.ivf_queries,), generator=g)
    points = centers[mode] + args.ivf_spread * torch.randn(len(mode), args.dim, generator=g)
    bank, queries = points[: args.bank_size], points[args.bank_size :]
    bank_labels, labels = mode[: args.bank_size] % 10, mode[args.bank_size :] % 10

    exact = KNNClassifier(DEFAULT_KS, threads=args.threads).fit(bank, bank_labels)
    t_exact, (_, truth) = timed(lambda: exact.search(queries), args.repeats)
    start = time.perf_counter()
    ivf = KNNClassifier(DEFAULT_KS, index="ivf", threads=args.threads).fit(bank, bank_labels)
    t_build = time.perf_counter() - start

    def top1(knn: KNNClassifier) -> float:
        return topk_accuracy(knn.scores(queries)[20], labels, (1,))[0]

    sweep = []
    for nprobe in args.nprobe:  # one index, several search widths
        ivf.index.nprobe = min(nprobe, ivf.index.nlist)
        t_ivf, (_, found) = timed(lambda: ivf.search(queries), args.repeats)
        hits = sum(len(set(a) & set(b)) for a, b in zip(found.tolist(), truth.tolist(), strict=True))
        sweep.append(
            {
                "nprobe": ivf.index.nprobe,
                "seconds": t_ivf,
                "speedup": t_exact / t_ivf,
                "recall_at_200": hits / truth.numel(),
                "top1_k20": top1(ivf),
            }
        )
    return {
        "bank": [args.bank_size, args.dim],
        "queries": args.ivf_queries,
        "nlist": ivf.index.nlist,
        "seconds": {"exact_search": t_exact, "ivf_build": t_build},
        "top1_k20_exact": top1(exact),
        "nprobe": sweep,
    }


# ---- linear probe --------------------------------------------------------------------------------------
def bench_linear(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    if args.checkpoint:
        backbone, info = load_encoder(args.checkpoint)
    else:
        config = ViTConfig(arch="vit_tiny", img_size=32, patch_size=4, depth=args.depth)
        backbone = VisionTransformer(config).eval()
        info = CheckpointInfo(source="random-init", image_size=32, random_init=True)
    dataset = "imagefolder" if args.data_root else "digits"
    data = info.eval_datamodule(dataset, args.data_root, args.batch_size, args.num_workers)

    def subset(split: str, count: int | None) -> list[int] | None:
        targets = dataset_targets(data.build_dataset(split, None))
        return class_balanced_subset(targets, count) if count and count < len(targets) else None

    train_idx, val_idx = subset("train", args.train_images), subset("val", args.val_images)
    with tempfile.TemporaryDirectory() as folder:
        cache = FeatureCache(folder)  # empty: the first run encodes, the second reads
        start = time.perf_counter()
        train = dataset_features(backbone, data, "train", batch_size=args.batch_size, cache=cache, indices=train_idx)
        val = dataset_features(backbone, data, "val", batch_size=args.batch_size, cache=cache, indices=val_idx)
        t_encode = time.perf_counter() - start
        fast = linear_probe(train, val, ProbeSettings(epochs=args.cached_epochs))
        t_fast = time.perf_counter() - start
        start = time.perf_counter()
        train = dataset_features(backbone, data, "train", batch_size=args.batch_size, cache=cache, indices=train_idx)
        val = dataset_features(backbone, data, "val", batch_size=args.batch_size, cache=cache, indices=val_idx)
        warm = linear_probe(train, val, ProbeSettings(epochs=args.cached_epochs))
        t_warm = time.perf_counter() - start
    start = time.perf_counter()
    val = dataset_features(backbone, data, "val", batch_size=args.batch_size, indices=val_idx)  # no cache
    protocol = linear_probe_protocol(
        backbone,
        data,
        val,
        settings=ProbeSettings(epochs=args.protocol_epochs, batch_size=args.protocol_batch_size),
        indices=train_idx,
        progress=lambda e, s: print(f"  protocol epoch {e + 1}/{args.protocol_epochs}: {s:.0f} s", flush=True),
    )
    t_protocol = time.perf_counter() - start
    assert warm.top1 == fast.top1, "the cached features must give the same probe"
    return {
        "dataset": dataset,
        "encoder": args.checkpoint or f"random-init ViT-Tiny/4, depth {args.depth}",
        "train_images": len(train),
        "val_images": len(val),
        "epochs": {"cached": args.cached_epochs, "protocol": args.protocol_epochs},
        "seconds": {
            "cached_end_to_end": t_fast,
            "cached_encode": t_encode,
            "cached_warm": t_warm,
            "protocol_end_to_end": t_protocol,
        },
        "speedup_end_to_end": t_protocol / t_fast,
        "speedup_warm_cache": t_protocol / t_warm,
        "top1": {"cached": fast.top1, "protocol": protocol.top1},
        "base_lr": {"cached": fast.lr, "protocol": protocol.lr},
    }


def cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        import platform

        return platform.processor() or "unknown"


# ---- report ----------------------------------------------------------------------------------------------
def report(results: dict[str, Any]) -> str:
    lines = []
    if "knn" in results:
        r = results["knn"]
        s = r["seconds"]
        lines += [
            f"kNN: bank {r['bank'][0]} x {r['bank'][1]}, {r['queries']} queries, {r['threads']} threads each",
            f"  {'method':<52}{'seconds':>9}{'time/ours':>10}{'top-1 k=20':>12}",
            f"  {'sslvit KNNClassifier (faiss flat, k=10/20/100/200)':<52}{s['faiss']:>9.3f}{1:>8.1f}x"
            f"{r['top1_k20']['faiss']:>12.2f}",
            f"  {'torch matmul + topk, chunked (same 4 k)':<52}{s['torch_chunked']:>9.3f}"
            f"{r['speedup_vs_torch']:>8.1f}x{r['top1_k20']['torch_chunked']:>12.2f}",
            f"  {'sklearn KNeighborsClassifier brute (k=20 only)':<52}{s['sklearn_brute']:>9.3f}"
            f"{r['speedup_vs_sklearn']:>8.1f}x{r['top1_k20']['sklearn_brute']:>12.2f}",
            f"  {'sslvit KNNClassifier, IVF (build + search)':<52}{s['faiss_ivf']:>9.3f}"
            f"{s['faiss_ivf'] / s['faiss']:>8.1f}x{r['top1_k20']['faiss_ivf']:>12.2f}"
            f"  recall {r['ivf']['recall_at_200']:.3f} (nlist {r['ivf']['nlist']}, nprobe {r['ivf']['nprobe']})",
            f"  predictions identical to sklearn's: {r['same_predictions_as_sklearn']:.2f}%; targets: >= 5x sklearn "
            f"({'met' if r['speedup_vs_sklearn'] >= 5 else 'NOT met'}), no slower than torch "
            f"({'met' if r['speedup_vs_torch'] >= 1 else 'NOT met'})",
        ]
    if "ivf" in results:
        r = results["ivf"]
        lines += [
            f"IVF: bank {r['bank'][0]} x {r['bank'][1]}, {r['queries']} queries, nlist {r['nlist']}; exact search "
            f"{r['seconds']['exact_search']:.3f} s (top-1 {r['top1_k20_exact']:.2f}), IVF build "
            f"{r['seconds']['ivf_build']:.2f} s",
            f"  {'nprobe':>8}{'search s':>10}{'speed-up':>10}{'recall@200':>12}{'top-1 k=20':>12}",
        ]
        for row in r["nprobe"]:
            lines.append(
                f"  {row['nprobe']:>8}{row['seconds']:>10.3f}{row['speedup']:>9.1f}x{row['recall_at_200']:>12.3f}"
                f"{row['top1_k20']:>12.2f}"
            )
    if "linear" in results:
        r = results["linear"]
        s = r["seconds"]
        met = r["speedup_end_to_end"] >= 20 and r["top1"]["cached"] >= r["top1"]["protocol"]
        lines += [
            f"linear probe: {r['encoder']} on {r['dataset']}, {r['train_images']} train / {r['val_images']} val",
            f"  {'path':<44}{'seconds':>9}{'top-1':>8}",
            f"  {'cached features, ' + str(r['epochs']['cached']) + ' epochs (encode + train)':<44}"
            f"{s['cached_end_to_end']:>9.1f}{r['top1']['cached']:>8.2f}",
            f"  {'  of which encoding train + val once':<44}{s['cached_encode']:>9.1f}",
            f"  {'cached features, second run (cache hit)':<44}{s['cached_warm']:>9.1f}{r['top1']['cached']:>8.2f}",
            f"  {'protocol, ' + str(r['epochs']['protocol']) + ' epochs of augmented images':<44}"
            f"{s['protocol_end_to_end']:>9.1f}{r['top1']['protocol']:>8.2f}",
            f"  end-to-end speed-up {r['speedup_end_to_end']:.1f}x (warm cache {r['speedup_warm_cache']:.0f}x); "
            f"target >= 20x at equal or better top-1: {'met' if met else 'NOT met'}",
        ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(__file__, description=__doc__)
    parser.add_argument("--parts", nargs="+", choices=["knn", "ivf", "linear"], default=["knn", "ivf", "linear"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, default=available_cores(), help="threads of torch, Faiss and scikit-learn (default: all)"
    )
    parser.add_argument("--dim", type=int, default=192)
    parser.add_argument("--knn-bank", type=int, default=45_000)
    parser.add_argument("--knn-queries", type=int, default=5_000)
    parser.add_argument("--spread", type=float, default=4.0, help="noise of the kNN classes (sets the accuracy)")
    parser.add_argument("--bank-size", type=int, default=1_000_000, help="IVF bank size")
    parser.add_argument("--ivf-queries", type=int, default=5_000)
    parser.add_argument("--ivf-spread", type=float, default=2.0)
    parser.add_argument("--nprobe", type=int, nargs="+", default=[8, 32, 128], help="IVF cells searched per query")
    parser.add_argument("--checkpoint", help="encoder for the linear part (default: random-init ViT-Tiny/4)")
    parser.add_argument("--depth", type=int, default=12, help="blocks of the random-init encoder")
    parser.add_argument("--data-root", help="ImageFolder with train/ and val/ (default: the offline digits)")
    parser.add_argument("--train-images", type=int, help="class-balanced subset of train (default: all)")
    parser.add_argument("--val-images", type=int, help="class-balanced subset of val (default: all)")
    parser.add_argument("--cached-epochs", type=int, default=100)
    parser.add_argument("--protocol-epochs", type=int, default=90)
    parser.add_argument("--protocol-batch-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=256, help="images per encoder forward pass")
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--output", help="write the numbers as JSON")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)

    from threadpoolctl import threadpool_limits  # installed with scikit-learn

    torch.set_num_threads(args.threads)
    results: dict[str, Any] = {"threads": args.threads, "cores": available_cores(), "cpu": cpu_name()}
    with threadpool_limits(args.threads):  # OpenMP and BLAS pools of scikit-learn and Faiss
        for part, bench in (("knn", bench_knn), ("ivf", bench_ivf), ("linear", bench_linear)):
            if part in args.parts:
                print(f"running {part} ...", flush=True)
                results[part] = bench(args)
    print(f"{results['cpu']}, {args.threads} threads")
    print(report(results))
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.output}")
    return results


if __name__ == "__main__":
    main()

"""The results table: every method pretrained for the same wall-clock budget on CIFAR-10, then evaluated.

    python benchmarks/results.py --data-root ../shared/data/cifar10 --minutes 30 --mae-repo /path/to/mae
    python benchmarks/results.py --data-root ../shared/data/cifar10 --minutes 30 --methods beit   # one row
    python benchmarks/results.py --table                                                          # from the JSONs

For each method (``mae``, ``beit``, ``cpc``: their ``configs/<method>/cifar10_vit_tiny.yaml``; and
``official-mae``: facebookresearch/mae's model and training loop from a local checkout, with the
MAE config's sizes, ``benchmarks/official_mae.py``) on the whole train split (45,000 images):

1. pretrain for ``--minutes`` of wall clock, the schedule following the clock (``sslvit.cli.TimeBudget``;
   the official loop does the same), no validation during training, with the short-budget settings of
   ``BUDGET_SETTINGS`` (recorded in each JSON's ``pretrain_command``); the encoder is saved at every
   fifth of the budget for the learning curve;
2. kNN (``tools/knn_eval.py``: k = 20, T = 0.07, bank = all train images, queries = val) and the
   linear probe (``tools/linear_probe.py``: learning rate chosen on 10% of train held out, val reported
   once) of the method's native features, and the same two for a random initialisation of the same
   architecture (the ``random`` row is that of MAE's, the others are kept in each record);
3. fine-tuning (``tools/finetune.py --minutes --finetune-minutes``, configs/finetune/cifar10_vit_tiny.yaml)
   of the pretrained encoder and of the random initialisation;
4. the learning curve: kNN of each saved encoder (a 5,000-image bank, 1,000 val queries).

Each run writes ``<out>/<method>.json`` (small; kept in the repository) with at least ``method``,
``minutes``, ``images_seen``, ``knn_top1``, ``linear_top1``, ``finetune_top1``, ``machine`` and
``command``; ``--table`` turns them into ``<out>/results.md`` and ``<run-dir>/curves.png``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {m: f"configs/{m}/cifar10_vit_tiny.yaml" for m in ("mae", "beit", "cpc")}
FINETUNE_CONFIG = "configs/finetune/cifar10_vit_tiny.yaml"
ROWS = ("mae", "beit", "cpc", "random", "official-mae")
CURVE_POINTS = 5
CURVE_BANK, CURVE_QUERIES = 5000, 1000  # the curve's kNN: bank train images, val queries
# Settings of each row on top of its config, for a budget of minutes instead of the configs' hundreds of
# epochs; chosen for cost and regularisation, or on held-out train images with benchmarks/screen_settings.py,
# never on val: no drop path and no colour jitter (regularisers of long runs) and crops on the device (CIFAR
# fits in memory) for BEiT; CPC's non-overlapping 4x4 grid of 8 px patches (16 patch encodings per image
# instead of 49, 4.1x the images per second) predicting 2 rows ahead, top-down and bottom-up, with a 4-block
# patch encoder (screened at 8 minutes: 12 blocks stayed at random init's kNN, 6 and 4 blocks learned,
# 4 the most; docs/results.md). All rows train in fp32: bf16 autocast was no faster on this machine's AMX
# for any of the three steps (docs/speed.md).
BUDGET_SETTINGS = {
    "mae": [],
    "beit": ["--data.on_device", "true", "--data.color_jitter", "0", "--model.init_args.backbone.drop_path_rate", "0"],
    "cpc": ["--model.init_args.patch_stride", "8", "--model.init_args.prediction_steps", "2",
            "--model.init_args.directions", "[top_down, bottom_up]", "--model.init_args.backbone.depth", "4"],
}  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    from sslvit.cli.parser import ToolParser

    parser = ToolParser(__file__, description=__doc__)
    parser.add_argument("--data-root", default="../shared/data/cifar10", help="an ImageFolder root with train/, val/")
    parser.add_argument("--minutes", type=float, default=30.0, help="pretraining budget of every method")
    parser.add_argument("--finetune-minutes", type=float, default=10.0, help="fine-tuning budget (0: skip)")
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["mae", "beit", "cpc", "official-mae"],
        choices=["mae", "beit", "cpc", "official-mae"],
    )
    parser.add_argument("--mae-repo", help="a checkout of facebookresearch/mae (for official-mae)")
    parser.add_argument("--run-dir", default="runs/results", help="run directories and checkpoints (not committed)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"), help="the JSONs and results.md")
    parser.add_argument("--table", action="store_true", help="only build the table and plot from the JSONs")
    parser.add_argument("fit_args", nargs="*", help="extra `sslvit fit` settings for every sslvit row, after --")
    return parser


def machine() -> str:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{len(os.sched_getaffinity(0))} cores of {model}, {gpu}; torch {torch.__version__}"


class Snapshots(L.Callback):
    """Saves the model's weights at every fifth of the TimeBudget's clock, with the time and images seen."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.next = folder, 1

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        from sslvit.cli import TimeBudget

        budget = next(c for c in trainer.callbacks if isinstance(c, TimeBudget))
        if budget.progress * CURVE_POINTS >= self.next or trainer.should_stop:
            self.folder.mkdir(parents=True, exist_ok=True)
            state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
            step = trainer.global_step
            images = step * trainer.datamodule.batch_size  # the run's batch, whatever setting made it
            info = {"minutes": budget.elapsed / 60, "step": step, "images_seen": images}
            torch.save({"state_dict": state, **info}, self.folder / f"{self.next:02d}.pt")
            self.next = int(budget.progress * CURVE_POINTS) + 1


def pretrain(method: str, args: argparse.Namespace, run: Path) -> dict[str, Any]:
    """Train one method for the budget; returns what the record needs about training."""
    if method == "official-mae":
        command = [sys.executable, str(REPO / "benchmarks" / "official_mae.py"), "--mae-repo", args.mae_repo,
                   "--config", CONFIGS["mae"], "--data-root", args.data_root, "--minutes", str(args.minutes),
                   "--output", str(run / "mae.pth"), "--json", str(run / "official.json")]  # fmt: skip
        if not (run / "official.json").is_file():
            subprocess.run(command, check=True, cwd=REPO)
        done = json.loads((run / "official.json").read_text())
        return {
            "checkpoint": str(run / "mae.pth"),
            "images_seen": done["images_seen"],
            "images_per_s": done["images_per_s"],
            "train_seconds": done["seconds"],
            "command": command,
        }
    from sslvit.cli import TimeBudget, run_cli

    budget = json.dumps([{"class_path": "sslvit.cli.TimeBudget", "init_args": {"minutes": args.minutes}}])
    command = ["sslvit", "fit", "--config", CONFIGS[method], "--data.dataset", "imagefolder",
               "--data.root", args.data_root, "--trainer.default_root_dir", str(run),
               "--trainer.max_epochs", "-1", "--trainer.max_steps", "-1", "--trainer.limit_val_batches", "0",
               "--trainer.callbacks", budget, *BUDGET_SETTINGS[method], *args.fit_args]  # fmt: skip
    last = run / "checkpoints" / "last.ckpt"
    if not last.is_file():
        cli = run_cli(command[1:], callbacks=[Snapshots(run / "snapshots")])
        batch = cli.datamodule.batch_size
        timer = next(c for c in cli.trainer.callbacks if isinstance(c, TimeBudget))
        steps, seconds = cli.trainer.global_step, timer.elapsed
        (run / "trained.json").write_text(json.dumps({"steps": steps, "seconds": seconds, "batch": batch}) + "\n")
    trained = json.loads((run / "trained.json").read_text())
    images = trained["steps"] * trained["batch"]
    return {
        "checkpoint": str(last),
        "images_seen": images,
        "images_per_s": images / trained["seconds"],
        "train_seconds": trained["seconds"],
        "command": command,
    }


def tool(name: str, arguments: list[str], output: Path) -> dict[str, Any]:
    """Run ``tools/<name>.py`` (as a user would) unless its JSON exists; returns the JSON."""
    if not output.is_file():
        command = [sys.executable, str(REPO / "tools" / f"{name}.py"), *arguments, "--output", str(output)]
        subprocess.run(command, check=True, cwd=REPO)
    return json.loads(output.read_text())


def evaluate(checkpoint: str, args: argparse.Namespace, run: Path, extra: list[str], tag: str) -> dict[str, Any]:
    """kNN, linear probe and fine-tuning of one encoder (``extra``: e.g. ``--random-init``)."""
    common = ["--checkpoint", checkpoint, "--data-root", args.data_root, *extra]
    knn = tool("knn_eval", common, run / f"knn{tag}.json")
    linear = tool("linear_probe", common, run / f"linear{tag}.json")
    result = {
        "knn_top1": knn["top1"],
        "linear_top1": linear["top1"],
        "features": knn.get("features"),
        "linear_base_lr": linear.get("base_lr"),
        "finetune_top1": None,
    }
    if args.finetune_minutes > 0:
        ft = tool("finetune", [*common, "--config", FINETUNE_CONFIG, "--minutes", str(args.finetune_minutes),
                               "--run-dir", str(run / f"finetune{tag}")], run / f"finetune{tag}.json")  # fmt: skip
        result["finetune_top1"] = ft["top1"]
    return result


def curve(method: str, run: Path, args: argparse.Namespace) -> list[dict[str, float]]:
    """kNN of the encoder saved at every fifth of the budget: (minutes, images seen, top-1 on val)."""
    from sslvit.eval import KNNClassifier, dataset_features
    from sslvit.eval.features import dataset_targets
    from sslvit.methods import load_method

    model, info = load_method(run / "checkpoints" / "last.ckpt")
    data = info.eval_datamodule("imagefolder", args.data_root)
    bank, queries = (
        curve_subset(dataset_targets(data.build_dataset(split, None)), size)
        for split, size in (("train", CURVE_BANK), ("val", CURVE_QUERIES))
    )
    points = []
    for snapshot in sorted((run / "snapshots").glob("*.pt")):
        saved = torch.load(snapshot, map_location="cpu", weights_only=True)
        model.load_state_dict(saved["state_dict"])
        train = dataset_features(model, data, "train", "native", indices=bank)
        val = dataset_features(model, data, "val", "native", indices=queries)
        top1 = KNNClassifier(ks=(20,), k=20).fit(train.features, train.labels).evaluate(val.features, val.labels).top1
        points.append({"minutes": saved["minutes"], "images_seen": saved["images_seen"], "knn_top1": top1})
    return points


def curve_subset(targets: list[int], size: int) -> list[int] | None:
    """A class-balanced ``size`` of a split for the curve, or all of it (None) when it is not larger."""
    from sslvit.data import class_balanced_subset

    return class_balanced_subset(targets, size, seed=0) if len(targets) > size else None


def random_baseline(method: str, checkpoint: str, args: argparse.Namespace, run: Path) -> dict[str, Any]:
    """The evaluations of a random init of the row's architecture and feature. The official MAE row has MAE's
    (the same ViT and CLS feature): taken from ``mae.json`` when that row exists, not evaluated twice."""
    mae = Path(args.out) / "mae.json"
    if method == "official-mae" and mae.is_file():
        return {**json.loads(mae.read_text())["random_init"], "from": "mae.json"}
    return evaluate(checkpoint, args, run, ["--random-init"], "-random")


def run_method(method: str, args: argparse.Namespace) -> dict[str, Any]:
    run = Path(args.run_dir) / method
    trained = pretrain(method, args, run)
    command = ["python", "benchmarks/results.py", "--data-root", args.data_root, "--minutes", str(args.minutes),
               "--finetune-minutes", str(args.finetune_minutes), "--methods", method]  # fmt: skip
    record = {
        "method": method,
        "minutes": args.minutes,
        "images_seen": trained["images_seen"],
        "images_per_s": trained["images_per_s"],
        "train_seconds": trained["train_seconds"],
        **evaluate(trained["checkpoint"], args, run, [], ""),
        "random_init": random_baseline(method, trained["checkpoint"], args, run),
        "curve": curve(method, run, args) if method != "official-mae" else [],
        "machine": machine(),
        "date": datetime.date.today().isoformat(),
        "command": shlex.join(command),
        "pretrain_command": shlex.join(map(str, trained["command"])),
        "finetune_minutes": args.finetune_minutes,
        "data": "CIFAR-10 ImageFolder: 45,000 train / 5,000 val; accuracies on val",
    }
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"{method}.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def table(out: Path) -> str:
    """results.md from the JSONs: one row per method, plus random init of MAE's architecture."""
    records = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json"))}
    if "mae" in records:
        records["random"] = {
            **records["mae"]["random_init"],
            "method": "random",
            "images_seen": 0,
            "images_per_s": None,
            "minutes": records["mae"]["minutes"],
        }
    header = [
        "method",
        "images seen",
        "kNN top-1",
        "linear top-1",
        "fine-tune top-1",
        "wall time",
        "images/s",
        "vs random init (kNN / linear)",
    ]
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]

    def pct(value: float | None) -> str:
        return "–" if value is None else f"{value:.2f}%"

    for name in ROWS:
        r = records.get(name)
        if r is None:
            continue
        base = r.get("random_init")
        delta = (
            f"{r['knn_top1'] - base['knn_top1']:+.2f} / {r['linear_top1'] - base['linear_top1']:+.2f}" if base else ""
        )
        speed = "–" if not r.get("images_per_s") else f"{r['images_per_s']:.0f}"
        wall = "–" if name == "random" else f"{r['minutes']:g} min"
        lines.append(
            f"| {name} | {r['images_seen']:,} | {pct(r['knn_top1'])} | {pct(r['linear_top1'])} | "
            f"{pct(r.get('finetune_top1'))} | {wall} | {speed} | {delta} |"
        )
    any_record = next(iter(records.values()), {})
    footer = (
        f"\nMachine: {any_record.get('machine')}; {any_record.get('date')}. Command per row: see each JSON's `command`."
    )
    tuned = sorted(
        {r["finetune_minutes"] for r in records.values() if r.get("finetune_top1") and r.get("finetune_minutes")}
    )
    if tuned:
        minutes = ", ".join(f"{m:g}" for m in tuned)
        footer += (
            f" Fine-tuning: {minutes} minutes of `{FINETUNE_CONFIG}` for the rows that have it (the random "
            "row: the same budget from a random initialisation)."
        )
    text = "\n".join(lines) + "\n" + footer + "\n"
    (out / "results.md").write_text(text)
    return text


def plot(out: Path, figure: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for path in sorted(out.glob("*.json")):
        record = json.loads(path.read_text())
        if record.get("curve"):
            ax.plot(
                [p["minutes"] for p in record["curve"]],
                [p["knn_top1"] for p in record["curve"]],
                "o-",
                label=record["method"],
            )
    ax.set_xlabel("pretraining time (minutes)")
    ax.set_ylabel("kNN top-1 on val (%), 5k bank")
    ax.legend()
    ax.grid(alpha=0.3)
    figure.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(figure)


def main(argv: list[str] | None = None) -> None:
    from sslvit.errors import one_line_errors

    args = build_parser().parse_args(argv)
    with one_line_errors("results.py"):
        if not args.table:
            if "official-mae" in args.methods and not args.mae_repo:
                raise FileNotFoundError("official-mae needs --mae-repo: a checkout of facebookresearch/mae")
            for method in args.methods:
                start = time.perf_counter()
                run_method(method, args)
                print(f"{method}: done in {(time.perf_counter() - start) / 60:.1f} minutes", flush=True)
        print(table(Path(args.out)))
        plot(Path(args.out), Path(args.run_dir) / "curves.png")


if __name__ == "__main__":
    main()

"""What the benchmarks share: pretraining on a budget, and the frozen evaluation of an encoder and its random twin.

    from harness import RunBudget, EvalSplit, fit, fit_official, frozen_evaluation, evaluate_encoder

The scripts of ``benchmarks/`` import it (and each other) by module name: Python puts a script's folder
first on ``sys.path``, and the tests add ``benchmarks/`` to it (``pythonpath`` in ``pyproject.toml``).

**Pretraining on a budget** (:func:`fit`). ``sslvit fit`` of a config with ``overrides``, a seed
(``seed_everything``, which also seeds the data order, every sample's key and the ``train_images`` draw)
and optionally a class-balanced subset of ``train_images``, for a :class:`RunBudget`:

- ``petaflops``: :class:`sslvit.cli.FlopBudget`, the schedule follows the FLOPs spent and the run trains
  ``ceil(budget / FLOPs of one step)`` steps, the same on any machine or when runs share one;
- ``minutes``: :class:`sslvit.cli.TimeBudget`, the schedule follows the clock;
- ``steps``: ``trainer.max_steps`` with the config's own schedule.

The budget replaces the configured callbacks (online evaluators) and validation is off, so the budget is
spent on training. The result (:class:`Trained`, kept as ``<run dir>/trained.json``) says what was spent:
steps, images seen, FLOPs (the step's FLOPs counted by torch, :class:`sslvit.cli.StepFlops`, whatever the
kind of budget), seconds of training alone (first step to the end of the last, across resumes: not the
start-up, not what runs after training stopped) and the checkpoint. ``snapshots=N`` saves the weights at
every 1/N of the budget, for a learning curve. A run directory that holds ``trained.json`` is done and is
read, not retrained; one that holds only a checkpoint resumes from it, exactly. Either way only for the
setting it was started with (``setting.json``, written before training): the config's path and content
(SHA-256), overrides, seed, subset, data and budget; another is refused, so an edited config is never
resumed or scored under an old run's name (:func:`claim_run`). :func:`fit_official` does the same for
facebookresearch/mae's loop (``official_mae.py``).

**Frozen evaluation** (:func:`evaluate_encoder`, :func:`frozen_evaluation`). The encoder of a checkpoint,
or its random twin (the same architecture freshly initialised with the seed: ``--random-init --seed``),
with the method's native feature (or a pooling) and the checkpoint's own preprocessing
(:meth:`sslvit.checkpoints.CheckpointInfo.eval_datamodule`: image size, mean, std, crop); features
cached as the tools cache them. kNN (k = 20, T = 0.07) and the linear probe (``ProbeSettings``: LARS,
100 epochs, learning rate chosen on 10% of the bank held out) are fitted on a bank and scored on
queries, as :class:`EvalSplit` says:

- ``on="val"`` (reporting): bank = train, queries = val. On the whole splits the numbers are those
  ``tools/knn_eval.py`` and ``tools/linear_probe.py`` print (the record holds their commands);
- ``on="held-out"`` (screening settings): a class-balanced, seeded part of train held out
  (:func:`sslvit.eval.held_out_split`) is the queries, the rest the bank; val is never read.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import importlib.util
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import lightning as L
import torch

from sslvit.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


# ---- budgets --------------------------------------------------------------------------------------
WARMUP_FRACTION = 0.05  # of a FLOP or minute budget, unless --warmup-fraction says otherwise


@dataclass(frozen=True)
class RunBudget:
    """What a training run may spend: ``petaflops``, ``minutes`` of wall clock or ``steps`` (exactly one);
    ``warmup_fraction``: the part of a FLOP or minute budget spent warming up."""

    petaflops: float | None = None
    minutes: float | None = None
    steps: int | None = None
    warmup_fraction: float = WARMUP_FRACTION

    def __post_init__(self) -> None:
        amounts = {"petaflops": self.petaflops, "minutes": self.minutes, "steps": self.steps}
        given = {k: v for k, v in amounts.items() if v is not None}
        if len(given) != 1 or next(iter(given.values())) <= 0:
            raise ConfigError(f"a budget is one positive --petaflops, --minutes or --steps, got {given or 'none'}")

    @classmethod
    def from_args(cls, args: argparse.Namespace, default: RunBudget | None = None, prefix: str = "") -> RunBudget:
        """The budget of :func:`add_budget_args`' flags (``default`` when none is given)."""
        values = {kind: getattr(args, prefix + kind, None) for kind in ("petaflops", "minutes", "steps")}
        if all(v is None for v in values.values()):
            if default is None:
                raise ConfigError("give a budget: --petaflops, --minutes or --steps")
            return default
        return cls(**values, warmup_fraction=getattr(args, prefix + "warmup_fraction", WARMUP_FRACTION))

    @property
    def kind(self) -> str:
        return next(k for k in ("petaflops", "minutes", "steps") if getattr(self, k) is not None)

    @property
    def amount(self) -> float:
        return getattr(self, self.kind)

    def flags(self) -> list[str]:
        """The command-line flags of this budget, e.g. ``["--petaflops", "0.1"]``; the warmup too when it is not
        the default (it is part of the schedule: a command without it remakes another run)."""
        warmup = ["--warmup-fraction", f"{self.warmup_fraction:g}"] if self.warmup_fraction != WARMUP_FRACTION else []
        return [f"--{self.kind}", f"{self.amount:g}", *warmup]

    def __str__(self) -> str:
        return {"petaflops": "{:g} PFLOP", "minutes": "{:g} minutes", "steps": "{:g} steps"}[self.kind].format(
            self.amount
        )

    def fit_arguments(self) -> list[str]:
        """``sslvit fit`` settings: the budget as the run's only callback (or the step limit), no validation."""
        if self.kind == "steps":
            callbacks, limit = "[]", str(self.steps)
        else:
            name = "FlopBudget" if self.kind == "petaflops" else "TimeBudget"
            init = {self.kind: self.amount, "warmup_fraction": self.warmup_fraction}
            callbacks, limit = json.dumps([{"class_path": f"sslvit.cli.{name}", "init_args": init}]), "-1"
        return ["--trainer.max_epochs", "-1", "--trainer.max_steps", limit,
                "--trainer.limit_val_batches", "0", "--trainer.callbacks", callbacks]  # fmt: skip


def add_budget_args(
    parser: argparse.ArgumentParser, what: str = "pretraining", prefix: str = "", default: RunBudget | None = None
) -> None:
    """``--petaflops`` / ``--minutes`` / ``--steps`` (one of them; with a ``prefix`` such as ``finetune-``, no
    ``--steps``) and ``--warmup-fraction``; ``default`` is named in its flag's help."""
    units = {"petaflops": "PFLOPs of training steps", "minutes": "minutes of wall clock", "steps": "optimizer steps"}
    group = parser.add_mutually_exclusive_group()
    for kind, unit in units.items():
        if kind == "steps" and prefix:
            continue
        note = f" (default {default.amount:g})" if default is not None and default.kind == kind else ""
        group.add_argument(
            f"--{prefix}{kind}", type=int if kind == "steps" else float, help=f"{what} budget: {unit}{note}"
        )
    if not prefix:
        parser.add_argument(
            "--warmup-fraction",
            type=float,
            default=WARMUP_FRACTION,
            help="part of a FLOP or minute budget spent warming up",
        )


# ---- pretraining on a budget ----------------------------------------------------------------------
@dataclass
class Trained:
    """What a budget run spent, and where its encoder is."""

    checkpoint: str
    steps: int
    images_per_step: int  # the batch of all processes and accumulated batches
    flops_per_step: float | None
    train_seconds: float
    budget: dict[str, Any]
    setting: dict[str, Any]  # what was trained: config, overrides, seed, train images (or the official loop's)
    command: list[str] = field(default_factory=list)

    @property
    def images_seen(self) -> int:
        return self.steps * self.images_per_step

    @property
    def petaflops(self) -> float | None:
        return None if self.flops_per_step is None else self.steps * self.flops_per_step / 1e15

    def to_dict(self) -> dict[str, Any]:
        """The record's training part: the fields, images seen, PFLOPs, images/s and the command as one line."""
        per_image = None if self.flops_per_step is None else self.flops_per_step / self.images_per_step
        return {
            **asdict(self),
            "images_seen": self.images_seen,
            "petaflops": self.petaflops,
            "gflop_per_image": None if per_image is None else per_image / 1e9,
            "images_per_s": self.images_seen / self.train_seconds if self.train_seconds else None,
            "command": shlex.join(self.command),
        }

    def write(self, run_dir: Path) -> Trained:
        """Mark the run in ``run_dir`` done: ``trained.json``."""
        (run_dir / "trained.json").write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return self

    @classmethod
    def read(cls, path: Path) -> Trained:
        saved = json.loads(path.read_text())
        saved["command"] = shlex.split(saved["command"])
        return cls(**{k: saved[k] for k in cls.__dataclass_fields__})


class TrainingClock(L.Callback):
    """Seconds of training alone: from the start of training to the end of its last step, summed over resumes
    (kept in checkpoints); neither the start-up nor what runs after training stopped."""

    def __init__(self) -> None:
        self.before = 0.0
        self._start: float | None = None
        self._last: float | None = None

    @property
    def seconds(self) -> float:
        return self.before + (self._last - self._start if self._start is not None else 0.0)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = self._last = time.monotonic()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self._last = time.monotonic()

    def state_dict(self) -> dict[str, float]:
        return {"seconds": self.seconds}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.before = float(state["seconds"])


class Snapshots(L.Callback):
    """The method's weights at every 1/``points`` of the budget (``<folder>/NN.pt``: ``state_dict``, ``step``,
    ``images_seen``, ``seconds``): the learning curve. Progress is the budget callback's (FLOPs or clock),
    or steps over ``trainer.max_steps``."""

    def __init__(self, folder: Path, points: int, clock: TrainingClock) -> None:
        self.folder, self.points, self.clock = folder, points, clock
        self.next = len(list(folder.glob("*.pt"))) + 1  # a resumed run keeps the snapshots it has

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        from sslvit.cli.budgets import Budget

        budget = next((c for c in trainer.callbacks if isinstance(c, Budget)), None)
        step = trainer.global_step
        progress = budget.progress_at(step) if budget is not None else step / trainer.max_steps
        if self.next <= self.points and (progress * self.points >= self.next or trainer.should_stop):
            self.folder.mkdir(parents=True, exist_ok=True)
            state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
            images = step * images_per_step(trainer)
            snapshot = {"state_dict": state, "step": step, "images_seen": images, "seconds": self.clock.seconds}
            torch.save(snapshot, self.folder / f"{self.next:02d}.pt")
            self.next = int(progress * self.points) + 1


def images_per_step(trainer: L.Trainer) -> int:
    return trainer.datamodule.batch_size * trainer.world_size * trainer.accumulate_grad_batches


def file_sha256(path: str | Path) -> str:
    """The content of a file (a config, a recipe) as a key: a result cached under a file's name alone would be
    read back after the file was edited."""
    if not Path(path).is_file():
        raise ConfigError(f"{path}: no such file (a config path is relative to the folder the command runs in)")
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


@contextlib.contextmanager
def unclaimed_on_failure(run_dir: Path, progress: Path) -> Iterator[None]:
    """Around training: if it fails before saving anything (no ``progress`` file), the run is not claimed, so a
    corrected setting may start in its folder; the folder goes too when nothing else is in it."""
    try:
        yield
    except BaseException:
        if not progress.is_file():
            (run_dir / "setting.json").unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                run_dir.rmdir()  # only when empty
        raise


def claim_run(run_dir: Path, setting: dict[str, Any], budget: RunBudget) -> Trained | None:
    """Claim ``run_dir`` for this setting and budget; the run done there, or None when none is.

    A finished run (``trained.json``) is reused only for the setting and budget it was trained with: never
    scored under another's name. A run not finished yet is claimed for this setting (``setting.json``), so a
    stopped run resumes only with the setting it started with (its config's content included), not with an
    edited config whose weights still fit. Another setting is a one-line refusal."""
    wanted = {"setting": setting, "budget": asdict(budget)}

    def refuse(had: dict[str, Any], what: str) -> ConfigError:
        return ConfigError(
            f"{run_dir} was {what} with {json.dumps(had)}, not with this call's {json.dumps(wanted)}: choose "
            "another run directory (or name) or remove that one"
        )

    done, claimed = run_dir / "trained.json", run_dir / "setting.json"
    if done.is_file():
        trained = Trained.read(done)
        if {"setting": trained.setting, "budget": trained.budget} != wanted:
            raise refuse({"setting": trained.setting, "budget": trained.budget}, "trained")
        return trained
    if claimed.is_file():
        if (had := json.loads(claimed.read_text())) != wanted:
            raise refuse(had, "started")
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        claimed.write_text(json.dumps(wanted, indent=2) + "\n")
    return None


def fit(
    config: str,
    run_dir: str | Path,
    budget: RunBudget,
    seed: int = 0,
    overrides: list[str] = (),
    train_images: int | None = None,
    snapshots: int = 0,
    data_root: str | None = None,
) -> Trained:
    """Pretrain ``config`` for ``budget`` in ``run_dir`` (or read the run that is done there; see the module).

    ``data_root``: an ImageFolder root (``--data.dataset imagefolder``); None keeps the config's data.
    ``overrides``: more ``sslvit fit`` settings, after the harness's own.
    """
    from sslvit.cli import FlopBudget, StepFlops, run_cli

    run_dir = Path(run_dir)
    setting = {"config": config, "config_sha256": file_sha256(config), "overrides": list(overrides), "seed": seed}
    setting |= {"train_images": train_images, "data_root": data_root}
    if (done := claim_run(run_dir, setting, budget)) is not None:
        return done
    data = ["--data.dataset", "imagefolder", "--data.root", data_root] if data_root else []
    subset = ["--data.train_subset", str(train_images)] if train_images else []
    command = ["sslvit", "fit", "--config", config, "--seed_everything", str(seed), *data, *subset,
               "--trainer.default_root_dir", str(run_dir), *budget.fit_arguments(), *overrides]  # fmt: skip
    resume = ["--ckpt_path", "last"] if (run_dir / "checkpoints" / "last.ckpt").is_file() else []
    clock, step_flops = TrainingClock(), StepFlops()
    callbacks: list[L.Callback] = [clock, step_flops]
    if snapshots:
        callbacks.append(Snapshots(run_dir / "snapshots", snapshots, clock))
    with unclaimed_on_failure(run_dir, run_dir / "checkpoints" / "last.ckpt"):
        cli = run_cli([*command[1:], *resume], callbacks=callbacks)
    trainer = cli.trainer
    flop_budget = next((c for c in trainer.callbacks if isinstance(c, FlopBudget)), None)
    return Trained(
        checkpoint=str(run_dir / "checkpoints" / "last.ckpt"),
        steps=trainer.global_step,
        images_per_step=images_per_step(trainer),
        flops_per_step=flop_budget.flops_per_step if flop_budget is not None else step_flops.flops_per_step,
        train_seconds=clock.seconds,
        budget=asdict(budget),
        setting=setting,
        command=command,
    ).write(run_dir)


def fit_official(
    mae_repo: str,
    config: str,
    run_dir: str | Path,
    budget: RunBudget,
    seed: int = 0,
    train_images: int | None = None,
    data_root: str | None = None,
    warmup_steps: int | None = None,
) -> Trained:
    """facebookresearch/mae's model and loop (``benchmarks/official_mae.py``, in its own process) on the sizes of
    the MAE ``config``, for ``budget``; the subset of ``train_images`` is drawn with ``seed``, as sslvit's is."""
    run_dir = Path(run_dir)
    checkpoint = run_dir / "mae.pth"
    setting = {"config": config, "config_sha256": file_sha256(REPO / config), "loop": "official", "seed": seed,
               "train_images": train_images, "data_root": data_root, "warmup_steps": warmup_steps}  # fmt: skip
    if (done := claim_run(run_dir, setting, budget)) is not None:
        return done
    subset = ["--train-images", str(train_images)] if train_images else []
    warmup = ["--warmup-steps", str(warmup_steps)] if warmup_steps is not None and budget.kind == "steps" else []
    command = ["python", "benchmarks/official_mae.py", "--mae-repo", mae_repo, "--config", config,
               "--data-root", data_root, *subset, *budget.flags(), *warmup, "--seed", str(seed),
               "--output", str(checkpoint)]  # fmt: skip
    if not checkpoint.is_file():
        with unclaimed_on_failure(run_dir, checkpoint):
            subprocess.run([sys.executable, *command[1:]], check=True, cwd=REPO)
    record = torch.load(checkpoint, map_location="cpu", weights_only=True)["sslvit"]
    return Trained(
        checkpoint=str(checkpoint),
        steps=record["steps"],
        images_per_step=record["batch_size"],
        flops_per_step=record.get("flops_per_step"),
        train_seconds=record["seconds"],
        budget=asdict(budget),
        setting=setting,
        command=command,
    ).write(run_dir)


# ---- frozen evaluation ----------------------------------------------------------------------------
@dataclass(frozen=True)
class EvalSplit:
    """Where the classifiers are fitted (the bank) and scored (the queries).

    ``on="val"``: bank = train, queries = val (optionally class-balanced subsets of ``train_images`` and
    ``val_images``, drawn with ``seed``). ``on="held-out"``: val is never read; of train (or of a
    class-balanced subset of ``train_images`` of it), a class-balanced ``held_out_fraction`` drawn with
    ``seed`` (:func:`sslvit.eval.held_out_split`) is the queries and the rest the bank.
    """

    on: Literal["val", "held-out"] = "val"
    train_images: int | None = None
    val_images: int | None = None
    held_out_fraction: float = 0.1
    seed: int = 0

    @property
    def whole_splits(self) -> bool:
        """The tools' protocol: all of train against all of val."""
        return self.on == "val" and self.train_images is None and self.val_images is None

    def positions(self, datamodule: Any) -> dict[str, tuple[str, list[int] | None]]:
        """``{"bank": (split, positions), "queries": (split, positions)}`` (positions None: the whole split),
        from the labels alone."""
        from sslvit.data import class_balanced_subset
        from sslvit.eval import held_out_split
        from sslvit.eval.features import dataset_targets

        def subset(split: str, size: int | None) -> tuple[list[int], list[int] | None]:
            labels = dataset_targets(datamodule.build_dataset(split, None))
            if size is None or size >= len(labels):
                return labels, None
            return labels, class_balanced_subset(labels, size, seed=self.seed)

        if self.on == "val":  # a whole split needs no labels read here
            return {
                "bank": ("train", None if self.train_images is None else subset("train", self.train_images)[1]),
                "queries": ("val", None if self.val_images is None else subset("val", self.val_images)[1]),
            }
        if self.on != "held-out":
            raise ConfigError(f"EvalSplit.on must be 'val' or 'held-out', got {self.on!r}")
        labels, pool = subset("train", self.train_images)
        pool = pool if pool is not None else list(range(len(labels)))
        fit, held = held_out_split([labels[i] for i in pool], self.held_out_fraction, self.seed)
        return {"bank": ("train", [pool[i] for i in fit]), "queries": ("train", [pool[i] for i in held])}


def evaluate_encoder(
    checkpoint: str | Path,
    data_root: str,
    split: EvalSplit = EvalSplit(),
    seed: int = 0,
    random_init: bool = False,
    features: str = "native",
    linear: bool = True,
    snapshot: str | Path | None = None,
    cache: bool = True,
    device: str = "auto",
) -> dict[str, Any]:
    """kNN (and the linear probe) of one frozen encoder: the checkpoint's, or with ``random_init`` its random twin
    drawn with ``seed`` (which also seeds the probe, as ``--seed`` does in the tools); ``snapshot``: weights of a
    :class:`Snapshots` file loaded into the checkpoint's method first."""
    from sslvit.cli.device_and_features import resolve_device, resolve_features
    from sslvit.cli.tool_inputs import load_encoder
    from sslvit.eval import KNNClassifier, dataset_features, linear_probe
    from sslvit.eval.features import FeatureCache, resolve_precision
    from sslvit.eval.knn import choose_ks
    from sslvit.eval.linear import CACHED_SETTINGS

    torch.manual_seed(seed)  # the random twin's weights, as the tools draw them
    backbone, info = load_encoder(checkpoint, random_init=random_init)
    model, pooling, name = resolve_features(features, checkpoint, backbone, info)
    if snapshot is not None:
        load_snapshot(model, snapshot)
    device_ = resolve_device(device)
    model.to(device_)
    data = info.eval_datamodule("imagefolder", data_root)
    store = FeatureCache() if cache else None
    precision = resolve_precision("auto", device_)
    encoded = {
        role: dataset_features(model, data, part, pooling, None, device_, store, indices, precision=precision)
        for role, (part, indices) in split.positions(data).items()
    }
    bank, queries = encoded["bank"], encoded["queries"]
    ks, k, _ = choose_ks(len(bank))
    knn = KNNClassifier(ks, k, 0.07).fit(bank.features, bank.labels).evaluate(queries.features, queries.labels)
    result: dict[str, Any] = {
        "knn_top1": knn.top1,
        "knn_top5": knn.top5,
        "features": name,
        "num_bank": len(bank),
        "num_queries": len(queries),
    }
    if linear:
        probe = linear_probe(bank, queries, replace(CACHED_SETTINGS, seed=seed), device_)
        result.update(linear_top1=probe.top1, linear_top5=probe.top5, linear_base_lr=probe.lr)
    if split.whole_splits and snapshot is None:  # the tools print the same numbers
        flags = ["--checkpoint", str(checkpoint), "--data-root", data_root, "--seed", str(seed)]
        flags += ["--features", features] if features != "native" else []
        flags += ["--random-init"] if random_init else []
        tools = ("knn_eval", "linear_probe") if linear else ("knn_eval",)
        result["tool_commands"] = [shlex.join(["python", f"tools/{tool}.py", *flags]) for tool in tools]
    return result


def frozen_evaluation(
    checkpoint: str | Path, data_root: str, split: EvalSplit = EvalSplit(), seed: int = 0, **options: Any
) -> dict[str, dict[str, Any]]:
    """``{"trained": ..., "random": ...}``: :func:`evaluate_encoder` of the checkpoint and of its random twin."""
    return {
        "trained": evaluate_encoder(checkpoint, data_root, split, seed, **options),
        "random": evaluate_encoder(checkpoint, data_root, split, seed, random_init=True, **options),
    }


def load_snapshot(model: torch.nn.Module, path: str | Path) -> None:
    """Load a :class:`Snapshots` file (the method's state dict) into the method, or its backbone part into a
    backbone."""
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    if not set(model.state_dict()) <= set(state):
        state = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    model.load_state_dict(state)


# ---- what every record carries --------------------------------------------------------------------
def machine() -> str:
    """The CPU (cores this process may use, model, torch's threads), the GPU and torch's version.

    The threads are part of it: they set the speed of a run that shares the machine (two runs with one
    thread each on 2 cores) and the float rounding of its reductions, so the same seed and steps train to
    the same numbers bit for bit only with the same thread count."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    names = (line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    model = next(names, platform.processor())
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    threads = torch.get_num_threads()
    cpu = f"{len(os.sched_getaffinity(0))} cores of {model} ({threads} torch thread{'s' * (threads != 1)})"
    return f"{cpu}, {gpu}; torch {torch.__version__}"


def today() -> str:
    return datetime.date.today().isoformat()


def stored(path: Path, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The JSON at ``path``, or ``compute()`` written there first: a rerun skips what is done."""
    if not path.is_file():
        result = compute()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
    return json.loads(path.read_text())


def load_tool(name: str) -> ModuleType:
    """``tools/<name>.py`` as a module (the tools are scripts, not a package): run in-process as a user runs it."""
    path = REPO / "tools" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"sslvit_tool_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def short_hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:12]

"""The run directory: metrics that survive resumes, atomic checkpoints, and nothing lost on a failed start.

- ``<run dir>/metrics.csv`` is appended to when a run resumes (Lightning's CSV logger would delete it);
- ``<run dir>/checkpoints/last.ckpt`` is refreshed every N steps by a write-then-rename, so a crash
  never leaves half a checkpoint;
- a resumed run must be the configured run (:func:`check_resume`), and a command that fails before
  training starts leaves the folder byte for byte as it was (:func:`unchanged_unless_started`);
- resuming a run that already reached its length says so and leaves the folder as it was
  (:func:`nothing_trained`), and Ctrl-C says what it left (:func:`left_after_interrupt`);
- a run directory named after the clock is claimed atomically (:func:`claim_run_dir`, :func:`new_run_dir`),
  so two runs started in the same second never share one.
"""

from __future__ import annotations

import csv
import itertools
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from weakref import proxy

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from sslvit.checkpoints.io import safe_load
from sslvit.errors import CheckpointError, ConfigError


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer, but a resumed run appends to ``metrics.csv`` instead of deleting it."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = next(csv.reader(file), [])


class RunCSVLogger(CSVLogger):
    """CSV metrics in the run directory, kept across resumes (rows after the resumed step repeat)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint (per epoch by default) that also refreshes ``last.ckpt`` every N steps.

    Lightning makes per-step and per-epoch saving mutually exclusive; a long run wants both: an
    epoch history and a ``last.ckpt`` that is never more than ``last_every_n_steps`` steps old.
    Files are written atomically (to a temporary file, then renamed), so a crash mid-write
    leaves the previous ``last.ckpt`` intact.

    Args:
        last_every_n_steps: refresh ``last.ckpt`` every this many optimizer steps (None: only
            when Lightning saves a checkpoint anyway).
        **kwargs: Lightning's ``ModelCheckpoint`` arguments.
    """

    def __init__(self, last_every_n_steps: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if last_every_n_steps is not None and last_every_n_steps < 1:
            raise ConfigError(f"checkpoint.last_every_n_steps must be >= 1 or null, got {last_every_n_steps}")
        self.last_every_n_steps = last_every_n_steps

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        # Lightning writes through a temporary file in the system temp folder and moves it into
        # place, which is a plain (interruptible) copy when that folder is on another file system.
        # Writing next to the target and renaming is atomic on any local file system.
        if "://" in str(filepath):
            return super()._save_checkpoint(trainer, filepath)
        partial = f"{filepath}.partial"
        trainer.save_checkpoint(partial, self.save_weights_only)
        if trainer.is_global_zero:
            os.replace(partial, filepath)
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the callback's paths relative to where the run directory is now.

        Lightning stores absolute paths and, when the directory differs (the run was moved or renamed),
        forgets where ``last.ckpt`` is and writes the resumed state to ``last-v1.ckpt``, leaving the
        ``last.ckpt`` that every command evaluates at the old step. Paths inside the old checkpoint
        folder are moved into the current one, so a run directory's files do not depend on where it
        was created.
        """
        old, new = state_dict.get("dirpath"), self.dirpath
        if old and new and old != new:

            def moved(path: Any) -> Any:
                if isinstance(path, str) and (path == old or path.startswith(old.rstrip(os.sep) + os.sep)):
                    return new + path[len(old) :]
                return path

            state_dict = {key: moved(value) for key, value in state_dict.items()}
            state_dict["best_k_models"] = {moved(k): v for k, v in (state_dict.get("best_k_models") or {}).items()}
        super().load_state_dict(state_dict)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any) -> None:
        super().on_train_batch_end(trainer, pl_module, *args, **kwargs)
        n, step = self.last_every_n_steps, trainer.global_step
        if (
            n
            and step % n == 0
            and self._last_global_step_saved != step
            and not self._should_skip_saving_checkpoint(trainer)
        ):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


# ---- a resumed run is the configured run -------------------------------------------------------
def resolve_ckpt_path(ckpt_path: str | None, checkpoint_dir: Path) -> Path | None:
    """The file a ``--ckpt_path`` value names (``last``: the run's ``last.ckpt``), or None when there is none."""
    if ckpt_path is None or ckpt_path in ("best", "hpc", "registry") or "://" in ckpt_path:
        return None
    path = checkpoint_dir / "last.ckpt" if ckpt_path == "last" else Path(ckpt_path)
    if ckpt_path == "last" and not path.is_file():
        return None  # a first run: nothing to resume yet, training starts fresh
    if not path.is_file():
        raise FileNotFoundError(f"--ckpt_path {ckpt_path}: no such checkpoint file")
    return path


def _differences(ours: dict[str, Any], theirs: dict[str, Any]) -> list[str]:
    keys = sorted(set(ours) | set(theirs))
    return [f"{k} {theirs.get(k)} vs {ours.get(k)}" for k in keys if ours.get(k) != theirs.get(k)]


def check_resume(path: Path, model: L.LightningModule, datamodule: Any) -> int:
    """Refuse, before anything is written, a checkpoint of another method, architecture or image size.

    The message names both sides (checkpoint vs config). Settings that do not change what the
    weights are (learning rate, schedule length, logging) may differ: that is how a run is extended.
    Returns the checkpoint's global step.
    """
    ckpt = safe_load(path)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"--ckpt_path {path} is not a Lightning checkpoint of an sslvit run (no 'state_dict')")
    hparams = ckpt.get("hyper_parameters", {})
    fix = (
        "resume with the run's own config (--config <run dir>/config.yaml), or start a new run: a new "
        "--trainer.default_root_dir without --ckpt_path"
    )
    stored = (hparams.get("_class_path") or "").rsplit(".", 1)[-1]  # sslvit.methods.MAE -> MAE
    if stored != type(model).__name__:
        raise CheckpointError(
            f"cannot resume from {path}: it is a {stored or 'foreign (no class path)'} run but the config trains "
            f"{type(model).__name__} (model.class_path); {fix}"
        )
    backbone = _differences(model.hparams.get("backbone", {}), hparams.get("backbone", {}))
    if backbone:
        raise CheckpointError(
            f"cannot resume from {path}: its backbone differs from the config's (checkpoint vs config: "
            f"{'; '.join(backbone)}); {fix}"
        )
    own = model.state_dict()
    shapes = [
        f"{k} {tuple(v.shape) if hasattr(v, 'shape') else None} vs {tuple(own[k].shape) if k in own else None}"
        for k, v in ckpt["state_dict"].items()
        if k not in own or own[k].shape != v.shape
    ] + [f"{k} missing vs {tuple(own[k].shape)}" for k in own if k not in ckpt["state_dict"]]
    if shapes:
        shown = "; ".join(shapes[:5]) + (f"; ... {len(shapes) - 5} more" if len(shapes) > 5 else "")
        raise CheckpointError(
            f"cannot resume from {path}: its weights do not fit the configured {type(model).__name__} "
            f"(checkpoint vs config: {shown}); {fix}"
        )
    size = ckpt.get("datamodule_hyper_parameters", {}).get("image_size")
    if size is not None and datamodule is not None and size != datamodule.image_size:
        raise CheckpointError(
            f"cannot resume from {path}: it trained on {size}px images but data.image_size="
            f"{datamodule.image_size}; {fix}"
        )
    return int(ckpt.get("global_step", 0))


class NothingToTrain(Exception):
    """A resumed run had already reached its length: the message says which limit and how to train longer."""


def nothing_trained(trainer: L.Trainer, resumed_step: int, run_dir: Path) -> None:
    """Raise :class:`NothingToTrain` when ``fit`` resumed at ``resumed_step`` and trained no step because the run
    had already reached ``trainer.max_steps`` or ``trainer.max_epochs`` (Lightning's own tests, in its order).

    Lightning returns from such a fit without a word beyond an info log; a requeued job or a resumed
    fine-tune then looks like training that did nothing. Inside :func:`unchanged_unless_started` the
    exception also puts back the config and logs the no-op rewrote.
    """
    loop = trainer.fit_loop
    if trainer.global_step != resumed_step:
        return
    step, epochs = trainer.global_step, loop.epoch_progress.current.processed
    if loop.max_steps != -1 and step >= loop.max_steps:
        setting, value, where = "max_steps", loop.max_steps, f"step {step}"
    elif loop.max_epochs not in (None, -1) and epochs >= loop.max_epochs:
        setting, value, where = "max_epochs", loop.max_epochs, f"epoch {epochs} done, step {step}"
    else:
        return
    raise NothingToTrain(
        f"nothing to train: the run in {run_dir} already reached trainer.{setting}={value} ({where}), so resuming "
        f"it trained no step and changed nothing; to train longer, resume with a larger --trainer.{setting}"
    )


# ---- a failed start leaves the run directory as it was -----------------------------------------
class StartMarker(Callback):
    """Records that the run really began (a training step or a validation batch done): from then on the
    run directory is the run's, whatever happens. Also records a Ctrl-C that Lightning caught."""

    def __init__(self) -> None:
        self.started = False
        self.interrupted = False

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.interrupted = isinstance(exception, KeyboardInterrupt)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self.started = True

    def on_validation_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if not trainer.sanity_checking:
            self.started = True


def check_writable(run_dir: Path) -> None:
    """A one-line error now, rather than two tracebacks from the loggers later."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=run_dir):
            pass
    except OSError as err:
        raise ConfigError(
            f"trainer.default_root_dir={run_dir} cannot be written ({err.strerror or err}): choose a folder "
            "you can write to"
        ) from None


@contextmanager
def interrupts_raised(marker: StartMarker) -> Iterator[None]:
    """Ctrl-C inside ``Trainer.fit``/``validate`` as a KeyboardInterrupt again.

    Lightning catches it, shuts down (callbacks' ``on_exception``, loggers, DDP workers) and calls
    ``sys.exit(1)``: the run directory would keep what the failed start wrote, and the command would
    end with status 1 and no word. Raised again, the directory is restored as for any failed start
    and :func:`~sslvit.errors.one_line_errors` says what was left, with status 130.
    """
    try:
        yield
    except SystemExit:
        if not marker.interrupted:
            raise
        raise KeyboardInterrupt from None


def left_after_interrupt(trainer: L.Trainer, marker: StartMarker, run_dir: Path) -> str:
    """What a Ctrl-C left in the run directory, for the one line: restored, or where to resume from."""
    if not marker.started:
        return f"nothing was kept: the run directory {run_dir} is as it was before the command"
    if trainer.state.fn != "fit":
        return f"validation stopped before it finished; the checkpoints in {run_dir} are untouched"
    last = Path(trainer.checkpoint_callback.dirpath) / "last.ckpt" if trainer.checkpoint_callback else None
    if last is None or not last.is_file():
        return f"training stopped at step {trainer.global_step} before a checkpoint was saved; start the run again"
    return (
        f"training stopped at step {trainer.global_step}; {last} holds the last saved state (saved every "
        f"checkpoint.last_every_n_steps steps and at each epoch end): continue with `sslvit fit --config "
        f"{run_dir}/config.yaml --ckpt_path last`"
    )


@contextmanager
def unchanged_unless_started(run_dir: Path, marker: StartMarker) -> Iterator[None]:
    """If the command fails before its first step, put ``run_dir`` back byte for byte as it was.

    Files and folders created since are removed (the whole folder if it is new); the run's small text
    files (config, hparams, metrics) get their old bytes back. Checkpoints are never written before
    training starts, so they need no copy.
    """
    existed = run_dir.exists()
    before = set(run_dir.rglob("*")) if existed else set()
    kept = {p: p.read_bytes() for p in before if p.is_file() and p.suffix in (".yaml", ".csv")}
    try:
        yield
    except BaseException:  # SystemExit too: Lightning turns Ctrl-C into sys.exit(1)
        if not marker.started:
            if not existed:
                shutil.rmtree(run_dir, ignore_errors=True)
            else:
                for path in sorted(set(run_dir.rglob("*")) - before, reverse=True):  # children before parents
                    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
                for path, data in kept.items():
                    if not path.is_file() or path.read_bytes() != data:
                        path.write_bytes(data)
        raise


def claim_run_dir(prefix: str) -> Path:
    """Create and return a run directory no other run has: ``<prefix>-<date>-<time>``, else ``…-2``, ``…-3``.

    The exclusive ``mkdir`` is the claim, so runs started in the same second (a sweep, a job array, two
    tests, two ``make quickstart``) never resume or refuse each other's. ``make quickstart`` calls it as
    ``python -c``; Python commands use :func:`new_run_dir`, which also removes the folder again when the
    command fails before writing anything.
    """
    stamp = time.strftime(f"{prefix}-%Y%m%d-%H%M%S")
    for n in itertools.count(1):
        path = Path(stamp if n == 1 else f"{stamp}-{n}")
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
    raise AssertionError("unreachable: itertools.count never ends")


@contextmanager
def new_run_dir(prefix: str) -> Iterator[Path]:
    """:func:`claim_run_dir` for a command: left empty by a command that fails, the folder is removed again."""
    path = claim_run_dir(prefix)
    try:
        yield path
    except BaseException:
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()
        raise

"""The ``sslvit`` command: LightningCLI with ``fit``, ``validate`` and ``test``.

The method is chosen by ``model.class_path`` (any :class:`~sslvit.methods.SSLMethod`); its typed
``__init__`` is the schema. A run directory (``trainer.default_root_dir``) holds everything a run
writes: ``config.yaml``, ``metrics.csv``, TensorBoard events and ``checkpoints/last.ckpt``.
"""

from __future__ import annotations

import csv
import os
import pickle
import sys
from pathlib import Path

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from sslvit.checkpoint import CheckpointError, RunCheckpoint
from sslvit.data import DatasetUnavailableError, SSLDataModule
from sslvit.errors import ConfigError, CorruptImageError
from sslvit.methods.base import NonFiniteLossError, SSLMethod


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


class SSLCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # Always-present checkpointing, configurable under `checkpoint.*`: per epoch, plus last.ckpt
        # refreshed every `checkpoint.last_every_n_steps` steps.
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.save_last": True,
                "checkpoint.save_on_train_epoch_end": True,
                "checkpoint.filename": "epoch{epoch:03d}-step{step:07d}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )

    def run_dir(self) -> Path:
        return Path(self.config[self.subcommand].trainer.default_root_dir)

    def before_instantiate_classes(self) -> None:
        if self.subcommand is None:
            return
        config = self.config[self.subcommand]
        if config.checkpoint.dirpath is None:
            config.checkpoint.dirpath = str(self.run_dir() / "checkpoints")

    def instantiate_trainer(self, **kwargs):
        logger = self._get(self.config_init, "trainer", {}).get("logger")
        if logger in (None, True):  # default: CSV + TensorBoard, both directly in the run directory
            root = str(self.run_dir())
            kwargs["logger"] = [RunCSVLogger(root, name="", version=""), TensorBoardLogger(root, name="", version="")]
        return super().instantiate_trainer(**kwargs)

    def after_instantiate_classes(self) -> None:
        if self.subcommand is None:
            return
        # Settings that only make sense together are checked before any data is touched.
        size = self.datamodule.image_size
        if size != self.model.input_size:
            raise ConfigError(
                f"data.image_size={size} but the model expects {self.model.input_size}px images "
                f"({self.model.input_size_key}): set both to the same value"
            )

    def _load_checkpoints_safely(self) -> None:
        # Resuming goes through torch.load(weights_only=True) unless the user explicitly says otherwise.
        config = self.config_init[self.subcommand]
        if "weights_only" in config and config.weights_only is None:
            config.weights_only = True

    def before_validate(self) -> None:
        self._load_checkpoints_safely()

    def before_test(self) -> None:
        self._load_checkpoints_safely()

    def before_fit(self) -> None:
        self._load_checkpoints_safely()
        ckpt_path = self.config.fit.ckpt_path
        last = Path(self.config.fit.checkpoint.dirpath) / "last.ckpt"
        if ckpt_path is None and last.exists():
            raise FileExistsError(
                f"the run directory {self.run_dir()} already holds {last}; starting afresh would overwrite it. "
                "Resume it with --ckpt_path last, or choose a new --trainer.default_root_dir"
            )


def run_cli(args: list[str] | None = None, run: bool = True, callbacks: list[Callback] = ()) -> SSLCLI:
    """Parse ``args`` (default: the command line), build model, data and trainer, run the subcommand.

    With ``run=False`` there are no subcommands: the classes are only built (used by tools).
    ``callbacks`` are added to the trainer besides the configured ones (used by tools).
    """
    return SSLCLI(
        SSLMethod,
        SSLDataModule,
        subclass_mode_model=True,
        trainer_defaults={"default_root_dir": "runs/default", "callbacks": list(callbacks)},
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


# Errors whose message tells the user what to change: printed as one line, not a traceback.
USER_ERRORS = (
    ConfigError,
    DatasetUnavailableError,
    CorruptImageError,
    CheckpointError,
    FileExistsError,
    NonFiniteLossError,
    pickle.UnpicklingError,  # a checkpoint that would run code when unpickled (weights_only refused it)
)


def main() -> None:
    """Entry point of the ``sslvit`` console script (``SSLVIT_TRACEBACK=1`` shows full tracebacks)."""
    try:
        run_cli()
    except Exception as err:
        # jsonargparse wraps errors raised while instantiating the model; find the user's error in the chain.
        cause: BaseException | None = err
        while cause is not None and not isinstance(cause, USER_ERRORS):
            cause = cause.__cause__ or cause.__context__
        if cause is None or os.environ.get("SSLVIT_TRACEBACK"):
            raise
        if isinstance(cause, pickle.UnpicklingError):
            detail = str(cause).strip().splitlines()[0][:300]
            cause = f"refused to load a checkpoint that holds more than tensors and plain containers ({detail})"
        print(f"sslvit: error: {cause}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()

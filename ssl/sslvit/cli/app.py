"""The ``sslvit`` command: LightningCLI with ``fit`` and ``validate``.

The method is chosen by ``model.class_path`` (any :class:`~sslvit.methods.SSLMethod`); its typed
``__init__`` is the schema. A run directory (``trainer.default_root_dir``) holds everything a run
writes: ``config.yaml``, ``metrics.csv``, TensorBoard events and ``checkpoints/last.ckpt``.
"""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path

from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.trainer.trainer import Trainer

from sslvit.cli.parser import OneLineErrorParser
from sslvit.cli.run_dir import (
    NothingToTrain,
    RunCheckpoint,
    RunCSVLogger,
    StartMarker,
    check_resume,
    check_writable,
    interrupts_raised,
    left_after_interrupt,
    nothing_trained,
    resolve_ckpt_path,
    unchanged_unless_started,
)
from sslvit.data import SSLDataModule
from sslvit.errors import ConfigError, on_interrupt, one_line_errors
from sslvit.methods.base import SSLMethod


def trainer_setting_error(err: MisconfigurationException) -> ConfigError:
    """Lightning's refusal of a Trainer argument as a ``trainer.*`` setting (``max_epochs`` -> ``trainer.max_epochs``).

    Only for what the Trainer's constructor raises: it validates its arguments and runs nothing else,
    so the cause is a setting. The same exception raised later, during training, stays a traceback.
    """
    names = set(inspect.signature(Trainer.__init__).parameters)

    def setting(match: re.Match) -> str:
        name, value = match.group(1), match.group(2)
        if name not in names:
            return match.group(0)
        return f"trainer.{name}" + (f"={value}" if value else "")

    # `max_epochs` and `Trainer(devices=4)`, as Lightning writes them
    text = re.sub(r"`(?:Trainer\()?(\w+)(?:=([^`)]*))?\)?`", setting, str(err)).strip().rstrip(".!")
    named = re.findall(r"trainer\.(\w+)", text)
    where = f"--trainer.{named[0]} (or the config's trainer section)" if named else "the trainer.* settings"
    return ConfigError(f"{text}; change {where}")


class SSLCLI(LightningCLI):
    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        # Only what a self-supervised method defines steps for: `test` and `predict` would need a
        # test_step / predict_step, which no pretraining objective has (evaluation is tools/*).
        return {name: keys for name, keys in LightningCLI.subcommands().items() if name in ("fit", "validate")}

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
        config = self.config if self.subcommand is None else self.config[self.subcommand]  # run=False: no subcommand
        return Path(config.trainer.default_root_dir)

    def _parse_ckpt_path(self) -> None:
        # Lightning would replace the configured model by the checkpoint's hyper-parameters (another
        # method, another architecture, silently). Here the configured run is the run: a checkpoint
        # that does not fit it is refused in one line (check_resume) before anything is written.
        pass

    def before_instantiate_classes(self) -> None:
        if self.subcommand is None:
            return
        config = self.config[self.subcommand]
        if config.checkpoint.dirpath is None:
            config.checkpoint.dirpath = str(self.run_dir() / "checkpoints")
        if self.subcommand != "fit":  # validating a run must not overwrite the config.yaml it was trained with
            self.save_config_callback = None

    def instantiate_trainer(self, **kwargs):
        logger = self._get(self.config_init, "trainer", {}).get("logger")
        root = str(self.run_dir())
        if logger in (None, True):  # default: CSV + TensorBoard, both directly in the run directory
            kwargs["logger"] = [RunCSVLogger(root, name="", version=""), TensorBoardLogger(root, name="", version="")]
        elif logger is not False:  # configured loggers (W&B, MLflow, ...) and metrics.csv, which the tools read
            configured = list(logger) if isinstance(logger, list | tuple) else [logger]
            if not any(isinstance(each, CSVLogger) for each in configured):
                kwargs["logger"] = [RunCSVLogger(root, name="", version=""), *configured]
        try:
            trainer = super().instantiate_trainer(**kwargs)
        except MisconfigurationException as err:  # the constructor only checks its arguments: a trainer.* setting
            raise trainer_setting_error(err) from err
        self.start_marker = StartMarker()
        trainer.callbacks.append(self.start_marker)
        return trainer

    def _run_subcommand(self, subcommand: str) -> None:
        self.resumed_step: int | None = None  # set by _check_start when --ckpt_path names a checkpoint
        run_dir, marker = self.run_dir(), self.start_marker
        try:
            with on_interrupt(lambda: left_after_interrupt(self.trainer, marker, run_dir)):
                with unchanged_unless_started(run_dir, marker), interrupts_raised(marker):
                    super()._run_subcommand(subcommand)
                    if subcommand == "fit" and self.resumed_step is not None:
                        nothing_trained(self.trainer, self.resumed_step, run_dir)  # raises NothingToTrain
        except NothingToTrain as done:  # a finished run resumed again (e.g. a requeued job): said, not an error
            print(f"sslvit: {done}", file=sys.stderr)

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

    def _check_start(self) -> None:
        """Everything that can be checked before a file is written: the checkpoint to resume, the run directory."""
        self._load_checkpoints_safely()
        config = self.config[self.subcommand]
        path = resolve_ckpt_path(config.ckpt_path, Path(config.checkpoint.dirpath))
        if path is not None:
            self.resumed_step = check_resume(path, self.model, self.datamodule)
        check_writable(self.run_dir())

    def before_validate(self) -> None:
        self._check_start()

    def before_fit(self) -> None:
        last = Path(self.config.fit.checkpoint.dirpath) / "last.ckpt"
        if self.config.fit.ckpt_path is None and last.exists():
            raise FileExistsError(
                f"the run directory {self.run_dir()} already holds {last}; starting afresh would overwrite it. "
                "Resume it with --ckpt_path last, or choose a new --trainer.default_root_dir"
            )
        self._check_start()


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
        parser_class=OneLineErrorParser,
        parser_kwargs={"prog": "sslvit"},
        args=args,
        run=run,
    )


def main() -> None:
    """Entry point of the ``sslvit`` console script (``SSLVIT_TRACEBACK=1`` shows full tracebacks)."""
    with one_line_errors("sslvit"):
        run_cli()

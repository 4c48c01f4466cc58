"""The command line: the ``sslvit`` LightningCLI (``fit``, ``validate``), and what the tools share: their flags
(``tool_flags``), checked inputs (``tool_inputs``), low-shot seeds (``low_shot``), device and features
(``device_and_features``) and one evaluation of an encoder (``evaluation``)."""

from sslvit.cli.app import SSLCLI, main, run_cli
from sslvit.cli.budgets import FlopBudget, StepFlops, TimeBudget

__all__ = ["SSLCLI", "FlopBudget", "StepFlops", "TimeBudget", "main", "run_cli"]

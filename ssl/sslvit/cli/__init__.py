"""The command line: the ``sslvit`` LightningCLI (``fit``, ``validate``) and the arguments the tools share."""

from sslvit.cli.app import SSLCLI, main, run_cli
from sslvit.cli.budgets import FlopBudget, TimeBudget

__all__ = ["SSLCLI", "FlopBudget", "TimeBudget", "main", "run_cli"]

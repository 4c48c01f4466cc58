"""The command line: the ``sslvit`` LightningCLI (``fit``, ``validate``) and the arguments the tools share."""

from sslvit.cli.app import SSLCLI, main, run_cli
from sslvit.cli.time_budget import TimeBudget

__all__ = ["SSLCLI", "TimeBudget", "main", "run_cli"]

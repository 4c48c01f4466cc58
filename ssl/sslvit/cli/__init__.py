"""The command line: the ``sslvit`` LightningCLI (``fit``, ``validate``) and the arguments the tools share."""

from sslvit.cli.app import SSLCLI, main, run_cli

__all__ = ["SSLCLI", "main", "run_cli"]

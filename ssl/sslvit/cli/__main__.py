"""``python -m sslvit.cli fit ...`` (as torchrun needs), the same as the ``sslvit`` command."""

from sslvit.cli.app import main

main()

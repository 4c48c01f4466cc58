"""Parser errors as one line: the cause first, with the closest valid name ("did you mean mask_ratio?").

jsonargparse reports a bad setting as the whole usage (~85 lines) followed by a nested dump of the
union types it tried. :func:`summarize` walks that dump down to the innermost cause, keeps the key
path that leads there (``model.init_args.backbone``) and adds suggestions from the names the class
at that point accepts. Both the ``sslvit`` command and the argparse-based tools use it.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib
import inspect
import os
import re
import sys
from pathlib import Path
from typing import Any, NoReturn

from lightning.pytorch.cli import LightningArgumentParser

# Lines of jsonargparse's union dump that describe the search, not the cause.
_STRUCTURE = re.compile(
    r"^(Does not validate against any of the Union subtypes|Subtypes:|Errors:|Given value"
    r"|- Expected a <class 'NoneType'>)"
)
_KEY = re.compile(r'^(?:- )?Parser key "([^"]+)":$')
_CLASS = re.compile(r"^(?:- )?Problem with given class_path '([^']+)':$")


def resolve_class(class_path: str | None) -> type | None:
    module, _, name = (class_path or "").rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def class_arguments(cls: type | None) -> list[str]:
    """The ``__init__`` argument names of a class and, through ``**kwargs``, of its bases (dataclass fields too)."""
    if cls is None:
        return []
    if dataclasses.is_dataclass(cls):
        return [f.name for f in dataclasses.fields(cls)]
    names: list[str] = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names += [p.name for p in params if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return list(dict.fromkeys(names))


def suggest(word: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def summarize(message: str, options: list[str]) -> str:
    """One line from a jsonargparse/argparse error message; ``options`` are the parser's option strings."""
    keys: list[str] = []
    class_path = None
    leaf = None
    for raw in message.splitlines():
        line = raw.strip()
        if not line or _STRUCTURE.match(line):
            continue
        if match := _KEY.match(line):
            keys.append(match.group(1))
        elif match := _CLASS.match(line):
            class_path = match.group(1)
            keys.append("init_args")
        else:
            leaf = line.removeprefix("- ")
            break
    leaf = leaf or message.strip().splitlines()[0]
    if match := re.match(r"Option '([^']+)' is not accepted", leaf):
        cls = resolve_class(class_path)
        if dataclasses.is_dataclass(cls) and keys and keys[-1] == "init_args":
            keys.pop()  # dataclass settings sit directly under their key
        name = ".".join([*keys, match.group(1)])
        return f"{name} is not a setting of {class_path}{suggest(match.group(1), class_arguments(cls))}"
    while keys and keys[-1] == "init_args":
        keys.pop()
    hint = ""
    if match := re.match(r"module '([\w.]+)' has no attribute '(\w+)'", leaf):
        module = importlib.import_module(match.group(1))
        public = [n for n in dir(module) if not n.startswith("_") and inspect.isclass(getattr(module, n))]
        close = difflib.get_close_matches(match.group(2), public, n=1, cutoff=0.6)
        hint = f" (did you mean {match.group(1)}.{close[0]}?)" if close else ""
    elif match := re.match(r"[Uu]nrecognized arguments: (\S+)", leaf):
        hint = suggest(match.group(1).split("=")[0], options)
    elif leaf.startswith("Unexpected config"):
        empty = [a for a in _config_files() if Path(a).is_file() and not Path(a).read_text().strip()]
        if empty:
            leaf = f"the config file {empty[0]} is empty: give a YAML mapping with model/data/trainer sections"
    return (f"{'.'.join(keys)}: " if keys else "") + leaf + hint


def _config_files() -> list[str]:
    argv = sys.argv[1:]
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--config"]


def _report(parser: argparse.ArgumentParser, message: str, prog: str) -> NoReturn:
    options = [s for action in parser._actions for s in action.option_strings]
    help_hint = f"; `{parser.prog.replace(' [options]', '')} --help` lists every option"
    sys.stderr.write(f"{prog}: error: {summarize(message, options)}{help_hint}\n")
    parser.exit(2)


class OneLineErrorParser(LightningArgumentParser):
    """LightningCLI's parser, printing parse errors as one line (``SSLVIT_TRACEBACK=1``: the full report)."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error or os.environ.get("SSLVIT_TRACEBACK"):
            super().error(message, ex)
        _report(getattr(ex, "subcommand_parser", None) or self, message, self.prog.split()[0])


class ReadTrackingArgs(argparse.Namespace):
    """Parsed options that remember which of them the program read: a flag nobody reads is a flag silently
    ignored, and ``tests/e2e/test_tool_flags.py`` runs every tool to check that :meth:`unread` is empty."""

    __slots__ = ("_read",)  # not in __dict__: vars(args) stays the options alone (JSON records are written from it)

    def __init__(self, **kwargs: Any) -> None:
        object.__setattr__(self, "_read", set())
        super().__init__(**kwargs)

    def __getattribute__(self, name: str) -> Any:
        if not name.startswith("_") and name in object.__getattribute__(self, "__dict__"):
            object.__getattribute__(self, "_read").add(name)
        return object.__getattribute__(self, name)

    def unread(self) -> list[str]:
        """The options never read since parsing."""
        return sorted(
            k
            for k in object.__getattribute__(self, "__dict__")
            if not k.startswith("_") and k not in object.__getattribute__(self, "_read")
        )


def positive_int(text: str) -> int:
    """An argparse ``type`` for counts that must be at least 1 (``--epochs``, ``--num-images``): a bad value is
    refused while the command line is parsed, before anything is loaded or written."""
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


class ToolParser(argparse.ArgumentParser):
    """argparse for the scripts in tools/ and benchmarks/: a bad option is one line with a suggestion.

    ``script`` is the script's ``__file__``: its name is the program name in messages, however it runs.
    The parsed options are a :class:`ReadTrackingArgs`.
    """

    def __init__(self, script: str, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(prog=Path(script).name, **kwargs)

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> tuple[Any, list[str]]:
        parsed, extra = super().parse_known_args(args, ReadTrackingArgs() if namespace is None else namespace)
        if isinstance(parsed, ReadTrackingArgs):
            object.__getattribute__(parsed, "_read").clear()  # argparse's own reads (defaults) do not count
        return parsed, extra

    def error(self, message: str) -> NoReturn:
        _report(self, message, self.prog)

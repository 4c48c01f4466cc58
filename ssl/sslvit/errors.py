"""Every error a user can fix, and the one place that turns them into one line instead of a traceback.

Each message names the setting or file, what is wrong with it and how to fix it. The ``sslvit``
command and every tool run their work inside :func:`one_line_errors`: a user error anywhere in the
chain of causes (jsonargparse and Lightning wrap them) is printed as ``<prog>: error: <message>``
and the process exits with status 2. Ctrl-C is one line too, ``<prog>: interrupted (Ctrl-C); <what
it left>``, with exit status 130 (the shell's for SIGINT). ``SSLVIT_TRACEBACK=1`` shows the full
traceback instead.
"""

from __future__ import annotations

import os
import pickle
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class ConfigError(ValueError):
    """An invalid setting: the message names the key, the value and what is allowed."""


class CorruptImageError(OSError):
    """An image file could not be decoded; the message names the file."""


class DatasetUnavailableError(FileNotFoundError):
    """A dataset is neither on disk nor downloadable, or unusable as laid out; the message says where."""


class CheckpointError(ValueError):
    """A checkpoint cannot be used: unsafe, damaged, of another architecture, or with mismatching weights."""


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; raised before the weights are updated with it."""


# What the command line turns into one line.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError,
    CorruptImageError,
    DatasetUnavailableError,
    CheckpointError,
    NonFiniteLossError,
    FileNotFoundError,
    FileExistsError,
    pickle.UnpicklingError,  # a checkpoint that would run code when unpickled (weights_only refused it)
)
# Errors of the operating system about a named path (permissions, a file where a folder should be, a
# full disk): the user's to fix, and the message says which path.
PATH_ERRORS: tuple[type[OSError], ...] = (PermissionError, NotADirectoryError, IsADirectoryError, OSError)


def is_user_error(err: BaseException) -> bool:
    if isinstance(err, USER_ERRORS):
        return True
    return type(err) in PATH_ERRORS and getattr(err, "filename", None) is not None


def find_user_error(err: BaseException) -> BaseException | None:
    """The first user error in ``err``'s chain of causes (jsonargparse and Lightning wrap them), or None."""
    cause: BaseException | None = err
    seen: set[int] = set()
    while cause is not None and id(cause) not in seen:
        if is_user_error(cause):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


def one_line(err: BaseException) -> str:
    """The message of a user error, as printed after ``error:`` (always a single line)."""
    if isinstance(err, pickle.UnpicklingError):
        detail = str(err).strip().splitlines()[0][:300]
        text = f"refused to load a checkpoint that holds more than tensors and plain containers ({detail})"
    elif isinstance(err, OSError) and not isinstance(err, USER_ERRORS) and err.filename is not None:
        text = f"cannot use {err.filename}: {err.strerror or err}"
    else:
        text = str(err)
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


# Said after Ctrl-C when no code on the way out said what the interruption left on disk.
INTERRUPTED = "the command stopped before it finished"


@contextmanager
def on_interrupt(left: str | Callable[[], str]) -> Iterator[None]:
    """Ctrl-C inside adds ``left`` (what the interruption leaves on disk, e.g. ``nothing was written to X``;
    a function is asked when Ctrl-C comes) to the line :func:`one_line_errors` prints. Only code that
    knows it for certain says it; the innermost statement comes first."""
    try:
        yield
    except KeyboardInterrupt as err:
        err.args = (*err.args, left() if callable(left) else left)
        raise


@contextmanager
def one_line_errors(prog: str) -> Iterator[None]:
    """Run a command's work; a user error becomes ``<prog>: error: <message>`` on stderr and exit status 2,
    Ctrl-C ``<prog>: interrupted (Ctrl-C); <what it left>`` and exit status 130."""
    try:
        yield
    except KeyboardInterrupt as err:
        if os.environ.get("SSLVIT_TRACEBACK"):
            raise
        left = "; ".join(str(part) for part in err.args) or INTERRUPTED
        print(f"{prog}: interrupted (Ctrl-C); {left}", file=sys.stderr)
        sys.exit(130)
    except Exception as err:
        cause = find_user_error(err)
        if cause is None or os.environ.get("SSLVIT_TRACEBACK"):
            raise
        print(f"{prog}: error: {one_line(cause)}", file=sys.stderr)
        sys.exit(2)

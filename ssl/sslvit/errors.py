"""Every error a user can fix. The ``sslvit`` command and the tools print them as one line, not a traceback.

Each message names the setting or file, what is wrong with it and how to fix it.
"""

from __future__ import annotations

import pickle


class ConfigError(ValueError):
    """An invalid setting: the message names the key, the value and what is allowed."""


class CorruptImageError(OSError):
    """An image file could not be decoded; the message names the file."""


class DatasetUnavailableError(FileNotFoundError):
    """A dataset is neither on disk nor downloadable; the message says where it was looked for."""


class CheckpointError(ValueError):
    """A checkpoint cannot be used: unsafe, of another architecture, or with mismatching weights."""


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; raised before the weights are updated with it."""


# What the command line turns into one line (``SSLVIT_TRACEBACK=1`` shows the traceback instead).
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


def find_user_error(err: BaseException) -> BaseException | None:
    """The first user error in ``err``'s chain of causes (jsonargparse and Lightning wrap them), or None."""
    cause: BaseException | None = err
    seen: set[int] = set()
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, USER_ERRORS):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


def one_line(err: BaseException) -> str:
    """The message of a user error, as printed after ``error:``."""
    if isinstance(err, pickle.UnpicklingError):
        detail = str(err).strip().splitlines()[0][:300]
        return f"refused to load a checkpoint that holds more than tensors and plain containers ({detail})"
    return str(err)

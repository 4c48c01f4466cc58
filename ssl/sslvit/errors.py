"""Errors a user can fix; the ``sslvit`` command prints them as one line instead of a traceback."""


class ConfigError(ValueError):
    """An invalid setting: the message names the key, the value and what is allowed."""


class CorruptImageError(OSError):
    """An image file could not be decoded; the message names the file."""

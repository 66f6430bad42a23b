"""The one exception type users see: a one-line message that names the problem and the fix.

The CLI catches :class:`SSWPError` and prints ``error: <message>`` without a traceback.
"""

from __future__ import annotations


class SSWPError(Exception):
    """A user-facing error (bad input, bad file, bad configuration); its message is one line."""


class DataError(SSWPError):
    """A dataset folder or file is missing, incomplete or corrupt."""


class ConfigError(SSWPError):
    """Flags or a configuration are invalid or inconsistent."""


class CheckpointError(SSWPError):
    """A checkpoint is missing, corrupt or does not match the run."""


def require(condition: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` (one line naming the problem and the fix) unless ``condition``."""
    if not condition:
        raise ConfigError(message)

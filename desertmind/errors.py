"""Errors that are the user's to fix. The CLI catches :class:`DesertMindError` once and prints
the message instead of a traceback; every subclass's message names the file or value at fault
and what to do about it.
"""

from __future__ import annotations

from collections.abc import Iterable


class DesertMindError(Exception):
    """Base class of every user-facing desertmind error."""


class ConfigError(DesertMindError, ValueError):
    """A configuration value that cannot work; the message lists the valid choices."""


class DatasetError(DesertMindError, ValueError):
    """A problem with the dataset on disk; the message names the file or folder."""


class CheckpointError(DesertMindError, ValueError):
    """A checkpoint is missing, unreadable or does not fit the model; the message says which."""


class WeightsUnavailableError(DesertMindError, RuntimeError):
    """Pretrained weights could not be loaded; the message says what and where to put it."""


class NonFiniteLossError(DesertMindError, RuntimeError):
    """The training loss became NaN or infinite; the run stops before the step is applied."""


class NonFiniteStateError(DesertMindError, RuntimeError):
    """Weights or BatchNorm statistics became NaN or infinite; no checkpoint is written with
    them and the run stops."""


class ReportError(DesertMindError, RuntimeError):
    """A run's logs cannot be summarised; the message names the run."""


def check_choice(what: str, value: object, choices: Iterable[object]) -> None:
    """Refuse ``value`` unless it is one of ``choices``, listing them in the message."""
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(f"unknown {what} {value!r}; choose one of {', '.join(map(str, choices))}")


class FileLockedError(DesertMindError, RuntimeError):
    """Another process holds the folder a run would write into."""


class OutputError(DesertMindError, OSError):
    """An output cannot be written (a read-only folder, a full disk); the message names the
    file and its disk's free space. Also an OSError, so code that handles one still does;
    ``reason`` is the system's own words ("Read-only file system")."""

    reason: str | None = None

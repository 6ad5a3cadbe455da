"""Errors that are the user's to fix: the CLI prints their message instead of a traceback."""


class ConfigError(ValueError):
    """A configuration value that cannot work; the message lists the valid choices."""


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run stops before the step is applied."""

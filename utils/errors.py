"""Errors a user can fix. Each carries one sentence naming the config key, file or line at fault.

``run.py`` prints that sentence and exits with status 1 (no traceback, no results.json).
"""


class UserError(Exception):
    """A mistake in the user's configuration or data, explained in one sentence."""


class ConfigError(UserError, ValueError):
    """An impossible configuration value; the message names the config key."""


class DataError(UserError):
    """Missing, empty or malformed data; the message names the file (and line) or the setting."""


class NonFiniteLossError(UserError, FloatingPointError):
    """A task loss became NaN or infinite; the message names the task and the step."""

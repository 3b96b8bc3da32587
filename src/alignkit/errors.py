"""Errors a user can cause. The CLI prints these as one clear message, without a traceback.

Anything else (a bug) keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input: a file, a field, a config value or a missing model.

    The message names where the problem is (file:line, field) and how to fix it.
    """


class ConfigError(UserError):
    """An impossible or unknown configuration value."""


class DataError(UserError):
    """A malformed data file or record."""


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the last good checkpoint is left untouched."""

"""Errors raised for bad user input: params, raw datasets, indexes, caches, weights, report inputs.

Every one of them is a :class:`UserError` (and keeps a builtin base, ``ValueError`` or
``FileNotFoundError``, for callers that catch those). Its message names the file, row or
parameter at fault and says how to fix it, so `python -m pipeline` prints it as one line and
exits 2 instead of showing a traceback.
"""
from __future__ import annotations


class UserError(Exception):
    """Bad input a user can fix; the message says what and how."""


class DatasetError(UserError, ValueError):
    """A raw dataset, manifest or index on disk is missing, malformed or inconsistent."""


class ConfigError(UserError, ValueError):
    """A config section (a params.yaml section or a library config) has a bad key or value."""


class IntegrityError(UserError, ValueError):
    """A file the pipeline wrote is damaged: empty, truncated, or its bytes fail their checksum."""


class MissingFileError(UserError, FileNotFoundError):
    """A file a stage reads is not there (e.g. one an earlier stage writes, like model.pt)."""


__all__ = ["UserError", "DatasetError", "ConfigError", "IntegrityError", "MissingFileError"]

"""Errors raised for bad user input (raw datasets, indexes, manifests).

Every bad-input error in the data layer is a :class:`DatasetError`. Its message names the file
(and row, frame or column) at fault and says how to fix it, so a pipeline stage can fail loudly
at the boundary before any long work starts.
"""
from __future__ import annotations


class DatasetError(ValueError):
    """A raw dataset, manifest or index on disk is missing, malformed or inconsistent."""


class IntegrityError(ValueError):
    """A file the pipeline wrote is damaged: empty, truncated, or its bytes fail their checksum."""


__all__ = ["DatasetError", "IntegrityError"]

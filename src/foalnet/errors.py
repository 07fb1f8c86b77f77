"""The one exception type that means "what you gave is wrong", importable from every stage.

The command line tells two kinds of failure apart: a problem with the user's arguments, config or
data (exit status 2, the message is all they need) and a bug (exit status 3, a traceback with
``--debug``). foalnet's own checks raise :class:`UsageError`; anything else that escapes a command,
a ``ValueError`` from numpy or torch included, is reported as an internal error.
"""
from __future__ import annotations


class UsageError(ValueError):
    """Bad arguments, config values or input data, named in the message (a ``ValueError``, so
    callers of the Python API that catch ``ValueError`` keep working)."""


class TrainingDiverged(RuntimeError):
    """Too many non-finite losses in a row; the last good checkpoint is kept (exit status 1)."""

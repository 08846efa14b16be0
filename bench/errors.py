"""User-facing errors. Anything a user can get wrong (a missing file, a corrupt npz, an unknown option, a bad
budget) raises a `UserError` subclass with one line naming the file or the value; tasks.py prints it as
`error: ...` and exits with code 2. Internal bugs stay ordinary exceptions and keep their traceback.

The subclasses also derive from the matching builtin, so `except ValueError` / `except FileNotFoundError`
callers keep working."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: reported as one line and exit code 2, never a traceback."""


class OptionError(UserError, ValueError):
    """An unknown or invalid option, preset, sampler key, suite override or budget."""


class MissingInputError(UserError, FileNotFoundError):
    """A file or folder the run needs (data, weights, reference batch) does not exist."""


class CorruptInputError(UserError, ValueError):
    """A file exists but cannot be used (truncated npz, wrong shape/dtype/range, checksum mismatch)."""


class RunLockedError(UserError, RuntimeError):
    """Another live process is writing to the same run directory."""

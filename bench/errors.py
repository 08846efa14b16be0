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


def require_positive(**values: float | int | None) -> None:
    """Budgets, batch sizes and sample counts must be >= 1 (None = not set): one OptionError naming them."""
    bad = [f"{k}={v}" for k, v in values.items() if v is not None and not v >= 1]
    if bad:
        raise OptionError(f"must be >= 1: {', '.join(bad)}")


class MissingInputError(UserError, FileNotFoundError):
    """A file or folder the run needs (data, weights, reference batch) does not exist."""


class CorruptInputError(UserError, ValueError):
    """A file exists but cannot be used (truncated npz, wrong shape/dtype/range, checksum mismatch)."""


class RunLockedError(UserError, RuntimeError):
    """Another live process is writing to the same run directory."""


class DiskFullError(UserError, OSError):
    """The disk filled up while writing; what was written before is intact, the run resumes after space is freed."""

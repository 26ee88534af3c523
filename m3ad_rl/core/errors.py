"""Errors a user can fix, and the exit codes of ``m3ad-rl``.

A ``UserError`` says what is wrong and what to do; ``m3ad-rl`` prints it as one line,
``m3ad-rl: <what> — <what to do>``, and exits with its code (``--debug`` adds the traceback).
``explain`` turns the other errors a user can cause (a missing file, a folder where a file
belongs, a bad config) into the same form; anything else is a bug and keeps its traceback.

| code | meaning |
|---|---|
| 0 | done |
| 1 | an unexpected error, a bug (traceback printed); ``k8s validate``: findings; ``k8s pipeline``: a stage failed |
| 2 | bad usage: options, config, paths (missing, a folder for a file), an output over an input, a port in use |
| 3 | done, but some input records were reported on stderr and skipped |
| 4 | a Ray worker or node was lost: rerun with ``--resume`` once the cluster is whole |
| 5 | bad data: a dataset unfinished, damaged or disagreeing with its manifest, conflicting records, unknown scenes |
| 130 | interrupted (Ctrl-C): nothing half-written was published |
"""

from __future__ import annotations

import errno

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_SKIPPED = 3
EXIT_LOST_WORKER = 4
EXIT_DATA = 5
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """Something the user can fix: ``what`` is wrong, ``todo`` says what to do about it."""

    exit_code = EXIT_USAGE

    def __init__(self, what: str, todo: str = "", *, exit_code: int | None = None):
        super().__init__(what if not todo else f"{what} — {todo}")
        self.what, self.todo = what, todo
        if exit_code is not None:
            self.exit_code = exit_code

    def line(self) -> str:
        """The one line ``m3ad-rl`` prints (new lines in the message become "; ")."""
        text = "; ".join(part.strip() for part in str(self).splitlines() if part.strip())
        return f"m3ad-rl: {text}"


class UsageError(UserError):
    """A bad option, value or path on the command line (exit 2)."""

    exit_code = EXIT_USAGE


class DataError(UserError):
    """Input data that is missing, damaged or inconsistent (exit 5)."""

    exit_code = EXIT_DATA


class LostWorkerError(RuntimeError):
    """A worker or node of the run died mid-run (exit 4): nothing after the last complete checkpoint was
    kept, and ``--resume`` continues once the cluster is whole. Raised from the error the death caused
    (a failed collective on a surviving rank, say), found by asking every worker of the run."""


def explain(e: BaseException) -> UserError | None:
    """``e`` as a ``UserError`` when a user can fix it; None for a bug."""
    from m3ad_rl.core.config import ConfigError

    if isinstance(e, UserError):
        return e
    if isinstance(e, ConfigError):
        return UsageError(f"config error: {e}", e.todo)
    if isinstance(e, UnicodeDecodeError):
        return DataError(f"a file is not UTF-8 text ({e.reason} at byte {e.start})", "save it as UTF-8")
    if type(e).__name__ in ("NoCredentialsError", "PartialCredentialsError", "NoRegionError"):
        return UsageError(f"object storage: {e}", "set credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a "
                          "profile or workload identity) and, for a local S3 API, AWS_ENDPOINT_URL")  # fmt: skip
    if type(e).__name__ in ("OfflineModeIsEnabled", "LocalEntryNotFoundError"):
        return UsageError(f"the model hub is not reachable ({' '.join(str(e).split())[:200]})",
                          "give a local model folder or storage URL, or go online (unset HF_HUB_OFFLINE)")  # fmt: skip
    if isinstance(e, OSError) and e.errno == errno.EROFS:
        return UsageError(f"{_name(e)}: a read-only file system", "write the output somewhere writable")
    if isinstance(e, IsADirectoryError):
        return UsageError(f"{_name(e)} is a folder where a file was expected", "give the path of a file")
    if isinstance(e, NotADirectoryError | FileExistsError):
        return UsageError(f"{_name(e)}: a file is in the way where a folder was expected", "give a folder path")
    if isinstance(e, FileNotFoundError):
        return UsageError(f"{_name(e)}: no such file or folder", "check the path")
    if isinstance(e, PermissionError):
        return UsageError(f"{_name(e)}: permission denied", "check the path and its permissions")
    return None


def _name(e: OSError) -> str:
    """The path an OSError is about, else its message (never "None")."""
    if e.filename is not None:
        return str(e.filename)
    return str(e.args[0]) if len(e.args) == 1 else str(e)

"""Errors that mean "bad input from the user" or "the system refused", and how the CLI words them:
one line that names the input and what to do, never a traceback (unless --debug / VARRL_DEBUG=1)."""

from __future__ import annotations

import errno

from varrl.checkpoint import CheckpointError
from varrl.config import ConfigError
from varrl.data.prompts import PromptFileError
from varrl.data.regions import RegionMixError
from varrl.eval.cvtg import BenchmarkError, EvalError
from varrl.fileio import OutputPathError
from varrl.models.text import PromptError
from varrl.policy.sampler import NonFiniteError, SamplerConfigError
from varrl.policy.var_policy import ClassLabelError
from varrl.rundir import RunDirError

USER_ERRORS: tuple[type[Exception], ...] = (ConfigError, PromptFileError, CheckpointError, PromptError, RunDirError,
                                            SamplerConfigError, FileNotFoundError, BenchmarkError, EvalError,
                                            RegionMixError, ClassLabelError, OutputPathError)

_OS_HINTS = {
    errno.EACCES: "no permission to write there: choose a folder you can write to",
    errno.EPERM: "no permission to write there: choose a folder you can write to",
    errno.EROFS: "the file system is read-only: choose a writable folder",
    errno.ENOSPC: "the disk is full: free some space (or choose another disk) and run again",
    errno.EDQUOT: "the disk quota is used up: free some space and run again",
    errno.EFBIG: "the file is larger than this system allows: free space or raise the file-size limit",
    errno.EISDIR: "it is a folder: give a file name",
    errno.ENOTDIR: "a part of that path is a file, not a folder: choose another path",
    errno.EEXIST: "it exists already: choose another name or remove it",
    errno.ENAMETOOLONG: "the name is too long: choose a shorter one",
}


def os_error_line(err: OSError, doing: str = "") -> str:
    """'cannot write X: Permission denied (no permission to write there: ...)'; `doing` names the
    action ("write checkpoint") when the caller knows it."""
    where = err.filename if err.filename is not None else ""
    if err.filename2 is not None:
        where = f"{where} -> {err.filename2}"
    reason = err.strerror or str(err) or type(err).__name__
    hint = _OS_HINTS.get(err.errno or -1)
    head = f"cannot {doing} " if doing else ""
    return f"{head}{where}{': ' if where else ''}{reason}" + (f" ({hint})" if hint else "")


class RunFailedError(RuntimeError):
    """A run that varrl started as a child process failed; the message names it and its log."""


def describe(err: BaseException) -> tuple[int, str]:
    """(exit code, one-line message) for an exception that reached the command line."""
    if isinstance(err, USER_ERRORS):
        return 2, str(err)
    if isinstance(err, (NonFiniteError, RunFailedError)):  # training diverged, a child run failed: one line
        return 1, str(err)
    if isinstance(err, OSError):  # the system refused: name the path and what to do
        return 1, os_error_line(err)
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return 1, (f"unexpected {type(err).__name__}{': ' + text[:300] if text else ''}. This is an input varrl "
               "does not check yet, or a bug: run again with --debug (or VARRL_DEBUG=1) for the traceback, "
               "and please report it")

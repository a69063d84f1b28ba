"""Errors that reach the user as one clear line (what, where, how to fix)."""

import errno

# A disk (or quota, or file-size limit) that cannot take a write: every output is written under a temporary name
# and renamed when whole, so nothing partial is left for a rerun to trust.
DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class CellResponseError(Exception):
    """Base class: the CLI prints ``error: <message>`` and exits with status 2, no traceback."""


class InputError(CellResponseError):
    """Bad input: a missing file, an unreadable image, a bad config value, a metadata mismatch."""


class WeightsUnavailableError(CellResponseError):
    """Model weights are neither on disk nor downloadable."""


class StageError(CellResponseError):
    """A stage finished with failed images (``--on-error skip``); the failures file lists them."""


class ResourceError(CellResponseError):
    """The machine cannot run these settings (out of GPU memory); the message says which setting to change."""


def disk_full_message(exc: BaseException) -> str | None:
    """The one line for a write the disk could not take (None for any other error)."""
    if not isinstance(exc, OSError) or exc.errno not in DISK_FULL:
        return None
    where = f" writing {exc.filename}" if exc.filename else ""
    return (
        f"the disk is full{where} ({exc.strerror}): the unfinished file was removed and finished work is kept — "
        "free some space and rerun the same command"
    )

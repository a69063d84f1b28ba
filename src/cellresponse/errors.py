"""Errors that reach the user as one clear line (what, where, how to fix)."""


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

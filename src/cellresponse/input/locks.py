"""One writer per folder: a command that writes a run (or prediction) folder holds ``<folder>/.lock`` while it runs.

The lock is the kernel's (``fcntl.flock``): it goes with the process, so a killed command leaves no stale lock to
remove by hand. The file holds who has it (pid, host, command, since when), so a second command is refused with one
line that names the first — and has changed nothing. Held locks are counted per process: ``run`` holds the folder
across its stages, and each stage asking again is let through.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from cellresponse.errors import InputError

LOCK_NAME = ".lock"
_held: dict[Path, int] = {}


def holder_line(command: str | None = None) -> str:
    """Who holds a lock: this process, its host, its command line and the time it took the lock."""
    command = command or " ".join(["cellresponse", *sys.argv[1:]])
    return f"pid {os.getpid()} on {socket.gethostname()}, `{command}`, since {time.strftime('%Y-%m-%d %H:%M:%S')}"


@contextlib.contextmanager
def folder_lock(folder: str | Path, command: str | None = None) -> Iterator[None]:
    """Hold ``folder``'s lock for the block, or raise :class:`InputError` naming the process that holds it."""
    folder = Path(folder).resolve()
    if _held.get(folder):
        _held[folder] += 1
        try:
            yield
        finally:
            _held[folder] -= 1
        return
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / LOCK_NAME, "a+")  # noqa: SIM115 — held open for the block: closing it drops the lock
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise InputError(
            f"{folder} is being written by another command ({holder}); this one stopped before changing anything — "
            "wait for the other to finish, or stop it, then rerun"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(holder_line(command) + "\n")
    handle.flush()
    _held[folder] = 1
    try:
        yield
    finally:
        _held.pop(folder, None)
        handle.seek(0)
        handle.truncate()
        handle.flush()
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()

"""What made an output: the package version, the git commit it runs from (where it was installed from a clone) and
the time — written into every stage's log, ``config.yaml``, ``metrics.json``, the bundle and the reports, so a
number can be traced to the code that produced it."""

from __future__ import annotations

import datetime
import functools
import subprocess
from pathlib import Path
from typing import Any

from cellresponse import __version__


@functools.cache
def source_commit() -> str | None:
    """The short commit of the clone this package runs from, with ``+changes`` when its files differ from it; None
    when it is not a git checkout (an installed wheel) or git is absent."""
    folder = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        )
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no", "--", "."],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return commit.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def made_by() -> dict[str, Any]:
    """``{"cellresponse": version, "commit": short sha or None, "date": ISO time in UTC}``."""
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    return {"cellresponse": __version__, "commit": source_commit(), "date": now.isoformat()}


def made_by_line() -> str:
    """``cellresponse 0.1.0, commit 1a2b3c4, 2026-12-05T07:00:00+00:00`` for a report's footer or a file's header."""
    info = made_by()
    commit = f", commit {info['commit']}" if info["commit"] else ""
    return f"cellresponse {info['cellresponse']}{commit}, {info['date']}"

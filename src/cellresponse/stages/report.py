"""``cellresponse report``: the run's report (:mod:`cellresponse.reporting.run_report`) — one self-contained HTML
page, ``RUN/report/index.html``, plus the PNGs beside it. Works on partial runs: sections without data are left out.
"""

from __future__ import annotations

from typing import Any

from cellresponse.config import Config
from cellresponse.input.runfolder import RunFolder
from cellresponse.reporting.run_report import build_report
from cellresponse.stages import PIPELINE


def run(run: RunFolder, config: Config, *, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """The report of a (possibly partial) run; prints where it is."""
    run.require(run.images, "images")
    path = build_report(run, config, PIPELINE)
    print(f"report: {path}")
    return {"report": str(path)}

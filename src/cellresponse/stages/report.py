"""``cellresponse report``: the run's report (:mod:`cellresponse.reporting.run_report`) — one self-contained HTML
page, ``RUN/report/index.html``, plus the PNGs beside it. Works on partial runs: sections without data are left out.
"""

from __future__ import annotations

from typing import Any

from cellresponse.config import Config
from cellresponse.errors import InputError
from cellresponse.input.runfolder import RunFolder
from cellresponse.reporting.run_report import build_report
from cellresponse.stages import PIPELINE


def run(run: RunFolder, config: Config, *, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """The report of a (possibly partial) run; prints where it is. A prediction's folder is refused: its report is
    ``predict``'s, which this one would overwrite."""
    if run.holds_a_prediction:
        raise InputError(
            f"{run.root} holds a prediction: its report ({run.report / 'index.html'}) is the one predict wrote, "
            "and this command would overwrite it — run report on the training run, or predict again to redraw it"
        )
    run.require(run.images, "images")
    path = build_report(run, config, PIPELINE)
    print(f"report: {path}")
    return {"report": str(path)}

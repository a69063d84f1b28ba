"""The reports' HTML pieces: tables whose numbers line up."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cellresponse.reporting.htmlpage import CSS, html_table


def test_numbers_are_right_aligned_and_text_left_aligned():
    table = html_table(
        ["treatment", "wells", "similarity", "novel", "missing"],
        [["taxol", np.int64(3), 0.91234, True, None], ["DMSO", 12, np.float32("nan"), False, pd.NA]],
    )
    assert '<td>taxol</td><td class="n">3</td><td class="n">0.912</td><td>True</td><td>—</td>' in table
    assert '<td>DMSO</td><td class="n">12</td><td>—</td><td>False</td><td>—</td>' in table
    assert "text-align:left" in CSS and "td.n{text-align:right}" in CSS

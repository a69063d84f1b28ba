"""The prediction report's map of treatment profiles (reporting/treatment_report.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cellresponse.profiling.similarity import cosine_similarity, unit_rows
from cellresponse.reporting.treatment_report import counts_section, map_coordinates

CALIBRATION = {"well": {"accuracy": 0.9, "units": 10, "mean_probability": 0.8}}


def calls(active: list) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "treatment": ["DMSO", "a", "b", "c"],
            "control": [True, False, False, False],
            "active": pd.array(active, dtype="boolean"),
            "novel": [None, False, False, True],
            "moa_call": [None, "m1", "m2", None],
            "Metadata_MoA": [None, "m1", "m1", "m3"],
        }
    )


def test_profiles_that_differ_only_in_length_sit_on_one_point_of_the_map():
    rng = np.random.default_rng(0)
    references = rng.normal(size=(6, 40))
    references[5] = references[0] * 1000.0  # one very strong profile, the same direction as the first
    new = np.vstack([references[2] * 7.0, rng.normal(size=40)])
    reference_xy, new_xy, explained = map_coordinates(references, new)
    assert reference_xy.shape == (6, 2) and new_xy.shape == (2, 2) and explained.shape == (2,)
    np.testing.assert_allclose(reference_xy[5], reference_xy[0], atol=1e-9)  # the strong one does not stretch the axes
    np.testing.assert_allclose(new_xy[0], reference_xy[2], atol=1e-9)  # the cosine's best match is where it is drawn
    assert np.abs(reference_xy).max() <= 1.0 + 1e-9  # unit-length profiles: no axis beyond the unit sphere


def test_unit_rows_keep_a_zero_profile_at_zero_and_give_the_cosine():
    a = np.array([[3.0, 4.0], [0.0, 0.0], [-2.0, 0.0]])
    np.testing.assert_allclose(unit_rows(a), [[0.6, 0.8], [0.0, 0.0], [-1.0, 0.0]])
    np.testing.assert_allclose(cosine_similarity(a), unit_rows(a) @ unit_rows(a).T)


def test_the_counts_say_why_activity_was_not_scored_instead_of_zero_active():
    """A plate without negative controls: the report says why, not "0 active / 0 not active" (which reads as
    "nothing did anything"); and where the images carry their mechanism, how often the calls matched it."""
    note = "no negative controls among these images (looked for X = DMSO, input.control_label)"
    page = "".join(counts_section(calls([None] * 4), CALIBRATION, note, "Metadata_MoA"))
    assert "was not scored: no negative controls" in page and "active (q &lt; FDR)" not in page
    assert "the call matches it for 0.500 of the 2 called treatments" in page
    scored = "".join(counts_section(calls([None, True, False, True]), CALIBRATION, None, None))
    assert '<td>active (q &lt; FDR)</td><td class="n">2</td>' in scored
    assert '<td>not active</td><td class="n">1</td>' in scored
    assert "carry a mechanism" not in scored


def test_the_counts_say_how_often_novel_caught_a_mechanism_the_references_lacked():
    """A treatment not flagged novel is weak evidence that its mechanism is known: the report says how often the
    flag caught a mechanism withheld from the references (references.novelty_check_phrase), and nothing where the
    bundle has no such figure."""
    phrase = "when each of the references' 6 mechanisms was withheld from them in turn, 0.34 of its wells <…>"
    page = "".join(counts_section(calls([None] * 4), CALIBRATION, None, None, phrase))
    assert "<p>Novel: when each of the references&#x27; 6 mechanisms" in page and "&lt;…&gt;" in page
    assert "Novel:" not in "".join(counts_section(calls([None] * 4), CALIBRATION, None, None))

"""The tables and console lines of predictions."""

from __future__ import annotations


def test_the_well_calls_are_summed_up_in_one_line():
    import pandas as pd

    from cellresponse.evaluation.prediction_tables import well_calls_summary

    calls = pd.DataFrame({"predicted_label": list("aaabbc"), "probability": [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]})
    assert (
        well_calls_summary(calls)
        == "6 wells called 3 ways — most often a (3), b (2), c (1); median probability of the call 0.65"
    )
    assert well_calls_summary(calls, shown=1).startswith("6 wells called 3 ways — most often a (3) and 2 more;")
    # how often the same model was right on the bundle's validation side, beside its (often near-1) probability
    checked = well_calls_summary(calls, validation={"accuracy": 0.717, "images": 60})
    assert checked.endswith("(on the bundle's validation side this model called 0.717 of 60 images right)")
    assert well_calls_summary(calls, validation={"accuracy": None, "skipped": "no validation side"}) == (
        well_calls_summary(calls)
    )
    # with the bundle's grouping, the calls read as what the called compounds do (a control has no target)
    calls["predicted_Metadata_MoA"] = ["statin", "statin", "statin", "Eg5", "Eg5", None]
    calls["probability_Metadata_MoA"] = [1.0, 0.9, 0.9, 0.8, 0.7, None]
    grouped = well_calls_summary(calls, validation={"accuracy": 0.717, "images": 60}, group_column="Metadata_MoA")
    assert grouped == checked + "; as Metadata_MoA: statin (3), Eg5 (2), median probability 0.90"

"""What a new plate must share with a bundle, and which of its models predicts (learning/prediction.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from cellresponse.errors import InputError
from cellresponse.learning.prediction import check_compatible, resolve_model


def bundle_with(choice: str | None, kinds: tuple[str, ...]) -> SimpleNamespace:
    """The two things resolve_model reads of a bundle: its recorded choice and its profile models."""
    recorded = {"auto": choice, "scored_on": "the validation side (60 images)"} if choice else None
    return SimpleNamespace(choice=recorded, profile_models={kind: {} for kind in kinds})


def test_auto_is_the_bundles_recorded_choice_and_old_names_still_work(caplog):
    bundle = bundle_with("measured", ("measured", "deep"))
    with caplog.at_level("INFO"):
        assert resolve_model("auto", bundle, "b") == "measured"
    assert "model auto: measured" in caplog.text
    assert resolve_model("cnn", bundle, "b") == "network" and resolve_model("features", bundle, "b") == "measured"
    assert resolve_model("auto", bundle_with(None, ()), "b") == "network"  # a bundle from before model choices


def test_an_unknown_or_missing_model_is_refused_with_what_there_is():
    bundle = bundle_with("measured", ("measured",))
    with pytest.raises(InputError, match="unknown model 'lda'; choose one of: auto, measured, deep, both, network"):
        resolve_model("lda", bundle, "b")
    with pytest.raises(InputError, match="b has no both profile model \\(it has: measured\\); use --model network"):
        resolve_model("both", bundle, "b")


def test_images_must_carry_the_bundles_channels_in_its_order_and_its_crop_settings():
    check_compatible(["DNA", "Actin"], ["DNA", "Actin"], {"size": 64}, {"size": 64})
    with pytest.raises(InputError, match="trained on channels \\['DNA', 'Actin'\\], these images have"):
        check_compatible(["DNA", "Actin"], ["Actin", "DNA"], {"size": 64}, {"size": 64})
    with pytest.raises(InputError, match="crop settings differ"):
        check_compatible(["DNA"], ["DNA"], {"size": 64}, {"size": 96})

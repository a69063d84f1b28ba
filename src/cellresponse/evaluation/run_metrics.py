"""``RUN/metrics.json``, typed: what ``evaluate`` writes and the report and ``predict`` read (one record, so that a
reader names fields instead of guessing at the keys of a ``dict``)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from cellresponse.errors import InputError

LEVEL_FIELDS = ("cell", "image", "well", "plate")


@dataclass
class RunMetrics:
    """The test side's scores of one run. ``cell``, ``image``, ``well`` and ``plate`` are
    :func:`cellresponse.evaluation.classification.classification_metrics` blocks (the voted levels hold one block
    per vote); ``profile_models`` one block per profile kind; the optional fields are absent where the run has no
    such thing."""

    label: str
    classes: int
    headline_vote: str
    cell: dict[str, Any]
    image: dict[str, Any]
    well: dict[str, Any]
    plate: dict[str, Any]
    chance_rate: float
    majority_rate: float
    split: dict[str, Any]
    profile_models: dict[str, dict[str, Any]]
    baseline_features: dict[str, Any]
    baseline_cell_features: dict[str, Any]
    sanity_check: dict[str, Any]
    verdict: str
    embeddings_verdict: str
    seconds: float = 0.0
    label_grouping: dict[str, Any] | None = None  # {"column", "groups"}: each class's mechanism or target
    target_cell_accuracy: float | None = None
    profiles: dict[str, Any] | None = None  # RUN/profiles/metrics.json, where `profile` ran
    auto: dict[str, Any] | None = None  # which model predicts (model_choice.auto_summary)
    wrong_calls: dict[str, Any] | None = None
    made_by: dict[str, Any] | None = None

    def level(self, name: str) -> dict[str, Any]:
        """The block of one level (``cell``, ``image``, ``well`` or ``plate``)."""
        if name not in LEVEL_FIELDS:
            raise ValueError(f"no level {name!r}; levels: {', '.join(LEVEL_FIELDS)}")
        return getattr(self, name)

    def to_json(self) -> dict[str, Any]:
        """The record as ``metrics.json`` holds it (absent optional fields left out)."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunMetrics:
        """The record of a ``metrics.json`` (keys it does not know — a newer writer's — are ignored)."""
        known = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as exc:  # a required field missing: written by an older cellresponse
            raise InputError(
                f"metrics.json lacks fields this version reads ({exc}) — run `cellresponse evaluate RUN` again"
            ) from None

    @classmethod
    def read(cls, path: str | Path) -> RunMetrics | None:
        """``metrics.json`` at ``path``, or None before ``evaluate`` ran."""
        path = Path(path)
        return cls.from_json(json.loads(path.read_text())) if path.exists() else None

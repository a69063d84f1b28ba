"""The README's main command, end to end on a tiny synthetic set."""

from __future__ import annotations

import json


def test_demo_end_to_end_on_a_tiny_synthetic_set(tiny_demo):
    out, stdout = tiny_demo
    report = out / "run" / "report" / "index.html"
    assert str(report) in stdout and report.stat().st_size > 10_000
    metrics = json.loads((out / "run" / "metrics.json").read_text())
    assert metrics["split"]["by"] == "well" and metrics["split"]["leaky_classes"] == 0
    assert {"majority_vote", "soft_vote"} <= set(metrics["image"])
    assert metrics["baseline_features"]["image"]["n"] == metrics["image"]["soft_vote"]["n"] > 0
    for stage in ("images", "segment", "measure", "crops", "train", "evaluate"):
        assert (out / "run" / "logs" / f"{stage}.json").exists(), stage

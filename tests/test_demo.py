"""The README's main command, end to end on a tiny synthetic set."""

from __future__ import annotations

import json

from tests.conftest import run_cli


def test_demo_end_to_end_on_a_tiny_synthetic_set(tiny_plates, tmp_path):
    out = tmp_path / "demo"
    result = run_cli(
        "demo",
        "--data",
        tiny_plates / "load_data.csv",
        "--out",
        out,
        "--epochs",
        "1",
        "--workers",
        "0",
        "--set",
        "crops.store_size=32",
        "--set",
        "crops.size=32",
        "--no-progress",
    )
    report = out / "run" / "report" / "index.html"
    assert str(report) in result.stdout and report.stat().st_size > 10_000
    metrics = json.loads((out / "run" / "metrics.json").read_text())
    assert metrics["split"]["by"] == "well" and metrics["split"]["leaky_classes"] == 0
    assert {"majority_vote", "soft_vote"} <= set(metrics["image"])
    assert metrics["baseline_features"]["image"]["n"] == metrics["image"]["soft_vote"]["n"] > 0
    for stage in ("images", "segment", "measure", "crops", "train", "evaluate"):
        assert (out / "run" / "logs" / f"{stage}.json").exists(), stage

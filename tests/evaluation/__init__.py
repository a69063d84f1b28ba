"""Tests of evaluation/ (metrics, votes, baselines)."""

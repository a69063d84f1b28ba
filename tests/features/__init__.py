"""Tests of features/ (per-cell measurements, CellProfiler's names, crops, embeddings)."""

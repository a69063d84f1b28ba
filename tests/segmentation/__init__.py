"""Tests of segmentation/ (offline backend, Cellpose backend, inputs)."""

"""Tests of learning/ (training and its processes, the cells a network sees, splits, encoders, model choice,
baselines, leakage)."""

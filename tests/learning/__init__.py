"""Tests of learning/ and networks/ (training, splits, model choice, leakage, devices)."""

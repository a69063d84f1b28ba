"""Tests of profiling/ (references, treatment calls, activity, batch correction)."""

"""Evaluation: how right a model's calls are, and the tables its calls are written in.

``votes`` (cells into fields, wells and plates), ``call_tallies`` (what scoring needs of a plate's calls, merged
over a screen's plates), ``classification`` (accuracy, top-k, F1, confusion, chance and majority rates, Wilson
intervals), ``label_groups`` (each label's mechanism or target, and where wrong calls go
against it), ``prediction_tables`` (the cell, image and well calls ``predict`` writes, their console summary and CSV
copies) and ``run_metrics`` (the typed records of ``RUN/metrics.json`` — scores, votes, models, the split, where
wrong calls go, the profile benchmarks — that ``evaluate`` and ``profile`` write and the report reads).

May import: ``input``, ``config``, ``errors``.
"""

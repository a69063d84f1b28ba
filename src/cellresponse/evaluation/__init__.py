"""Evaluation: votes of cells into fields and wells, classification metrics with chance and majority rates,
confusion matrices, label groupings (compound → mechanism) and prediction tables (``metrics``); the typed record of
``RUN/metrics.json`` that ``evaluate`` writes and the report reads (``run_metrics``).

May import: ``input``, ``config``, ``errors``.
"""

"""Evaluation: votes of cells into fields and wells, classification metrics with chance and majority rates,
confusion matrices, label groupings (compound → mechanism) and prediction tables (``metrics``).

May import: ``input``, ``config``, ``errors``.
"""

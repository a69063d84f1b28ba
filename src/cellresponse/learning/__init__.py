"""Learning: grouped splits, label encoder and scaler (``splits``), Lightning training (``training``), the
features-only baselines and verdicts (``baselines``), which model predicts (``model_choice``: every candidate scored
on the validation side) and the model bundle with its inference (``bundle``).

May import: ``networks``, ``evaluation``, ``profiling``, ``features``, ``input``, ``config``, ``errors``.
"""

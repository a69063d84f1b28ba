"""Learning: grouped splits and control down-sampling (``splits``), the label encoder and feature scaler
(``encoders``), the cells each side trains on (``training_cells``), Lightning training (``training``), the
per-image tables profile models learn from (``profile_tables``), the features-only baselines and verdicts
(``baselines``), which model predicts (``model_choice``: every candidate scored on the validation side, the profile
models fitted) and the model bundle with its inference (``bundle``).

May import: ``networks``, ``evaluation``, ``profiling``, ``features``, ``input``, ``config``, ``errors``.
"""

"""Learning: grouped splits and control down-sampling (``splits``), the label encoder and feature scaler
(``encoders``), the cells each side trains on (``training_cells``), Lightning training (``training``), the
per-image tables profile models learn from (``profile_tables``), the features-only baselines and verdicts
(``baselines``), which model predicts (``model_choice``: every candidate scored on the validation side, the profile
models fitted), the model bundle (``bundle``: its folder, saved and loaded, with or without the network), a
bundle on a new plate before the network runs (``prediction``: what the plate must share with the bundle, which
model predicts, what the references need, a profile model's calls on per-image profiles; no torch) and the trained
network on the cells' crops (``inference``).

May import: ``networks``, ``evaluation``, ``profiling``, ``features``, ``input``, ``config``, ``errors``.
"""

"""Learning: grouped splits and control down-sampling (``splits``), the label encoder and feature scaler
(``encoders``), the cells each side trains on (``training_cells``), Lightning training (``training``), the
per-image tables profile models learn from (``profile_tables``), the features-only baselines and verdicts
(``baselines``), which model predicts (``model_choice``: every candidate scored on the validation side, the profile
models fitted), the model bundle (``bundle``: its folder, saved and loaded) and a bundle's models on a new plate
(``inference``: what the plate must share with the bundle, which model predicts, the network on the cells' crops,
a profile model on per-image profiles, what the references need).

May import: ``networks``, ``evaluation``, ``profiling``, ``features``, ``input``, ``config``, ``errors``.
"""

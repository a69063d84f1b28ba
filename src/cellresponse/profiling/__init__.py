"""Profiles of fields, wells and treatments, and what they tell about a compound.

``well_profiles`` (pycytominer aggregate / normalize / feature_select, fields → normalised wells, the ``both``
blocks side by side, confounded-plate detection, CellProfiler's compartment prefixes), ``batch_correction``
(sphering and Harmony, confounded batches left alone), ``profile_models`` (per-field profiles of each kind and the
shrinkage-LDA models on them), ``profile_benchmarks`` (NSC MoA accuracy, copairs mAP in memory-bounded pair
batches, which rows are benchmark queries), ``references`` (the bundle's reference profiles, leave-one-compound-out
calibration, nearest treatments, mechanism calls and novelty), ``mechanism_space`` (the references'
mechanism-discriminant space where ``moa_call`` is made, fitted again without each held-out compound),
``activity`` (phenotypic activity against the negative controls) and ``treatment_calls`` (predict's per-treatment,
per-well and per-field answer for a new plate's profiles).

May import: ``input``, ``config``, ``errors``.
"""

"""Profiles of fields, wells and treatments, and what they tell about a compound.

``well_profiles`` (pycytominer aggregate / normalize / feature_select, fields → normalised wells, the ``both``
blocks side by side, confounded-plate detection, CellProfiler's compartment prefixes), ``batch_correction``
(sphering and Harmony, confounded batches left alone), ``profile_models`` (per-field profiles of each kind and the
shrinkage-LDA models on them), ``similarity`` (the cosine of profiles, copairs' memory-bounded pair batches),
``profile_benchmarks`` (a run's NSC MoA accuracy and copairs mAP, which rows are benchmark queries),
``references`` (the bundle's reference profiles: their normalisation, field / well / treatment tables, image names
and controls, files), ``reference_building`` (references built from a run: normalised, batch-corrected,
calibrated), ``matching`` (a query's nearest references, mechanism call,
probability and novelty), ``calibration`` (leave-one-compound-out on the references: temperature, novelty
threshold, where the call is made), ``mechanism_space`` (the references' mechanism-discriminant space where
``moa_call`` is made, fitted again without each held-out compound), ``queries`` (a new plate normalised and
batch-corrected as the references were),
``activity`` (phenotypic activity against the negative controls) and ``treatment_calls`` (predict's per-treatment,
per-well and per-field answer for a new plate's profiles).

May import: ``input``, ``config``, ``errors``.
"""

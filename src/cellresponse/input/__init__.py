"""Input: plates and images as the rest of cellresponse reads them.

``plate`` (image tables from Phenix folders or load_data.csv, metadata joins, group keys, label checks),
``illumination`` (CellProfiler's illumination functions: read, checked, computed per plate, divided),
``controls`` (negative and positive controls by JUMP's ``pert_type`` / ``control_type`` or the control label),
``channels`` (channel names, recipes such as the median of the first three, the nuclear channel), ``transforms``
(percentile scaling, flow planes, the network's batch preparation), ``io`` (atomic writes, TIFF / Parquet / JSON),
``runfolder`` (every path of a run folder), ``feature_tables`` (a per-image features table a user already has, for
``evaluate --features``) and ``synth`` (synthetic plates for the demo and tests).

May import: ``config``, ``errors``. Nothing here imports torch.
"""

"""Features of single cells.

``cell_features`` (per-cell regionprops, per-channel intensity, texture, radial distribution, colocalisation, and
which columns are features), ``cellprofiler_set`` (CellProfiler's own measurements through cp_measure, under
CellProfiler's names: ``measurement.set: cellprofiler``), ``crops`` (mask/flow and fluorescence crops around each
cell) and ``crop_store`` (the per-image compressed crop store the network trains on).

May import: ``input``, ``config``, ``errors``.
"""

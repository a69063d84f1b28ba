"""Features of single cells.

``cell_features`` (per-cell regionprops, per-channel intensity, texture, radial distribution, colocalisation, and
which columns are features), ``crops`` (mask/flow and fluorescence crops around each cell) and ``crop_store`` (the
per-image compressed crop store the network trains on).

May import: ``input``, ``config``, ``errors``.
"""

"""Segmentation: cells (and nuclei) from the segmentation input.

``offline`` (the backend without weights: nuclei by adaptive threshold and watershed, cells grown from them, flows from
the masks, object F1) and ``cellpose_backend`` (Cellpose with the study's parameters, weights from a folder or its
download).

May import: ``input``, ``config``, ``errors``.
"""

"""Segmentation: cells (and nuclei) from the segmentation input.

``offline`` (the backend without weights: nuclei by adaptive threshold and watershed, cells grown from them, flows from
the masks), ``cellpose_backend`` (Cellpose with the study's parameters, weights from a folder or its download) and
``quality`` (object F1 against a ground truth).

May import: ``input``, ``config``, ``errors``.
"""

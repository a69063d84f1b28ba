"""Networks: the study's multi-input network with EfficientNet-B0/Lite0 trunks and ImageNet weights (``model``), and
the frozen pretrained embedder of cell windows (``embeddings``).

May import: ``input``, ``config``, ``errors``.
"""

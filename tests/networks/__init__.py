"""Tests of networks/ (the study's multi-input network, its EfficientNet trunks and ImageNet weights, the frozen
embedder of cell windows)."""

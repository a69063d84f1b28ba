"""Tests of input/ (plate, channels, illumination, controls, synthetic plates)."""

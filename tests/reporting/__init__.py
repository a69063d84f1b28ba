"""Tests of reporting/ (the HTML page's parts, figures, the run report and the prediction report)."""

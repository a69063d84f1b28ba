"""End-to-end scenarios: the CLI in fresh processes on whole plates (demo, pipeline, bad input, cluster
faults, screens, the report in a browser)."""

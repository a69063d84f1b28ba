"""End-to-end scenarios: the CLI as a user types it on whole plates (demo, pipeline, bad input, cluster faults,
screens, the first hour, the report in a browser)."""

"""The tests' own CLI runner (tests.conftest.run_cli): in the test process, it must report what a shell would see —
an unexpected error as a traceback and status 1, a warning on stderr — and leave the process as it found it."""

from __future__ import annotations

import logging
import sys
import warnings

from tests.conftest import run_cli


def test_an_unexpected_error_is_a_traceback_and_status_1(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr("cellresponse.cli.load_config", broken)
    result = run_cli("config", "show", check=False)
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr and "RuntimeError: boom" in result.stderr


def test_a_warning_is_printed_as_a_console_prints_it(monkeypatch):
    from cellresponse.config import load_config

    def warning_config(*args, **kwargs):
        warnings.warn("a warning a user would see", UserWarning, stacklevel=1)
        return load_config(*args, **kwargs)

    monkeypatch.setattr("cellresponse.cli.load_config", warning_config)
    for _ in range(2):  # a fresh interpreter each time: printed each time, not once per test process
        assert "UserWarning: a warning a user would see" in run_cli("config", "show").stderr


def test_the_process_is_left_as_it_was(tiny_plates, tmp_path):
    root = logging.getLogger()
    handlers, level, argv = list(root.handlers), root.level, list(sys.argv)
    assert run_cli("--version").stdout.startswith("cellresponse ")
    assert (
        run_cli("images", "--load-data", tiny_plates / "load_data.csv", "--out", tmp_path / "run", "-v").returncode == 0
    )
    assert (tmp_path / "run" / "logs" / "cellresponse.log").stat().st_size > 0  # the command logged to its file
    assert (list(root.handlers), root.level, sys.argv) == (handlers, level, argv)
    assert run_cli("--no-such-flag", check=False).returncode == 2

"""Running the `ondevice` command in the test process, and the one-line refusal every mistake must get."""

from __future__ import annotations

from typer.testing import CliRunner

from ondevice.cli import app


def run_cli(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_one_line_error(result, *fragments: str) -> str:
    """Exit 2, one line on stderr beginning `error: ` and holding every fragment, no traceback; returns the line."""
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]

"""The ``foalnet`` entry point: version, fast argument errors, internal errors told apart from usage."""
from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from foalnet import __version__, cli


def test_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"foalnet {__version__}"


def test_building_the_parser_imports_no_heavy_library():
    """Argument errors come before torch & co. are imported (they take seconds to load)."""
    code = ("import sys; from foalnet.cli import build_parser; build_parser(); "
            "print(','.join(m for m in ('torch', 'transformers', 'sklearn', 'av', 'matplotlib', 'accelerate') "
            "if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == ""


def _parser_with(func):
    parser = argparse.ArgumentParser(prog="foalnet")
    parser.add_argument("--debug", action="store_true")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("boom").set_defaults(func=func)
    return parser


def test_an_internal_error_is_one_line_with_status_3_and_a_traceback_with_debug(monkeypatch, capsys):
    def broken(args):
        raise KeyError("fold")

    monkeypatch.setattr(cli, "build_parser", lambda: _parser_with(broken))
    assert cli.main(["boom"]) == cli.INTERNAL_ERROR == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["foalnet boom: internal error: KeyError: 'fold' (run again with --debug for the traceback; "
                   "please report it)"]
    with pytest.raises(KeyError):
        cli.main(["--debug", "boom"])


def test_a_command_status_passes_through(monkeypatch):
    monkeypatch.setattr(cli, "build_parser", lambda: _parser_with(lambda args: 2))
    assert cli.main(["boom"]) == 2

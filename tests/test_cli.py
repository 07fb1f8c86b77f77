"""The ``foalnet`` entry point: version, fast argument errors, internal errors told apart from usage."""
from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from foalnet import __version__, cli
from foalnet.errors import UsageError


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


def test_training_commands_take_device_and_cpu_sets_the_config():
    from foalnet.train.commands import build_config

    parser = cli.build_parser()
    for command in (["train", "D", "--fold", "1", "--out", "R"], ["cv", "D", "--out", "C"], ["ablate", "D", "--out", "A"]):
        args = parser.parse_args(command + ["--device", "cpu", "--preset", "tiny"])
        assert build_config(args).train.cpu is True, command
    args = parser.parse_args(["cv", "D", "--out", "C"])
    assert build_config(args).train.cpu is False  # paper preset default: accelerate's choice
    args = parser.parse_args(["cv", "D", "--out", "C", "--device", "auto"])
    assert build_config(args).train.cpu is False


def test_device_cuda_without_cuda_is_a_usage_error():
    import torch

    from foalnet.train.commands import build_config

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    args = cli.build_parser().parse_args(["cv", "D", "--out", "C", "--device", "cuda"])
    with pytest.raises(ValueError, match="--device cuda: torch sees no CUDA device"):
        build_config(args)


@pytest.mark.parametrize("raised, status", [
    (ValueError("operands could not be broadcast together"), 3),  # from numpy/torch inside: a bug
    (UsageError("--folds 7: this corpus has folds 1..5"), 2),  # foalnet's own check: the user's input
])
def test_a_command_tells_its_own_checks_from_bugs(monkeypatch, capsys, caplog, tmp_path, raised, status):
    import foalnet.train.cv as cv

    def run_cv(*args, **kwargs):
        raise raised

    monkeypatch.setattr(cv, "run_cv", run_cv)
    (tmp_path / "manifest.jsonl").write_text("")  # passes the command's fast DATA_DIR check
    assert cli.main(["cv", str(tmp_path), "--out", str(tmp_path / "C"), "--preset", "tiny"]) == status
    err = capsys.readouterr().err + caplog.text  # the usage error is logged, the bug printed
    assert str(raised) in err
    assert ("internal error: ValueError" in err) == (status == 3)


def test_foalnet_checks_raise_usage_error_which_is_a_value_error(tmp_path):
    from foalnet.config import TrainConfig
    from foalnet.data.manifest import ManifestError, read_manifest

    with pytest.raises(UsageError, match="lr=-1"):
        TrainConfig(lr=-1)
    with pytest.raises(ManifestError) as info:
        read_manifest(tmp_path)
    assert isinstance(info.value, UsageError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize("command", [["cv", "{d}", "--out", "{d}/C"], ["ablate", "{d}", "--out", "{d}/A"],
                                     ["svm", "{d}", "--out", "{d}/S"], ["train", "{d}", "--fold", "1", "--out", "{d}/R"]])
def test_a_data_dir_without_manifest_is_refused_before_torch_is_imported(tmp_path, command):
    """Exit 2 naming the missing manifest, in a fresh interpreter that never imports torch."""
    argv = [part.format(d=tmp_path) for part in command]
    code = ("import sys\nfrom foalnet import cli\nstatus = cli.main(sys.argv[1:])\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\nsys.exit(status)")
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert f"{tmp_path}/manifest.jsonl: no manifest; run `foalnet prepare ...` first" in proc.stderr


def test_every_command_has_a_description_and_every_argument_a_help_text():
    def subcommands(parser: argparse.ArgumentParser, prefix: str = "") -> dict:
        found = {}
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, command in action.choices.items():
                    found[prefix + name] = command
                    found.update(subcommands(command, prefix + name + " "))
        return found

    missing = []
    for name, command in subcommands(cli.build_parser()).items():  # prepare's corpora included
        if not command.description:
            missing.append(f"{name}: no description")
        missing += [f"{name} {a.option_strings or a.dest}" for a in command._actions
                    if not a.help and not isinstance(a, argparse._HelpAction)]
    assert missing == []

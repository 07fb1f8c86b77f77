"""The ``foalnet`` command: a thin dispatcher.

Each stage owns its sub-commands in ``<stage>/commands.py`` with a ``register(subparsers)``
function; every sub-parser sets ``func(args) -> int`` (the exit status). ``main(argv)`` is what
tests call in-process.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Sequence

from foalnet import __version__

INTERNAL_ERROR = 3  # exit status of an unexpected exception (0 ok, 1 some items failed, 2 usage)

# Stage modules that contribute sub-commands, in data-flow order.
COMMAND_MODULES = (
    "foalnet.data.commands",
    "foalnet.features.commands",
    "foalnet.model.commands",
    "foalnet.train.commands",
    "foalnet.infer.commands",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="foalnet",
        description="Foal-Net audio-video emotion recognition: synth, prepare, extract-visual, extract-audio, "
        "train, cv, ablate, demo, predict, import-reference.",
    )
    parser.add_argument("--version", action="version", version=f"foalnet {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an internal error (default: a one-line message)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:  # a stage not built yet must not break the others
            if err.name != module_name:
                raise
            continue
        module.register(subparsers)
    for action in subparsers._choices_actions:  # `foalnet CMD --help` opens with the line of the listing
        command = subparsers.choices[action.dest]
        if command.description is None:
            command.description = action.help
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except Exception as err:  # a bug, not a usage error: commands report bad input themselves
        if args.debug:
            raise
        print(f"foalnet {args.command}: internal error: {type(err).__name__}: {err} "
              "(run again with --debug for the traceback; please report it)", file=sys.stderr)
        return INTERNAL_ERROR


if __name__ == "__main__":
    sys.exit(main())

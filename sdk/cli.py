"""The `pocketomni` command line: one subcommand per job."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pocketomni", description="Qwen2.5-Omni offline through llama.cpp.")
    sub = parser.add_subparsers(dest="command", required=True)
    from pocketomni.chat_cli import add_chat_parser
    from pocketomni.convert.cli import add_convert_parser
    from pocketomni.convert.synth import add_synth_parser
    from pocketomni.demo import add_demo_parser

    add_convert_parser(sub)
    add_synth_parser(sub)
    add_demo_parser(sub)
    add_chat_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from pocketomni.errors import PocketOmniError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except PocketOmniError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

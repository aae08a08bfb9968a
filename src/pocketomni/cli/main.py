"""The `pocketomni` command line: one subcommand per job."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pocketomni", description="Qwen2.5-Omni offline through llama.cpp.")
    sub = parser.add_subparsers(dest="command", required=True)
    from pocketomni.cli.chat import add_chat_parser
    from pocketomni.cli.demo import add_demo_parser
    from pocketomni.cli.doctor import add_doctor_parser
    from pocketomni.cli.serve import add_serve_parser
    from pocketomni.convert.cli import add_convert_parser
    from pocketomni.convert.synth import add_synth_parser

    add_convert_parser(sub)
    add_synth_parser(sub)
    add_demo_parser(sub)
    add_chat_parser(sub)
    add_doctor_parser(sub)
    add_serve_parser(sub)
    bench = sub.add_parser("bench", prefix_chars="+", add_help=False,  # every argument goes to the suite
                           help="benchmark suite (benchmarks/suite.py of a source checkout; `bench --help`)")
    bench.add_argument("args", nargs=argparse.REMAINDER)
    bench.set_defaults(func=_run_bench)
    return parser


def _run_bench(args: argparse.Namespace) -> int:
    """Run benchmarks/suite.py in a child process (it imports torch; this package never does)."""
    import subprocess
    from pathlib import Path

    from pocketomni.errors import FeatureUnavailableError

    suite = Path(__file__).resolve().parents[3] / "benchmarks" / "suite.py"  # <checkout>/src/pocketomni/cli/main.py
    if not suite.is_file():
        raise FeatureUnavailableError(f"`pocketomni bench` runs {suite}, which only a source checkout has")
    return subprocess.call([sys.executable, str(suite), *args.args])


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

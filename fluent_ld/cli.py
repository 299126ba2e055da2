"""The ``fluent-ld`` command: the only place that reads argv and installs signal handlers."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from fluent_ld import __version__
from fluent_ld.config.errors import ConfigErrors
from fluent_ld.plugin import StartError, log_level

__all__ = ["main"]

log = logging.getLogger("fluent_ld")

EXIT_OK = 0
EXIT_FAILED = 1  # a config refused, a plugin that could not start


def _setup_logging(level: str) -> None:
    logging.addLevelName(5, "TRACE")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S%z")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(log_level(level))


def _print_errors(exc: ConfigErrors) -> None:
    for error in exc.errors:
        print(error, file=sys.stderr)
    n = len(exc.errors)
    print(f"config refused: {n} error{'s' if n != 1 else ''}", file=sys.stderr)


def _cmd_check_config(args: argparse.Namespace) -> int:
    from fluent_ld.config.loader import load

    try:
        config = load(args.config)
    except ConfigErrors as exc:
        _print_errors(exc)
        return EXIT_FAILED
    if args.dump:
        sys.stdout.write(config.dump())
    print(f"config OK: {args.config}: {config.summary()}")
    return EXIT_OK


def _cmd_config_docs(args: argparse.Namespace) -> int:
    from fluent_ld.docs import render_reference
    from fluent_ld.registry import catalogue

    text = render_reference(catalogue())
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    from fluent_ld.config.loader import load

    try:
        config = load(args.config)
    except ConfigErrors as exc:
        _setup_logging("info")
        _print_errors(exc)
        return EXIT_FAILED
    _setup_logging(args.log_level or config.system.log_level)
    try:
        asyncio.run(_serve(config))
    except StartError as exc:
        log.error("fluent-ld could not start: %s", exc)
        return EXIT_FAILED
    return EXIT_OK


async def _serve(config) -> None:
    from fluent_ld.node import Node

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal(signum: int) -> None:
        log.info("Received %s: stopping (send it again to stop at once).", signal.Signals(signum).name)
        stop.set()
        for s in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(s)  # a second signal takes the default action

    for s in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(s, on_signal, s)
    await Node(config).run(stop)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fluent-ld",
        description="Feed LaunchDarkly experiments from a Fluent Bit / Fluentd log pipeline.",
    )
    parser.add_argument("--version", action="version", version=f"fluent-ld {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run a node from a config file until SIGINT or SIGTERM")
    run.add_argument("-c", "--config", required=True, metavar="FILE", help="the config file")
    run.add_argument(
        "--log-level",
        choices=("trace", "debug", "info", "warn", "error", "fatal"),
        help="override <system> log_level",
    )
    run.set_defaults(func=_cmd_run)

    check = sub.add_parser("check-config", help="check a config file and every file it includes")
    check.add_argument("-c", "--config", required=True, metavar="FILE", help="the config file")
    check.add_argument(
        "--dump", action="store_true", help="print the config as checked, secrets masked"
    )
    check.set_defaults(func=_cmd_check_config)

    docs = sub.add_parser("config-docs", help="print the reference of every plugin's parameters")
    docs.add_argument("--out", metavar="FILE", help="write to FILE instead of standard output")
    docs.set_defaults(func=_cmd_config_docs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

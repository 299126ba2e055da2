"""The ``fluent-ld`` command: the only place that reads argv and installs signal handlers."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

from fluent_ld import __version__
from fluent_ld.config.errors import ConfigErrors
from fluent_ld.plugin import StartError, log_level

__all__ = ["main"]

log = logging.getLogger("fluent_ld")

EXIT_OK = 0
EXIT_FAILED = 1  # a config refused, a plugin that could not start


class JSONFormatter(logging.Formatter):
    """One JSON object per log line: time, level, logger, message (and the exception, if any)."""

    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        import orjson

        line: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.worker is not None:
            line["worker"] = self.worker
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def _setup_logging(level: str, fmt: str = "text", worker: int | None = None) -> None:
    """``worker``: set in a worker process; its lines say which worker wrote them."""
    logging.addLevelName(5, "TRACE")
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JSONFormatter(worker))
    else:
        who = "" if worker is None else f"[worker {worker}] "
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {who}%(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S%z"))
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
    from fluent_ld.config.docs import render_reference
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
    from fluent_ld.dev.demo import DEFAULT_CONFIG

    try:
        config = load(args.config or DEFAULT_CONFIG)
    except ConfigErrors as exc:
        _setup_logging("info")
        _print_errors(exc)
        if not args.config:
            print(
                "fluent-ld run without -c uses the packaged default config, which needs "
                "LD_ACCESS_TOKEN, LD_PROJECT_KEY and LD_ENVIRONMENT_KEY (and optionally LD_EVENTS_HOST).",
                file=sys.stderr,
            )
        return EXIT_FAILED
    _setup_logging(args.log_level or config.system.log_level, config.system.log_format)
    path = args.config or DEFAULT_CONFIG
    if config.system.workers > 1:
        from fluent_ld.service.supervisor import Supervisor

        process: Supervisor | Runner = Supervisor(path, config, args.log_level)
    else:
        from fluent_ld.service.runner import Runner

        process = Runner(path, config)
    try:
        asyncio.run(_serve(process))
    except StartError as exc:
        log.error("fluent-ld could not start: %s", exc)
        return EXIT_FAILED
    return EXIT_OK


def _cmd_worker(args: argparse.Namespace) -> int:
    """One worker of a multi-worker node, started by the supervisor (not for people)."""
    import socket

    from fluent_ld.config.loader import load
    from fluent_ld.service.runner import Runner

    try:
        config = load(args.config)
    except ConfigErrors as exc:
        _setup_logging("info", worker=args.number)
        _print_errors(exc)
        return EXIT_FAILED
    _setup_logging(args.log_level or config.system.log_level, config.system.log_format, worker=args.number)
    channel = socket.socket(fileno=args.channel)

    def report(status: str) -> None:
        try:
            channel.sendall(status.encode() + b"\n")
        except OSError:
            pass  # the supervisor is gone; the lifeline below stops this worker

    runner = Runner(args.config, config, args.number, report)
    try:
        asyncio.run(_serve(runner, lifeline=channel))
    except StartError as exc:
        log.error("Worker %d could not start: %s", args.number, exc)
        return EXIT_FAILED
    return EXIT_OK


async def _serve(process, lifeline=None) -> None:
    """Run a :class:`~fluent_ld.service.runner.Runner` or :class:`~fluent_ld.service.supervisor.Supervisor` until
    SIGINT or SIGTERM; SIGHUP reloads the config."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reloads: set[asyncio.Task] = set()

    def on_signal(signum: int) -> None:
        log.info("Received %s: stopping (send it again to stop at once).", signal.Signals(signum).name)
        stop.set()
        for s in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(s)  # a second signal takes the default action

    def on_reload() -> None:
        task = loop.create_task(process.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    for s in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(s, on_signal, s)
    loop.add_signal_handler(signal.SIGHUP, on_reload)
    if lifeline is not None:
        # The supervisor never writes here: readable means it is gone (end of file).
        def on_lifeline() -> None:
            loop.remove_reader(lifeline.fileno())
            log.error("The supervisor is gone: stopping this worker.")
            stop.set()

        loop.add_reader(lifeline.fileno(), on_lifeline)
    await process.run(stop)


def _mapping_conf(args: argparse.Namespace):
    """The mapping parameters from ``-c FILE`` (its LaunchDarkly <match>), ``--preset``, or the
    Default preset."""
    from fluent_ld.config.errors import ConfigError, Where
    from fluent_ld.config.loader import read_tree
    from fluent_ld.launchdarkly.mapping_config import mapping_conf, preset_element

    if args.config:
        root = read_tree(args.config)
        matches = []
        for e in root.elements:
            kind, plugin_id = e.param("@type"), e.param("@id")
            if e.name == "match" and kind is not None and kind.text == "launchdarkly":
                if not args.id or (plugin_id is not None and plugin_id.text == args.id):
                    matches.append(e)
        if not matches:
            which = f" with @id {args.id}" if args.id else ""
            raise ConfigErrors([ConfigError(Where(args.config, 0), f"no <match> with @type launchdarkly{which}")])
        return mapping_conf(matches[0], f"<match {matches[0].arg}> @type launchdarkly")
    return mapping_conf(preset_element(args.preset) if args.preset else None, "--preset")


def _cmd_verify(args: argparse.Namespace) -> int:
    """Every LaunchDarkly output of the config (or the one with --id) against LaunchDarkly's REST
    API: 0 every mapped event will count, 1 something will not, 2 cannot tell."""
    import json

    from fluent_ld.config.errors import ConfigError, Where
    from fluent_ld.config.loader import load
    from fluent_ld.dev.demo import DEFAULT_CONFIG
    from fluent_ld.launchdarkly.output import LaunchDarklyOutput
    from fluent_ld.launchdarkly.verification import render

    path = args.config or DEFAULT_CONFIG
    try:
        config = load(path)
        outputs = [pc for pc in config.matches if pc.type_name == "launchdarkly" and (not args.id or pc.id == args.id)]
        if not outputs:
            which = f" with @id {args.id}" if args.id else ""
            raise ConfigErrors([ConfigError(Where(path, 0), f"no <match> with @type launchdarkly{which}")])
    except ConfigErrors as exc:
        _print_errors(exc)
        return EXIT_FAILED

    async def check() -> list:
        return [(pc.id, await LaunchDarklyOutput(pc.conf, pc.id).check_metrics()) for pc in outputs]

    results = asyncio.run(check())
    if args.json:
        print(json.dumps({plugin_id: report.to_json() for plugin_id, report in results}, indent=2))
    else:
        print("\n\n".join(render(plugin_id, report) for plugin_id, report in results))
    return max(report.status for _, report in results)


def _cmd_map(args: argparse.Namespace) -> int:
    import time

    import orjson

    from fluent_ld.launchdarkly.mapping import Rejection
    from fluent_ld.launchdarkly.mapping_config import build_mapper

    try:
        mapper = build_mapper(_mapping_conf(args))
    except ConfigErrors as exc:
        _print_errors(exc)
        return EXIT_FAILED
    counts = {"mapped": 0, "invalid": 0, "unmapped": 0}
    stream = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")
    with stream:
        for number, line in enumerate(stream, 1):
            if not line.strip():
                continue
            result: dict[str, Any] | Rejection
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                result = Rejection("invalid", f"not JSON: {exc}", line)
            else:
                result = mapper.map(record, time.time_ns())
            if isinstance(result, Rejection):
                counts[result.kind] += 1
                print(f"line {number}: rejected ({result.kind}): {result.reason}")
            else:
                counts["mapped"] += 1
                print(orjson.dumps(result).decode())
    total = sum(counts.values())
    print(f"{total} event{'s' if total != 1 else ''}: {counts['mapped']} mapped, {counts['invalid']} invalid, {counts['unmapped']} unmapped")
    return EXIT_OK if counts["invalid"] == counts["unmapped"] == 0 else EXIT_FAILED


def _cmd_schema(args: argparse.Namespace) -> int:
    import json
    import os

    from fluent_ld.launchdarkly.mapping_config import build_preset
    from fluent_ld.launchdarkly.preset.schema import schemas

    try:
        preset = build_preset(_mapping_conf(args))
    except ConfigErrors as exc:
        _print_errors(exc)
        return EXIT_FAILED
    generated = schemas(preset)
    if args.event is not None:
        if args.event not in generated:
            known = ", ".join(n for n in generated if n != "envelope")
            print(f"no event {args.event!r} in the preset; events: {known}", file=sys.stderr)
            return EXIT_FAILED
        generated = {args.event: generated[args.event]}
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        for name, schema in generated.items():
            stem = "envelope" if name == "envelope" else preset.events[name].key
            path = os.path.join(args.out, f"{stem}.schema.json")
            with open(path, "w", encoding="utf-8") as f:
                f.write(json.dumps(schema, indent=2) + "\n")
            print(path)
        return EXIT_OK
    only = next(iter(generated.values())) if args.event is not None else generated
    print(json.dumps(only, indent=2))
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    from fluent_ld.dev.demo import run_demo

    _setup_logging("warn")
    return asyncio.run(run_demo(sys.stdout, serve=args.serve))


def _stores(args: argparse.Namespace):
    """The file stores of the config's durable outputs (or the one with --id): (output's config,
    store path), one per output and worker."""
    from fluent_ld.config.errors import ConfigError, Where
    from fluent_ld.config.loader import load
    from fluent_ld.outputs.durable import DurableOutput
    from fluent_ld.registry import plugin_class
    from fluent_ld.store import worker_files

    config = load(args.config)
    found = []
    for pc in config.matches:
        if not issubclass(plugin_class("output", pc.type_name), DurableOutput) or (args.id and pc.id != args.id):
            continue
        buffer = pc.conf.buffer
        if buffer["@type"] != "file":
            continue
        for worker, path in worker_files(buffer.path, pc.id):
            if args.worker is None or worker == args.worker:
                found.append((pc, path))
    if not found:
        which = f" with @id {args.id}" if args.id else ""
        raise ConfigErrors([ConfigError(Where(args.config, 0), f"no output{which} with a file buffer")])
    return found


async def _with_store(path: str, fn, **options):
    """``fn(store)`` on the store at ``path``, opened with ``options`` (see Store) and closed."""
    from fluent_ld.store import Store

    store = Store(path, **options)
    await store.open()
    try:
        return await fn(store)
    finally:
        await store.close()


def _cmd_buffer(args: argparse.Namespace) -> int:
    import json
    import time

    from fluent_ld.store import StoreError

    try:
        stores = _stores(args)
    except ConfigErrors as exc:
        _print_errors(exc)
        return EXIT_FAILED
    for pc, path in stores:
        try:  # read-only: works beside the running node
            status = asyncio.run(_with_store(path, lambda s: s.status(), readonly=True))
        except StoreError as exc:
            print(exc, file=sys.stderr)
            return EXIT_FAILED
        oldest = status.pop("oldest_event_ms")
        status["oldest_event_age_s"] = round(time.time() - oldest / 1000, 1) if oldest else None
        print(json.dumps({"output": pc.id, "type": pc.type_name, "store": path, **status}))
    return EXIT_OK


def _cmd_dlq(args: argparse.Namespace) -> int:
    import json

    from fluent_ld.store import StoreError, StoreInUseError

    try:
        stores = _stores(args)
    except ConfigErrors as exc:
        _print_errors(exc)
        return EXIT_FAILED
    ids = [int(i) for i in args.ids] if args.ids else None
    if ids is not None and len(stores) > 1:
        print(
            f"dead-letter ids are per store and there are {len(stores)} (one per output and worker): choose one with --id and --worker",
            file=sys.stderr,
        )
        return EXIT_FAILED
    if args.action == "purge" and ids is None and not args.all:
        print("purge needs dead-letter ids or --all", file=sys.stderr)
        return EXIT_FAILED
    for pc, path in stores:
        try:
            if args.action in ("list", "show"):
                if len(stores) > 1 and args.action == "list":
                    print(f"# {pc.id}: {path}")
                # Read-only: works beside the running node.
                letters = asyncio.run(_with_store(path, lambda s: s.dead_letters(args.limit, ids), readonly=True))
                for letter in letters:
                    if args.action == "list":
                        print(f"{letter['id']}\t{letter['kind']}\t{letter['status'] or '-'}\t{letter['reason']}")
                    else:
                        shown = {k: (v.decode("utf-8", "replace") if isinstance(v, bytes) else v) for k, v in letter.items()}
                        print(json.dumps({"output": pc.id, **shown}, indent=2))
            elif args.action == "purge":
                removed = asyncio.run(_with_store(path, lambda s: s.purge_dead_letters(ids)))
                print(f"{pc.id}: purged {removed} dead letter(s)")
            else:
                replayed, kept = _replay(pc, path, ids)
                print(f"{pc.id}: replayed {replayed} dead letter(s); {kept} still rejected and kept")
        except StoreInUseError as exc:
            # The node keeps the store's counters in memory (backpressure reads them): changing
            # the file under it would leave them wrong.
            print(f"{exc}: stop it first, then run dlq {args.action} again (buffer status, dlq list and dlq show work beside it)", file=sys.stderr)
            return EXIT_FAILED
        except StoreError as exc:
            print(exc, file=sys.stderr)
            return EXIT_FAILED
    return EXIT_OK


def _replay(pc, path: str, ids: list[int] | None) -> tuple[int, int]:
    """Replay a store's dead letters the way its output stores events: through the mapping of a
    LaunchDarkly output, as they were for the others (forward). Returns (replayed, kept)."""
    from fluent_ld.launchdarkly.mapping_config import build_mapper
    from fluent_ld.outputs.durable import DurableOutput
    from fluent_ld.registry import plugin_class
    from fluent_ld.replay import replay

    output = plugin_class("output", pc.type_name)
    assert issubclass(output, DurableOutput)  # _stores finds only those
    mapper = build_mapper(pc.conf) if pc.type_name == "launchdarkly" else None
    return asyncio.run(
        _with_store(
            path,
            lambda s: replay(s, ids, mapper, output.keeps_tags),
            separator=output.separator,
            framing=output.framing,
            kind=pc.type_name,
        )
    )


BACKFILL_WARNING = (
    "Note: LaunchDarkly only counts events that arrive while an experiment iteration is running "
    "(and after the context first encountered the experiment); events sent for a past period add "
    "nothing to its results."
)


def _cmd_send(args: argparse.Namespace) -> int:
    import time

    import orjson
    from fluent import sender
    from tqdm import tqdm

    print(BACKFILL_WARNING, file=sys.stderr)
    client = sender.FluentSender(args.tag, host=args.host, port=args.port, nanosecond_precision=True, timeout=10)
    sent = skipped = 0
    interval = 1.0 / args.rate if args.rate else 0.0
    next_at = time.monotonic()
    stream = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")
    try:
        with stream, tqdm(stream, unit=" lines", disable=args.quiet or None, file=sys.stderr) as lines:
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    record = orjson.loads(line)
                except orjson.JSONDecodeError:
                    record = None
                if not isinstance(record, dict):
                    skipped += 1
                    tqdm.write(f"line {number}: not a JSON object, skipped", file=sys.stderr)
                    continue
                if interval:
                    next_at += interval
                    delay = next_at - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                if not client.emit(None, record):
                    print(f"line {number}: could not send to {args.host}:{args.port}: {client.last_error}", file=sys.stderr)
                    return EXIT_FAILED
                sent += 1
    finally:
        client.close()
    print(f"sent {sent} event{'s' if sent != 1 else ''} to {args.host}:{args.port} as {args.tag!r}; {skipped} line(s) skipped", file=sys.stderr)
    return EXIT_OK


def _add_mapping_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", metavar="FILE", help="take the mapping from this config's LaunchDarkly <match>")
    parser.add_argument("--id", metavar="ID", help="with -c: the @id of the <match> to use (default: the first)")
    parser.add_argument("--preset", metavar="NAME|FILE", help="a preset without a config (default: default)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fluent-ld",
        description="Feed LaunchDarkly experiments from a Fluent Bit / Fluentd log pipeline.",
    )
    parser.add_argument("--version", action="version", version=f"fluent-ld {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run a node from a config file until SIGINT or SIGTERM")
    run.add_argument("-c", "--config", metavar="FILE", help="the config file (default: the packaged default config)")
    run.add_argument(
        "--log-level",
        choices=("trace", "debug", "info", "warn", "error", "fatal"),
        help="override <system> log_level",
    )
    run.set_defaults(func=_cmd_run)

    worker = sub.add_parser("worker")  # started by the supervisor of <system> workers N; hidden from --help
    worker.add_argument("-c", "--config", required=True)
    worker.add_argument("--number", type=int, required=True)
    worker.add_argument("--channel", type=int, required=True)
    worker.add_argument("--log-level", choices=("trace", "debug", "info", "warn", "error", "fatal"))
    worker.set_defaults(func=_cmd_worker)

    check = sub.add_parser("check-config", help="check a config file and every file it includes")
    check.add_argument("-c", "--config", required=True, metavar="FILE", help="the config file")
    check.add_argument("--dump", action="store_true", help="print the config as checked, secrets masked")
    check.set_defaults(func=_cmd_check_config)

    docs = sub.add_parser("config-docs", help="print the reference of every plugin's parameters")
    docs.add_argument("--out", metavar="FILE", help="write to FILE instead of standard output")
    docs.set_defaults(func=_cmd_config_docs)

    demo = sub.add_parser("demo", help="run the whole path locally: node, LaunchDarkly-compatible server, sample events")
    demo.add_argument("--serve", action="store_true", help="then keep running, with the Event Debugger on a local port, until Ctrl-C")
    demo.set_defaults(func=_cmd_demo)

    send = sub.add_parser("send", help="send Signal events (JSON lines) to a forward endpoint, for backfills and trials")
    send.add_argument("file", nargs="?", default="-", metavar="FILE|-", help="JSON lines (default: stdin)")
    send.add_argument("--tag", default="signal.send", help="the tag of the records (default: signal.send)")
    send.add_argument("--host", default="127.0.0.1")
    send.add_argument("--port", type=int, default=24224)
    send.add_argument("--rate", type=float, default=0, help="events per second at most (default: as fast as possible)")
    send.add_argument("--quiet", action="store_true", help="no progress bar")
    send.set_defaults(func=_cmd_send)

    buffer = sub.add_parser("buffer", help="the stores of the durable outputs (launchdarkly, forward)")
    buffer.add_argument("action", choices=["status"])
    buffer.add_argument("-c", "--config", required=True, metavar="FILE")
    buffer.add_argument("--id", metavar="ID", help="only the output with this @id")
    buffer.add_argument("--worker", type=int, metavar="N", help="only worker N's store (<system> workers)")
    buffer.set_defaults(func=_cmd_buffer)

    dlq = sub.add_parser(
        "dlq",
        help="dead letters: list, show, replay (launchdarkly: through the current mapping; forward: as stored) or purge; "
        "replay and purge need the node stopped",
    )
    dlq.add_argument("action", choices=["list", "show", "replay", "purge"])
    dlq.add_argument("ids", nargs="*", metavar="ID", help="dead-letter ids (default: all)")
    dlq.add_argument("-c", "--config", required=True, metavar="FILE")
    dlq.add_argument("--id", metavar="ID", help="only the output with this @id")
    dlq.add_argument("--worker", type=int, metavar="N", help="only worker N's store (<system> workers)")
    dlq.add_argument("--limit", type=int, default=1000, help="list/show at most this many")
    dlq.add_argument("--all", action="store_true", help="purge: every dead letter")
    dlq.set_defaults(func=_cmd_dlq)

    verify = sub.add_parser(
        "verify",
        help="check against LaunchDarkly's REST API that every mapped event has a metric (exit 0: all count, 1: some will not, 2: cannot tell)",
    )
    verify.add_argument("-c", "--config", metavar="FILE", help="the config (default: the packaged one, from LD_* variables)")
    verify.add_argument("--id", metavar="ID", help="only the LaunchDarkly output with this @id")
    verify.add_argument("--json", action="store_true", help="the reports as JSON")
    verify.set_defaults(func=_cmd_verify)

    mapper = sub.add_parser("map", help="dry run: map Signal events (JSON lines) and print each result and why")
    mapper.add_argument("file", nargs="?", default="-", metavar="FILE|-", help="JSON lines (default: stdin)")
    _add_mapping_options(mapper)
    mapper.set_defaults(func=_cmd_map)

    schema = sub.add_parser("schema", help="print or write the JSON Schemas generated from the preset")
    schema.add_argument("--event", metavar="NAME", help="only this Signal event's schema (or 'envelope')")
    schema.add_argument("--out", metavar="DIR", help="write one file per schema into DIR")
    _add_mapping_options(schema)
    schema.set_defaults(func=_cmd_schema)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

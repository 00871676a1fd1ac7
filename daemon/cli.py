"""The ``wsroute`` command: run, check, test, schema, plugins, replay, demo; status, tap, top.

Exit codes: 0 clean stop; 78 (EX_CONFIG) bad config or plugin load failure;
1 unexpected crash. status, tap and top (a running daemon's API, in
:mod:`wsroute.observe`) add 69 when the daemon is not running or went away.
Domain errors become one line per problem on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio

from . import __version__
from .config import Config, load
from .credentials import DEFAULT_CREDENTIALS_DIR, use_credentials_dir
from .exceptions import ConfigError, PluginError, WsrouteError
from .registry.listing import describe, format_plugins

__all__ = ["EX_CONFIG", "describe", "format_plugins", "main"]

EX_CONFIG = 78
DEFAULT_CONFIG = "/etc/wsroute/wsroute.toml"


def _ranged(kind: type[int] | type[float], low: float, high: float, what: str) -> Any:
    """An argparse ``type`` that takes a number from ``low`` to ``high`` (``inf`` and
    ``nan`` never): outside, argparse names the option and exits 2."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not low <= value <= high:  # also false for nan
            shown = (f"{low:g}", f"{high:g}") if kind is float else (str(low), str(high))
            raise argparse.ArgumentTypeError(
                f"expected {what} from {shown[0]} to {shown[1]}, got {text!r}"
            )
        return value

    return parse


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wsroute",
        description="A pluggable message-routing daemon for WebSocket upstreams.",
    )
    parser.add_argument("--version", action="version", version=f"wsroute {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def with_config(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "-c", "--config", default=DEFAULT_CONFIG, help=f"config file (default {DEFAULT_CONFIG})"
        )

    with_config(sub.add_parser("run", help="run the daemon"))
    check = sub.add_parser("check", help="validate the config, load plugins, print the routes")
    with_config(check)
    test = sub.add_parser(
        "test",
        help="run config unit tests: frames through the codecs and routes, no network",
        description="Run the [[tests]] of each TESTS file against the config: each frame "
        "is decoded by its connection's codec and looked up in the routes, as the daemon "
        "would; no connection is opened and no handler started. One line per test, what "
        "differs for a failed one, a summary. Exit status: 0 when every test passed, 1 "
        "when any failed, 78 for a bad config or tests file. docs/config.md, "
        '"Testing a config", has the format.',
    )
    with_config(test)
    test.add_argument("tests", nargs="+", metavar="TESTS.toml", help="a tests file")
    for p in (check, test):
        p.add_argument(
            "--credentials-dir",
            metavar="DIR",
            help="where ${credential:NAME} is read outside systemd (default: "
            f"$CREDENTIALS_DIRECTORY, else {DEFAULT_CREDENTIALS_DIR} when it exists)",
        )
    schema = sub.add_parser(
        "schema",
        help="print the config's JSON Schema (for editors), plugin options included",
        description="Print a JSON Schema (draft 2020-12) of the config file, with the "
        "options of every installed plugin: editors that read a #:schema line (Taplo, "
        "Even Better TOML) then complete and check the file as it is typed.",
    )
    schema.add_argument(
        "--builtins-only",
        action="store_true",
        help="only the built-in plugins (the schema shipped as config/wsroute.schema.json)",
    )
    schema.add_argument("-c", "--config", help="also include this config's plugin_paths plugins")
    plugins = sub.add_parser(
        "plugins", help="list handler, codec and source plugins with their options"
    )
    plugins.add_argument("--json", action="store_true", help="machine-readable output")
    plugins.add_argument("-c", "--config", help="also search this config's plugin_paths")
    replay = sub.add_parser(
        "replay",
        help="route dead-lettered (or captured) jsonl records again",
        description="Route dead-lettered (or captured) jsonl records again. Exit status: "
        "0 when every record was handled, 1 when any was not (dead-lettered again, "
        "failed, or a malformed line), 66 when the file cannot be read (or the --failed "
        "file cannot be opened), 78 for a bad config.",
    )
    with_config(replay)
    replay.add_argument("file", help="a jsonl file written by the jsonl handler")
    replay.add_argument(
        "--through-routes",
        action="store_true",
        help="route every record through the routes, even one a single handler dead-lettered",
    )
    replay.add_argument(
        "--failed",
        metavar="OUT",
        help="append the records that fail again to OUT (jsonl records, as read) "
        "instead of passing them to a dead-letter handler",
    )
    demo = sub.add_parser("demo", help="an embedded upstream plus the daemon on the demo config")
    demo.add_argument(
        "--duration",
        type=_ranged(float, 0, 86400, "seconds"),
        default=0.0,
        help="stop after N seconds (0: run until Ctrl-C; at most a day)",
    )
    demo.add_argument("-c", "--config", default=None, help="demo config (default: built in)")
    _observe_verbs(sub)
    return parser


def _observe_verbs(sub: Any) -> None:
    """status, tap, top: a running daemon seen through its [daemon.api]."""
    guide = "docs/observability.md has the /status and /tap formats."
    exits = (
        "Exit status: 69 when the daemon is not running (or went away), 77 when it "
        "refuses (/status and /tap over TCP without tap_over_tcp), 78 when the config "
        "has no [daemon.api] listen."
    )

    def with_api(p: argparse.ArgumentParser) -> None:
        where = p.add_mutually_exclusive_group()
        where.add_argument(
            "-c",
            "--config",
            default=None,
            help=f"find the API in this config's [daemon.api] listen, preferring its Unix "
            f"socket (default {DEFAULT_CONFIG})",
        )
        where.add_argument(
            "--api", metavar="ADDR", help="the API's address: unix:/path or host:port"
        )

    status = sub.add_parser(
        "status",
        help="a running daemon's connections and handlers, problems highlighted",
        description=f"One line per connection and per handler from GET /status. {exits} {guide}",
    )
    with_api(status)
    status.add_argument("--json", action="store_true", help="print /status as received")
    tap = sub.add_parser(
        "tap",
        help="live decoded messages, one JSON record a line",
        description="Print the records of /tap, one JSON document a line (for jq); filters "
        "may be repeated, any value matches. Ends after --limit records or Ctrl-C (exit 0), "
        f"or when the daemon goes away (exit 69). {exits} {guide}",
    )
    with_api(tap)
    for name, what in (
        ("connection", "only messages from connection C"),
        ("key", "only messages with route key K (compared as text)"),
        ("handler", "only messages routed to handler H"),
        ("route", "only messages that route R matched"),
    ):
        tap.add_argument(
            f"--{name}", action="append", metavar=name[0].upper(), help=f"{what}; repeatable"
        )
    tap.add_argument(
        "--limit",
        type=_ranged(int, 1, 2**63 - 1, "a number of records"),
        metavar="N",
        help="stop after N records",
    )
    top = sub.add_parser(
        "top",
        help="a live view of connections and handlers with rates",
        description=f"A live view refreshed from /status; q or Ctrl-C leaves. {exits} {guide}",
    )
    with_api(top)
    top.add_argument(
        "--interval",
        type=_ranged(float, 0.1, 3600, "seconds"),
        default=1.0,
        metavar="S",
        help="seconds between reads, 0.1 to 3600 (1)",
    )


def _fail(error: WsrouteError, path: str | None = None) -> int:
    from .logging import mask_secrets  # a plugin's error may quote a secret option

    where = f"{path}: " if path else ""
    if isinstance(error, ConfigError):
        for issue in error.issues:
            print(mask_secrets(f"wsroute: {where}{issue}"), file=sys.stderr)
    else:
        print(mask_secrets(f"wsroute: {where}{error}"), file=sys.stderr)
    return EX_CONFIG


def _leaves(group: BaseExceptionGroup[Any]) -> list[WsrouteError]:
    """The domain errors inside a (possibly nested) exception group."""
    found: list[WsrouteError] = []
    for error in group.exceptions:
        if isinstance(error, BaseExceptionGroup):
            found.extend(_leaves(error))
        elif isinstance(error, WsrouteError):
            found.append(error)
    return found


def _load(path: str) -> Config:
    if not Path(path).exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        return load(path)
    except ConfigError as error:
        raise _with_plugin_issues(error, path) from None


def _with_plugin_issues(error: ConfigError, path: str) -> ConfigError:
    """Every problem at once across phases: the plugin phase's errors in the tables
    that passed the loader (a type error in one handler hides no other's options)."""
    from .config import load_partial
    from .logging import configure
    from .plan import plugin_issues

    try:
        partial, _ = load_partial(path)
        if partial is None:
            return error
        configure("warning", "console")  # the process ends here: no plugin_loaded lines
        extra = plugin_issues(partial)
    except WsrouteError:  # plugin_paths refused, say: the loader's errors are enough
        return error
    known = {(issue.path, issue.message) for issue in error.issues}
    issues = [*error.issues, *(i for i in extra if (i.path, i.message) not in known)]
    issues.sort(key=lambda issue: math.inf if issue.line is None else issue.line)
    return ConfigError(issues, source=error.source)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command in ("run", "check"):
        from .requirements import check

        if check():  # a dependency missing or at a version wsroute does not run on
            return EX_CONFIG
    try:
        if args.command == "run":
            return _run(args.config)
        if args.command in ("check", "test"):
            use_credentials_dir(args.credentials_dir)
        if args.command == "check":
            return _check(args.config)
        if args.command == "plugins":
            return _plugins(args.config, as_json=args.json)
        if args.command == "test":
            return _test(args.config, args.tests)
        if args.command == "schema":
            return _schema(args.config, builtins_only=args.builtins_only)
        if args.command == "replay":
            from .replay import replay

            return replay(
                _load(args.config),
                args.file,
                through_routes=args.through_routes,
                failed_path=args.failed,
            )
        if args.command == "demo":
            from .demo import run_demo

            return run_demo(duration=args.duration, config_path=args.config)
        if args.command in ("status", "tap", "top"):
            from .observe import run as observe

            return observe(args, DEFAULT_CONFIG)
    except (ConfigError, PluginError) as exc:
        return _fail(exc, getattr(args, "config", None))
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        # Whoever read the output stopped (`wsroute schema | head`): no traceback, and
        # no second error when Python flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    raise AssertionError(args.command)  # pragma: no cover


def _run(path: str) -> int:
    import structlog

    from .logging import configure
    from .notify import Notifier
    from .service import Plan, Service, plan

    # Taken out of the environment before plugins are imported, so neither they
    # nor any process they start inherit it.
    notifier = Notifier.from_environ(unset=True)
    config = _load(path)
    configure(config.daemon.log_level, config.daemon.log_format)
    the_plan = plan(config)

    def load_plan() -> Plan:  # on each reload
        return plan(load(path))

    # The service runs the preflight `check` runs (TLS files, plugins' check hooks)
    # before it starts anything (an error: exit 78) and before each reload.
    service = Service(the_plan, reload=load_plan, notifier=notifier)
    try:
        uvloop = config.daemon.event_loop == "uvloop"
        anyio.run(service.run, backend="asyncio", backend_options={"use_uvloop": uvloop})
    except KeyboardInterrupt:
        pass
    except (ConfigError, PluginError) as exc:  # raised before any task group
        return _fail(exc)
    except BaseExceptionGroup as group:
        # A handler that cannot start is a config problem (exit 78), not a crash.
        domain, rest = group.split((ConfigError, PluginError))
        if domain is not None and rest is None:
            for error in _leaves(domain):
                _fail(error)
            return EX_CONFIG
        structlog.get_logger("wsroute").exception("crashed")
        return 1
    except Exception:
        structlog.get_logger("wsroute").exception("crashed")
        return 1
    return 0


def _check(path: str) -> int:
    from .logging import configure, mask_secrets
    from .plan import plan
    from .preflight import checked

    config = _load(path)
    configure("warning", "console")
    the_plan = plan(config)
    checked(the_plan)  # TLS files, output folders, plugins' check hooks
    from .api.check import listen_issues

    listen = listen_issues(config.daemon.api)  # what `run` would refuse: check = run
    if listen:
        raise ConfigError(listen, source=path)
    for warning in config.warnings:
        print(mask_secrets(f"warning: {warning}"))
    print(f"{path}: OK")
    print(f"connections: {', '.join(config.connections) or '(none)'}")
    print(
        "handlers: "
        + (", ".join(f"{n} ({h.section.plugin})" for n, h in the_plan.handlers.items()) or "(none)")
    )
    print("routes:")
    for name, route in config.routes.items():
        keys = "any key" if route.keys is None else ", ".join(json.dumps(k) for k in route.keys)
        conn = route.connection or "any connection"
        print(f"  {name}: {conn} / {keys} -> {', '.join(route.handlers)}")
    if config.daemon.unmatched:
        print(f"  (unmatched) -> {config.daemon.unmatched}")
    if config.daemon.dead_letter:
        print(f"  (dead letters) -> {config.daemon.dead_letter}")
    return 0


def _test(path: str, tests: Sequence[str]) -> int:
    from .configtest import run_tests
    from .logging import configure
    from .plan import plan

    config = _load(path)
    configure("warning", "console")
    the_plan = plan(config)
    try:
        return run_tests(the_plan, tests, sys.stdout)
    except ConfigError as exc:  # a bad tests file: named instead of the config
        return _fail(exc, exc.source)


def _schema(path: str | None, *, builtins_only: bool) -> int:
    from .config.json_schema import config_schema
    from .registry import Registry

    paths = _load(path).daemon.plugin_paths if path else []
    infos = Registry.discover(paths).all()
    if builtins_only:
        infos = [info for info in infos if info.origin == "built-in"]
    print(json.dumps(config_schema(infos), indent=2, ensure_ascii=False))
    return 0


def _plugins(path: str | None, *, as_json: bool) -> int:
    from .registry import Registry

    paths = _load(path).daemon.plugin_paths if path else []
    infos = Registry.discover(paths).all()
    if as_json:
        print(json.dumps(describe(infos), indent=2))
    else:
        print(format_plugins(infos))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

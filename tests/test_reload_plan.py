"""The reload plan, config A → config B, with no daemon running: what is kept,
restarted, added and removed (the daemon applies it: tests/test_reload.py)."""

from __future__ import annotations

from wsroute.config import loads
from wsroute.reload_plan import Changes, reload_plan

A = """
[connections.a]
url = "ws://127.0.0.1:9/a"
codec = "exchange"

[connections.b]
url = "ws://127.0.0.1:9/b"

[codecs.exchange]
type = "struct"
header = "<i"
fields = ["opcode"]

[routes.ticks]
connection = "a"
key = 1
handlers = ["first", "second"]

[handlers.first]
plugin = "log"

[handlers.second]
plugin = "log"
level = "info"

[handlers.dlq]
plugin = "log"

[sources.jobs]
type = "redis-stream"
url = "redis://127.0.0.1:9"
stream = "jobs"
group = "g"
"""


def changes(old: str, new: str, *, upstreams: bool = True) -> dict[str, Changes]:
    plan = reload_plan(loads(old, path="a.toml"), loads(new, path="b.toml"), upstreams=upstreams)
    return {"handlers": plan.handlers, "connections": plan.connections, "sources": plan.sources}


def names(*items: str) -> frozenset[str]:
    return frozenset(items)


def test_the_same_config_keeps_everything() -> None:
    plan = changes(A, A)
    assert plan["handlers"] == Changes(kept=names("first", "second", "dlq"))
    assert plan["connections"] == Changes(kept=names("a", "b"))
    assert plan["sources"] == Changes(kept=names("jobs"))


def test_a_changed_handler_restarts_an_added_one_starts_a_removed_one_stops() -> None:
    new = A.replace('level = "info"', 'level = "warning"').replace(
        '[handlers.dlq]\nplugin = "log"', '[handlers.audit]\nplugin = "log"'
    )
    handlers = changes(A, new)["handlers"]
    assert handlers == Changes(
        kept=names("first"), restarted=names("second"), added=names("audit"), removed=names("dlq")
    )
    assert handlers.started == names("second", "audit")
    assert handlers.stopped == names("second", "dlq")
    # Handlers do not touch the upstreams: every connection and source is kept.
    assert changes(A, new)["connections"] == Changes(kept=names("a", "b"))


def test_a_route_change_alone_restarts_nothing() -> None:
    plan = changes(A, A.replace('handlers = ["first", "second"]', 'handlers = ["first"]'))
    assert plan["handlers"] == Changes(kept=names("first", "second", "dlq"))
    assert plan["connections"].started == plan["sources"].started == frozenset()


def test_a_changed_codec_table_restarts_the_connections_that_decode_with_it() -> None:
    plan = changes(A, A.replace('fields = ["opcode"]', 'fields = ["op"]'))
    assert plan["connections"] == Changes(kept=names("b"), restarted=names("a"))
    assert plan["handlers"].stopped == frozenset()


def test_connections_added_removed_and_changed() -> None:
    new = A.replace('url = "ws://127.0.0.1:9/b"', 'url = "ws://127.0.0.1:9/b2"').replace(
        "[connections.b]", '[connections.c]\nurl = "ws://127.0.0.1:9/c"\n\n[connections.b]'
    )
    assert changes(A, new)["connections"] == Changes(
        kept=names("a"), restarted=names("b"), added=names("c")
    )
    gone = A.replace('[connections.b]\nurl = "ws://127.0.0.1:9/b"\n', "")
    assert changes(A, gone)["connections"] == Changes(kept=names("a"), removed=names("b"))


def test_sources_changed_and_removed() -> None:
    changed = changes(A, A.replace('stream = "jobs"', 'stream = "jobs2"'))["sources"]
    assert changed == Changes(restarted=names("jobs"))
    i = A.index("[sources.jobs]")
    assert changes(A, A[:i])["sources"] == Changes(removed=names("jobs"))


def test_without_upstreams_only_the_handlers_change() -> None:
    new = A.replace('level = "info"', 'level = "warning"').replace("/b", "/b2")
    plan = changes(A, new, upstreams=False)
    assert plan["handlers"].restarted == names("second")
    assert plan["connections"] == plan["sources"] == Changes()

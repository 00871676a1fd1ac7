"""The dispatch registry, without an event loop."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from wsroute.router import Router


def make() -> Router[str]:
    return Router.compile(
        [
            ("market", "exchange", [1, 2], ["archive", "printer"]),
            ("news", None, ["news"], ["printer"]),
            ("everything", "exchange", None, ["tap"]),
            ("life", None, ["$connected", "$disconnected"], ["resync"]),
            ("again", "exchange", [1], ["archive"]),
        ],
        unmatched="dlq",
    )


def test_exact_key_fans_out_in_file_order_without_duplicates() -> None:
    router = make()
    assert router.lookup("exchange", 1) == ("archive", "printer", "tap")
    assert router.lookup("exchange", 2) == ("archive", "printer", "tap")


def test_route_without_connection_matches_every_connection() -> None:
    router = make()
    assert router.lookup("other", "news") == ("printer",)
    assert router.lookup("exchange", "news") == ("printer", "tap")


def test_route_without_key_matches_any_key_but_not_lifecycle_keys() -> None:
    router = make()
    assert router.lookup("exchange", 99) == ("tap",)
    assert router.lookup("exchange", None) == ("tap",)
    assert router.lookup_lifecycle("exchange", "$connected") == ("resync",)
    assert router.lookup_lifecycle("other", "$disconnected") == ("resync",)


def test_a_dollar_key_from_upstream_matches_no_route_not_even_lifecycle_routes() -> None:
    # The promise: keys beginning with "$" belong to the daemon. A frame that
    # decodes to "$connected" must not pass for the real lifecycle message.
    router = make()
    assert router.lookup("exchange", "$connected") == ()
    assert router.lookup("other", "$disconnected") == ()
    assert router.lookup("exchange", "$anything") == ()
    assert router.lookup_lifecycle("exchange", "$anything") == ()


def test_no_match_is_empty_and_unmatched_is_separate() -> None:
    router = make()
    assert router.lookup("other", 1) == ()
    assert router.unmatched == ("dlq",)


def test_bool_keys_do_not_match_int_routes() -> None:
    router = Router.compile([("r", None, [1], ["a"]), ("t", None, [True], ["b"])])
    assert router.lookup("c", True) == ("b",)
    assert router.lookup("c", 1) == ("a",)
    assert router.lookup("c", 1.0) == ("a",)


def test_unhashable_key_matches_nothing_instead_of_raising() -> None:
    router = Router.compile([("r", None, None, ["a"])])
    assert router.lookup("c", ["not", "hashable"]) == ()  # type: ignore[arg-type]


def test_matching_routes_names_them() -> None:
    assert make().matching_routes("exchange", 1) == ["market", "everything", "again"]


keys = st.one_of(st.integers(-5, 5), st.sampled_from(["a", "b", "$connected"]), st.none())


@given(
    rules=st.lists(
        st.tuples(
            st.sampled_from(["x", "y", None]),
            st.one_of(st.none(), st.lists(keys, min_size=1, max_size=3)),
            st.lists(st.sampled_from(["h1", "h2", "h3"]), min_size=1, max_size=3),
        ),
        max_size=6,
    ),
    connection=st.sampled_from(["x", "y", "z"]),
    key=keys,
)
def test_memoised_lookup_equals_a_plain_scan(
    rules: list[tuple[str | None, list[object] | None, list[str]]],
    connection: str,
    key: object,
) -> None:
    router = Router.compile(
        [(f"r{i}", c, k, t) for i, (c, k, t) in enumerate(rules)]  # type: ignore[misc]
    )
    expected: list[str] = []
    reserved = isinstance(key, str) and key.startswith("$")
    for conn, route_keys, targets in rules:
        if conn is not None and conn != connection:
            continue
        if route_keys is None and reserved:
            continue
        if route_keys is not None and key not in route_keys:
            continue
        expected.extend(t for t in targets if t not in expected)
    if reserved:  # the daemon's own messages only: a frame's "$" key matches nothing
        assert list(router.lookup_lifecycle(connection, key)) == expected  # type: ignore[arg-type]
        expected = []
    first = router.lookup(connection, key)  # type: ignore[arg-type]
    assert list(first) == expected
    assert router.lookup(connection, key) == first  # type: ignore[arg-type]

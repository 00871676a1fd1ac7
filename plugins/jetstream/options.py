"""The ``jetstream`` source's options (``[sources.NAME] type = "jetstream"``).

Checked when the config is loaded, each error with its key path; the server
options mean what they mean for the ``nats`` sink (:mod:`.connection`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from wsroute import Duration
from wsroute.plugins.sinks import TlsSection

from .connection import check_servers

__all__ = ["FetchOptions", "JetStreamOptions"]


@dataclass
class FetchOptions:
    """``fetch = { batch, wait }``: how messages are pulled."""

    batch: int = field(default=100, metadata={"doc": "Messages asked for per pull request."})
    wait: Duration = field(
        default=Duration(1.0),
        metadata={"doc": "How long one pull request waits for messages to arrive."},
    )

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise ValueError(f"fetch.batch must be at least 1, got {self.batch}")
        if self.wait < 0.01:
            raise ValueError(f"fetch.wait must be at least 10ms, got {self.wait:g}s")


@dataclass
class JetStreamOptions:
    """The options of one ``jetstream`` source."""

    stream: str = field(metadata={"doc": 'The stream, e.g. "TICKS".'})
    url: str | list[str] = field(
        default="nats://127.0.0.1:4222",
        metadata={
            "doc": "Server URL, or a list of them: any server of the cluster will do "
            "(nats://, tls://; credentials never logged)."
        },
    )
    durable: str = field(
        default="wsroute",
        metadata={"doc": "The durable pull consumer, shared by every worker of the pool."},
    )
    subjects: list[str] = field(
        default_factory=list,
        metadata={
            "doc": "Create the stream with these subjects if it does not exist (empty: "
            "never create it, wait for it, logging errors)."
        },
    )
    replicas: int = field(
        default=1, metadata={"doc": "A created stream's replicas (1 to 5; 3 for a cluster)."}
    )
    retention: Literal["limits", "workqueue", "interest"] = field(
        default="limits",
        metadata={
            "doc": "A created stream's retention: limits (kept until its limits), workqueue "
            "(removed once acknowledged), interest (once every consumer acknowledged)."
        },
    )
    duplicate_window: Duration = field(
        default=Duration(120.0),
        metadata={
            "doc": "A created stream's duplicate window: how long a Nats-Msg-Id is "
            "remembered (the nats sink's dedupe)."
        },
    )
    filter_subject: str = field(
        default="", metadata={"doc": "Consume only this subject of the stream (empty: all)."}
    )
    deliver: Literal["all", "new"] = field(
        default="all",
        metadata={
            "doc": "Where a new consumer starts: the oldest message in the stream, or "
            "messages stored from now on."
        },
    )
    payload: Literal["frame", "record"] = field(
        default="frame",
        metadata={
            "doc": "What the nats sink published: the raw frame with headers (frame), or "
            "the jsonl record (record)."
        },
    )
    ack_wait: Duration = field(
        default=Duration(30.0),
        metadata={
            "doc": "Redeliver a message not acknowledged within this long; renewed with "
            "in-progress acks every ack_wait / 3 while this worker holds it."
        },
    )
    max_deliveries: int = field(
        default=0,
        metadata={
            "doc": "Dead-letter a message delivered more often than this without being "
            "acknowledged (it crashes or hangs the process); 0: never. Needs a "
            "dead-letter handler."
        },
    )
    max_in_flight: int = field(
        default=1000,
        metadata={"doc": "Messages pulled and not yet settled, at most (backpressure)."},
    )
    fetch: FetchOptions = field(default_factory=FetchOptions, metadata={"doc": "{ batch, wait }"})
    connect_timeout: Duration = field(
        default=Duration(5.0), metadata={"doc": "Budget of one connect attempt."}
    )
    reconnect_wait: Duration = field(
        default=Duration(1.0), metadata={"doc": "Pause between reconnect attempts."}
    )
    user: str | None = field(default=None, metadata={"doc": "User name."})
    password: str | None = field(
        default=None, metadata={"doc": "Password (never logged).", "secret": True}
    )
    token: str | None = field(
        default=None, metadata={"doc": "Auth token (never logged).", "secret": True}
    )
    creds_file: str | None = field(
        default=None, metadata={"doc": "A .creds file (JWT and NKey seed) to authenticate."}
    )
    tls: TlsSection = field(
        default_factory=TlsSection,
        metadata={"doc": "For tls:// servers: ca_file, cert_file, key_file, verify."},
    )

    def __post_init__(self) -> None:
        check_servers(self.url)
        for name in ("stream", "durable"):
            value = getattr(self, name)
            if not value or any(c.isspace() or c in ".*>" for c in value):
                raise ValueError(f"{name} must be a name without spaces, '.', '*' or '>'")
        for subject in self.subjects:
            if not subject or any(c.isspace() for c in subject):
                raise ValueError(f"subjects: {subject!r} is not a NATS subject")
        if not 1 <= self.replicas <= 5:
            raise ValueError(f"replicas must be from 1 to 5, got {self.replicas}")
        if self.ack_wait < 0.3:
            # Renewed every ack_wait / 3: shorter would be a stream of +WPI.
            raise ValueError(f"ack_wait must be at least 300ms, got {self.ack_wait:g}s")
        if self.duplicate_window < 0.001:
            raise ValueError("duplicate_window must be at least 1ms")
        if self.max_deliveries < 0:
            raise ValueError(f"max_deliveries must not be negative, got {self.max_deliveries}")
        if self.max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {self.max_in_flight}")
        if self.connect_timeout <= 0 or self.reconnect_wait < 0:
            raise ValueError("connect_timeout must be above 0, reconnect_wait not negative")
